"""The install directory: installed versions and which one is active, safe across power cuts.

Layout under `ota.install_dir`:

    state.json            which version of each model is active, on probation, before
    <name>/<version>/     complete installed versions only (manifest, signature, files)
    .downloads/           archives arriving (<sha256>.part) and complete (<sha256>.bundle)
    .staging/<id>/        a version being unpacked; renamed to <name>/<version> when complete
    .trash/<id>/          a version being removed
    .lock                 held by the one process that may change any of this

Every change is a write to a temporary name, fsync, rename, fsync of the directory, so a
power cut or SIGKILL leaves either the old or the new state, never a mix: a version
directory appears only complete (rename of a fully written and fsynced staging
directory), and `open()` deletes whatever `.staging` and `.trash` held. A version still on
probation when the process died is not trusted: `open()` reverts to the version that was
active before it and reports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from errno import EEXIST, ENOTDIR
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import AgentConfig
from edge_agent.durable import fsync_dir, write_atomically
from edge_agent.inference.bundle import MANIFEST, Bundle, find_bundle, is_safe_name, load_bundle
from edge_agent.ota.errors import OtaStateError, UpdateRejectedError

STATE_FILE = "state.json"
RESTARTED = "the agent restarted while this version was on probation"


def install_root(config: AgentConfig) -> Path:
    """`ota.install_dir`, or `ota/` beside the database."""
    if config.ota.install_dir is not None:
        return config.ota.install_dir
    return config.storage.path.parent / "ota"


class ModelState(BaseModel):
    """What is known about one model's versions."""

    model_config = ConfigDict(extra="forbid")

    active: str | None = Field(
        default=None, description="The confirmed version; null: the highest on the search path."
    )
    trial: str | None = Field(default=None, description="The version on probation, if any.")
    history: list[str] = Field(
        default_factory=list, description="Versions confirmed before `active`, oldest first."
    )
    failed: dict[str, str] = Field(
        default_factory=dict, description="Versions that failed probation or were rolled back."
    )


class OtaState(BaseModel):
    """state.json."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = Field(default=1, description="State file format.")
    models: dict[str, ModelState] = Field(default_factory=dict, description="By model name.")


@dataclass(frozen=True)
class Reverted:
    """A probation interrupted by a restart, reverted by `open()`."""

    name: str
    version: str
    back_to: str | None


class ModelRepository:
    """Installed versions and their state; one instance per process, holding `.lock`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads = root / ".downloads"
        self._staging = root / ".staging"
        self._trash = root / ".trash"
        self._state = OtaState()
        self._lock_fd: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> list[Reverted]:
        """Take the lock, clear leftovers of an interrupted run, load the state.

        Returns:
            Probations that a restart interrupted (now reverted).

        Raises:
            OtaStateError: the install directory cannot be created, another process holds
                it, or state.json is unreadable.
        """
        for d in (self.root, self.downloads, self._staging, self._trash):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a file in the way, or not writable
                why = "a file is in the way" if err.errno in (EEXIST, ENOTDIR) else err.strerror
                raise OtaStateError(
                    f"install directory {self.root}: cannot create {d} ({why}); "
                    "set ota.install_dir to a directory edge-agent may write "
                    "(default: ota/ beside storage.path)"
                ) from err
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise OtaStateError(
                f"{self.root} is in use by another edge-agent process (the running daemon?)"
            ) from err
        self._lock_fd = fd
        for leftovers in (self._staging, self._trash):
            for child in leftovers.iterdir():
                shutil.rmtree(child, ignore_errors=True)
        for tmp in self.root.glob(f".{STATE_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)
        path = self.root / STATE_FILE
        if path.exists():
            try:
                self._state = OtaState.model_validate_json(path.read_bytes())
            except (ValidationError, ValueError, OSError) as err:
                self.close()
                raise OtaStateError(f"{path} is unreadable ({err}); fix or remove it") from err
        reverted: list[Reverted] = []
        for name, model in self._state.models.items():
            if model.trial is not None:
                reverted.append(Reverted(name, model.trial, model.active))
                model.failed[model.trial] = RESTARTED
                model.trial = None
        if reverted:
            self._save()
        return reverted

    def close(self) -> None:
        """Release the lock; safe to call twice."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    # -- state -------------------------------------------------------------------------------

    def _save(self) -> None:
        body = self._state.model_dump_json(indent=2).encode() + b"\n"
        write_atomically(self.root / STATE_FILE, body)

    def state(self, name: str) -> ModelState:
        """A copy of one model's state (empty when it was never updated)."""
        found = self._state.models.get(name)
        return found.model_copy(deep=True) if found is not None else ModelState()

    def serving(self, name: str) -> str | None:
        """The version that should serve `name`: on probation, else active; None: default."""
        found = self._state.models.get(name)
        if found is None:
            return None
        return found.trial or found.active

    def _model(self, name: str) -> ModelState:
        return self._state.models.setdefault(name, ModelState())

    def begin_trial(self, name: str, version: str, current: str | None) -> None:
        """Persist that `version` goes on probation, `current` being what served before."""
        model = self._model(name)
        if model.active is None:
            model.active = current
        model.trial = version
        model.failed.pop(version, None)
        self._save()

    def confirm(self, name: str) -> str:
        """Probation passed: the trial version becomes active. Returns it."""
        model = self._model(name)
        if model.trial is None:
            raise OtaStateError(f"{name} has no version on probation")
        self._promote(model, model.trial)
        model.trial = None
        self._save()
        return self._state.models[name].active or ""

    def end_trial(self, name: str, reason: str) -> str | None:
        """Probation failed: back to the active version. Returns the failed version."""
        model = self._model(name)
        failed, model.trial = model.trial, None
        if failed is not None:
            model.failed[failed] = reason
        self._save()
        return failed

    @staticmethod
    def _promote(model: ModelState, version: str) -> None:
        if model.active is not None and model.active != version:
            model.history = [v for v in model.history if v != model.active] + [model.active]
        model.history = [v for v in model.history if v != version]
        model.active = version

    def set_active(self, name: str, version: str) -> None:
        """Make `version` active at once (an operator's choice; no probation)."""
        model = self._model(name)
        self._promote(model, version)
        model.trial = None
        model.failed.pop(version, None)
        self._save()

    def rollback_target(self, name: str) -> str | None:
        """The version a rollback of `name` returns to."""
        model = self._state.models.get(name)
        if model is None:
            return None
        if model.trial is not None:
            return model.active
        return model.history[-1] if model.history else None

    def record_rollback(self, name: str, target: str, reason: str) -> None:
        """A rollback to `target` happened: the version left is marked failed."""
        model = self._model(name)
        left = model.trial or model.active
        model.trial = None
        if left is not None and left != target:
            model.failed[left] = reason
        model.history = [v for v in model.history if v not in (target, left)]
        model.active = target
        self._save()

    # -- versions on disk --------------------------------------------------------------------

    def version_dir(self, name: str, version: str) -> Path:
        """Where an installed version lives."""
        if not is_safe_name(name) or not is_safe_name(version):
            raise OtaStateError(f"{name}@{version} is not a valid model reference")
        return self.root / name / version

    def installed(self, name: str) -> list[str]:
        """Versions of `name` installed here."""
        base = self.root / name
        if not is_safe_name(name) or not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file())

    def names(self) -> list[str]:
        """Models with installed versions or a state."""
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(on_disk | set(self._state.models))

    def find(self, name: str, version: str, search: list[Path]) -> Bundle:
        """A version of `name`: installed here, else along the search path; verified.

        Raises:
            BundleError: not found, or it fails verification.
        """
        path = self.version_dir(name, version)
        if (path / MANIFEST).is_file():
            return load_bundle(path)
        return find_bundle(f"{name}@{version}", search)

    def new_staging(self) -> Path:
        """An empty private directory to unpack into."""
        path = self._staging / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        return path

    def discard_staging(self, path: Path) -> None:
        """Delete a staging directory that will not be installed."""
        if path.parent == self._staging:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staging: Path, name: str, version: str) -> Path:
        """Move a complete, verified staging directory into place as `<name>/<version>`.

        A version already installed with the same manifest is reused; one with a different
        manifest is refused (versions are immutable: publish a new version number).

        Raises:
            UpdateRejectedError: `version_exists`.
        """
        dest = self.version_dir(name, version)
        if (dest / MANIFEST).is_file():
            same = (dest / MANIFEST).read_bytes() == (staging / MANIFEST).read_bytes()
            self.discard_staging(staging)
            if not same:
                raise UpdateRejectedError(
                    "extract",
                    "version_exists",
                    f"{name}@{version} is already installed with different content; "
                    "versions are immutable: publish under a new version number",
                )
            return dest
        dest.parent.mkdir(exist_ok=True)
        fsync_dir(self.root)
        if dest.exists():  # an empty or broken directory of a version: never a valid one
            self._to_trash(dest)
        os.rename(staging, dest)
        fsync_dir(dest.parent)
        return dest

    def _to_trash(self, path: Path) -> None:
        target = self._trash / uuid.uuid4().hex
        os.rename(path, target)
        fsync_dir(path.parent)
        shutil.rmtree(target, ignore_errors=True)

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version that is neither active nor on probation.

        Raises:
            OtaStateError: it is in use, or not installed here.
        """
        model = self._state.models.get(name, ModelState())
        if version in (model.active, model.trial):
            raise OtaStateError(
                f"{name}@{version} is {'on probation' if version == model.trial else 'active'}; "
                "activate or roll back to another version first"
            )
        path = self.version_dir(name, version)
        if not path.is_dir():
            raise OtaStateError(f"{name}@{version} is not installed in {self.root}")
        self._to_trash(path)
        if name in self._state.models:
            model.history = [v for v in model.history if v != version]
            model.failed.pop(version, None)
            self._save()

    def prune(self, name: str, keep: int) -> list[str]:
        """Remove versions beyond the newest `keep` confirmed ones (active included).

        Versions installed but never activated stay until removed by hand; versions that
        failed probation go.

        Returns:
            The versions removed.
        """
        model = self._state.models.get(name)
        if model is None:
            return []
        kept = {v for v in (model.active, model.trial) if v is not None}
        room = max(0, keep - len(kept))
        kept.update(model.history[-room:] if room else [])
        removable = set(model.history) | set(model.failed)
        removed = []
        for version in self.installed(name):
            if version in removable and version not in kept:
                with contextlib.suppress(OSError, OtaStateError):
                    self.remove(name, version)
                    removed.append(version)
        return removed

    def listing(self, search: list[Path]) -> dict[str, Any]:
        """Every model's versions and state, for `models list`."""
        out: dict[str, Any] = {}
        for name in self.names():
            model = self.state(name)
            others: list[str] = []
            for base in search:
                d = base / name
                if d.is_dir():
                    others += [p.name for p in d.iterdir() if (p / MANIFEST).is_file()]
            out[name] = {
                **model.model_dump(),
                "installed": self.installed(name),
                "elsewhere": sorted(set(others)),
            }
        return out


def read_state(root: Path) -> OtaState:
    """state.json without taking the lock (read-only views such as `models list`).

    Raises:
        OtaStateError: unreadable.
    """
    path = root / STATE_FILE
    if not path.exists():
        return OtaState()
    try:
        return OtaState.model_validate(json.loads(path.read_bytes()))
    except (ValidationError, ValueError, OSError) as err:
        raise OtaStateError(f"{path} is unreadable ({err})") from err
