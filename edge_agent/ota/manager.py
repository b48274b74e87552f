"""The daemon's side of OTA: deploy, activate, probation, rollback, and their commands.

One `OtaManager` per daemon, built from narrow ports: the model slots it updates, the
pipeline's swapper, a config getter and the event port. Everything slow (downloads,
hashing, unpacking, loading and testing a model) runs on worker threads; the only step on
the pipeline is the swap itself (`Pipeline.swap`), between two rounds. Each step reports
an event:

    model.download_progress  bytes received of the expected size (at most once a second)
    model.rejected           an update refused: stage, check, reason; the old model serves on
    model.staged             the new version passed its self-test (latency, golden vectors)
    model.activated          it serves now (the swap's pause), probation begins
    model.confirmed          probation passed; it is the active version
    model.rolled_back        probation failed (or an operator asked): the previous version
                             serves again; signal, reason, and how long the rollback took
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, CommandError, EdgeAgentError
from edge_agent.events import Emit, Severity
from edge_agent.inference.bundle import (
    Bundle,
    Manifest,
    find_bundle,
    load_bundle,
    shipped_models_dir,
)
from edge_agent.inference.runtime import Runtime
from edge_agent.ota.errors import OtaStateError, UpdateRejectedError
from edge_agent.ota.probation import ProbationLimits, ProbationWatch, Verdict
from edge_agent.ota.repository import RESTARTED, ModelRepository, Reverted, install_root
from edge_agent.pipeline.messages import ModelSwap
from edge_agent.pipeline.stream import ModelSlot
from edge_agent.registry import CommandRegistry

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
SWAP_TIMEOUT_S = 10.0
_CONCLUDING = ("confirm-", "rollback-")
"""Name prefixes of the tasks applying a probation verdict (awaited, not cancelled, on close)."""
GalleryCoverage = Callable[[str, str], int]
"""(model name, version) → embeddings the face gallery holds for that version."""
Swapper = Callable[[str, Bundle, Runtime], Awaitable[ModelSwap]]
"""Makes a loaded model serve every bare reference to a name, between two pipeline rounds."""


@dataclass
class Trial:
    """A version on probation and the one it replaced (kept loaded until the verdict)."""

    name: str
    bundle: Bundle
    runtime: Runtime
    previous: Bundle
    previous_runtime: Runtime
    watch: ProbationWatch
    activated_mono: float
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Source:
    """Where a deployment's archive comes from."""

    kind: str
    """`url`, `inline` (chunks received over MQTT) or `path` (a local file)."""
    location: str
    sha256: str | None = None
    size: int | None = None


class OtaManager:
    """Installs, activates, watches and rolls back model versions for one daemon.

    Args:
        config: The running config (`ota`, `models.dirs`; it may change on reload).
        emit: Where events go.
        slots: The loaded model slots by reference (the pipeline's, read only here).
        swap: The pipeline's swapper.
    """

    def __init__(
        self,
        *,
        config: Callable[[], AgentConfig],
        emit: Emit,
        slots: Mapping[str, ModelSlot],
        swap: Swapper,
    ) -> None:
        self.config = config
        self.emit = emit
        self.slots = slots
        self.swap = swap
        self.face_templates: Callable[[], Mapping[str, int]] | None = None
        """Set when faces run: templates the gallery holds by name@version."""
        self.repo: ModelRepository | None = None
        self.unavailable: str | None = None
        self.watching: dict[Path, ProbationWatch] = {}
        """Bundles on probation by path: the daemon's inference path asks this on every batch."""
        self.trials: dict[str, Trial] = {}
        self.deployment: dict[str, Any] | None = None
        self.gallery_coverage: GalleryCoverage | None = None
        """Set by the face subsystem; embedding models are refused without it (see docs/ota.md)."""
        self._busy = asyncio.Lock()
        self._cancel: threading.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reverted: list[Reverted] = []
        self._closing = False
        self._failures: asyncio.Queue[BaseException] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open the install directory (blocking; before models load). A failure disables OTA."""
        self._cancel = threading.Event()
        repo = ModelRepository(install_root(self.config()))
        try:
            self._reverted = repo.open()
        except (OtaStateError, OSError) as err:
            self.unavailable = f"over-the-air updates are disabled: {err}"
            log.error("%s", self.unavailable)
            return
        self.repo = repo

    def register(self, registry: CommandRegistry) -> None:
        """Add the OTA commands: `model.*` over MQTT, `models.*` on the control socket."""
        registry.register("model.deploy", self._cmd_deploy, local=False)
        registry.register("model.chunk", self._cmd_chunk, local=False)
        registry.register("model.list", self._cmd_list, local="models.list")
        registry.register("model.activate", self._cmd_activate, local=False)
        registry.register("model.rollback", self._cmd_rollback, local="models.rollback")
        registry.register("model.remove", self._cmd_remove, local="models.remove")
        registry.register("models.install", self._ctl_install, remote=False)
        registry.register("models.activate", self._ctl_activate, remote=False)

    def start(self) -> None:
        """Report probations a restart interrupted (on the loop, once commands are wired)."""
        for r in self._reverted:
            self._event(
                "model.rolled_back",
                "error",
                model=r.name,
                from_version=r.version,
                to_version=r.back_to,
                signal="restart",
                reason=RESTARTED,
            )
        self._reverted = []

    async def run(self) -> None:
        """OTA as a supervised component: raises the first unexpected failure of its tasks.

        A deployment, activation or verdict that fails on a bug (not a refused update, which
        is an event) ends this call with its exception, so the supervisor reports it; the
        manager's state (repository, probations) carries on.
        """
        if self._failures is None:  # kept across restarts: no failure goes unreported
            self._failures = asyncio.Queue()
        raise await self._failures.get()

    async def close(self) -> None:
        """Stop deployments and probations (a version on probation is reverted at next start)."""
        self._closing = True
        if self._cancel is not None:
            self._cancel.set()
        # A verdict being applied (a rollback half done) finishes; deployments are cancelled.
        concluding = [t for t in self._tasks if t.get_name().startswith(_CONCLUDING)]
        if concluding:
            await asyncio.wait(concluding, timeout=SWAP_TIMEOUT_S)
        tasks = [
            *(t for t in self._tasks if not t.done()),
            *(t.task for t in self.trials.values() if t.task is not None),
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for trial in self.trials.values():
            trial.previous_runtime.close()
        self.trials.clear()
        self.watching.clear()
        if self.repo is not None:
            self.repo.close()

    # -- model resolution (startup and reload) ------------------------------------------------

    def find_bundle(self, ref: str, search: list[Path]) -> Bundle:
        """Resolve a sensor's model reference, honouring the persisted active version.

        `name@version` is pinned by config and resolved as usual; a bare `name` whose
        versions are managed over the air resolves to the active one.

        Raises:
            BundleError: not found or failed verification.
        """
        name, _, version = ref.partition("@")
        serving = self.repo.serving(name) if self.repo is not None and not version else None
        if serving is not None and self.repo is not None:
            try:
                return self.repo.find(name, serving, search)
            except (BundleError, OtaStateError) as err:
                log.error(
                    "model %s@%s (active over the air) cannot load: %s; using the search path",
                    name,
                    serving,
                    err,
                )
        return find_bundle(ref, search)

    def resolve_refs(
        self, resolved: dict[str, Bundle | BundleError], search: list[Path]
    ) -> dict[str, Bundle | BundleError]:
        """What a reload resolves model references to, with over-the-air versions applied."""
        out = dict(resolved)
        for ref in resolved:
            if "@" in ref or self.repo is None or self.repo.serving(ref) is None:
                continue
            try:
                out[ref] = self.find_bundle(ref, search)
            except BundleError as err:
                out[ref] = err
        return out

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _ota(self) -> Any:
        return self.config().ota

    def _search(self) -> list[Path]:
        return [*self.config().models.dirs, shipped_models_dir()]

    def _event(self, kind: str, severity: Severity = "info", **body: Any) -> None:
        self.emit(kind, severity, **body)

    def _slots(self, name: str) -> list[Any]:
        """Slots that follow model `name` (bare references; pinned ones keep their version)."""
        return [
            slot
            for ref, slot in self.slots.items()
            if "@" not in ref and slot.bundle.manifest.name == name
        ]

    def _running(self, name: str) -> tuple[Bundle, Runtime] | None:
        slots = self._slots(name)
        return (slots[0].bundle, slots[0].runtime) if slots else None

    def _repo(self) -> ModelRepository:
        if self.repo is None:
            raise OtaStateError(self.unavailable or "over-the-air updates are not available")
        return self.repo

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (err := task.exception()) is None:
            return
        if self._failures is not None:
            self._failures.put_nowait(err)  # run() raises it: the supervisor's to report
        else:
            log.error("%s failed: %s", task.get_name(), err, exc_info=err)

    def gallery_templates(self, ref: str) -> int:
        """Templates the face gallery holds for the model version `ref` (0 without a gallery).

        `gallery_coverage` wins when set; otherwise the running face pipeline's gallery is
        asked (`GalleryStore.template_counts`, keyed by name@version).
        """
        if self.gallery_coverage is not None:
            name, _, version = ref.partition("@")
            return self.gallery_coverage(name, version)
        if self.face_templates is None:
            return 0
        return int(self.face_templates().get(ref, 0))

    def _check_gallery(self, manifest: Manifest) -> None:
        """An embedding model needs the face gallery re-embedded with it before it serves."""
        if manifest.task != "embedding":
            return
        ref = f"{manifest.name}@{manifest.version}"
        count = self.gallery_templates(ref)
        if count <= 0:
            raise UpdateRejectedError(
                "activate",
                "gallery",
                f"the face gallery holds no embeddings for {ref}: re-embed the enrolled faces "
                "with this version first, then activate it (an identification model without "
                "its gallery matches nobody)",
            )

    def _reject_event(self, err: UpdateRejectedError, **body: Any) -> dict[str, Any]:
        self._event(
            "model.rejected", "error", stage=err.stage, check=err.check, reason=err.reason, **body
        )
        return {"ok": False, "stage": err.stage, "check": err.check, "reason": err.reason, **body}

    # -- deploy ------------------------------------------------------------------------------

    async def deploy(self, source: Source, *, activate: bool, deployment: str) -> dict[str, Any]:
        """Fetch, verify, unpack, stage, install and (optionally) activate one archive.

        Returns:
            The outcome (also reported by events); never raises for a refused update.
        """
        repo = self._repo()
        ota = self._ota
        staging: Path | None = None
        info_body: dict[str, Any] = {"deployment": deployment}
        async with self._busy:
            self.deployment = {"deployment": deployment, "step": "download"}
            try:
                archive = await self._obtain(source, deployment)
                from edge_agent.ota.archive import extract_archive, inspect_archive

                self.deployment["step"] = "verify"
                info = await asyncio.to_thread(
                    inspect_archive, archive, list(ota.trusted_keys), ota.max_bundle_bytes
                )
                name, version = info.manifest.name, info.manifest.version
                info_body.update(model=name, version=version)
                self.deployment.update(info_body, step="extract")
                staging = repo.new_staging()
                await asyncio.to_thread(extract_archive, archive, info, staging)
                bundle = await asyncio.to_thread(load_bundle, staging)
                self.deployment["step"] = "stage"
                runtime, report = await self._stage(bundle, require_golden=ota.require_golden)
                try:
                    dest = await asyncio.to_thread(repo.commit, staging, name, version)
                except BaseException:
                    runtime.close()
                    raise
                staging = None
                bundle = Bundle(dest, bundle.manifest)
                runtime.bundle = bundle
                self._event(
                    "model.staged",
                    **info_body,
                    signer=info.signer,
                    path=str(dest),
                    checks=report.as_dict(),
                )
                if source.kind in ("url", "inline") and source.sha256:
                    from edge_agent.ota.fetch import discard

                    discard(repo.downloads, source.sha256)
                if not activate:
                    runtime.close()
                    return {"ok": True, **info_body, "installed": str(dest), "activated": False}
                self.deployment["step"] = "activate"
                return await self._activate(bundle, runtime, info_body)
            except UpdateRejectedError as err:
                return self._reject_event(err, **info_body)
            except (BundleError, OtaStateError, OSError) as err:
                return self._reject_event(
                    UpdateRejectedError("extract", "install", str(err)), **info_body
                )
            finally:
                self.deployment = None
                if staging is not None:
                    repo.discard_staging(staging)

    async def _obtain(self, source: Source, deployment: str) -> Path:
        """The archive on local disk: downloaded, assembled from chunks, or given."""
        repo = self._repo()
        ota = self._ota
        if source.kind == "path":
            path = Path(source.location)
            if not await asyncio.to_thread(path.is_file):
                raise UpdateRejectedError("download", "not_found", f"{path} is not a file")
            return path
        assert source.sha256 is not None
        assert source.size is not None
        if source.kind == "inline":
            final = repo.downloads / f"{source.sha256}.bundle"
            if not final.is_file():
                part = repo.downloads / f"{source.sha256}.part"
                have = part.stat().st_size if part.exists() else 0
                raise UpdateRejectedError(
                    "download",
                    "truncated",
                    f"inline transfer incomplete: {have} of {source.size} bytes received; "
                    "send the missing chunks (model.chunk) before model.deploy",
                )
            return final
        from edge_agent.ota.fetch import FetchLimits, display_url, fetch

        assert self._cancel is not None
        loop = asyncio.get_running_loop()
        url = display_url(source.location)
        last = [0.0]

        def progress(received: int, total: int) -> None:
            now = time.monotonic()
            if received < total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            loop.call_soon_threadsafe(
                lambda: self._event(
                    "model.download_progress",
                    deployment=deployment,
                    url=url,
                    received=received,
                    total=total,
                    percent=round(100.0 * received / total, 1),
                )
            )

        limits = FetchLimits(
            max_bytes=ota.max_bundle_bytes,
            allow_http=ota.allow_http,
            ca_file=ota.ca_file,
            timeout_s=ota.download_timeout_s,
            attempts=ota.download_attempts,
        )
        return await asyncio.to_thread(
            fetch,
            source.location,
            repo.downloads,
            sha256=source.sha256,
            size=source.size,
            limits=limits,
            on_progress=progress,
            cancel=self._cancel,
        )

    async def _stage(self, bundle: Bundle, *, require_golden: bool) -> tuple[Runtime, Any]:
        from edge_agent.ota.staging import stage_bundle

        running = self._running(bundle.manifest.name)
        return await asyncio.to_thread(
            stage_bundle,
            bundle,
            running=running[0].manifest if running else None,
            budget_ms=self._ota.latency_budget_ms,
            require_golden=require_golden,
        )

    # -- activation, probation, rollback ----------------------------------------------------

    async def _activate(
        self, bundle: Bundle, runtime: Runtime, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Swap a staged version in and start its probation (owns `runtime` from here)."""
        repo = self._repo()
        name, version = bundle.manifest.name, bundle.manifest.version
        try:
            if name in self.trials:
                raise UpdateRejectedError(
                    "activate",
                    "busy",
                    f"{self.trials[name].bundle.ref} is on probation; wait for its verdict or "
                    "roll it back first",
                )
            self._check_gallery(bundle.manifest)
            running = self._running(name)
            if running is not None and running[0].path == bundle.path:
                raise UpdateRejectedError(
                    "activate", "already_active", f"{bundle.ref} serves already"
                )
        except BaseException:
            runtime.close()
            raise
        current = running[0].manifest.version if running else repo.serving(name)
        await asyncio.to_thread(repo.begin_trial, name, version, current)
        if running is None:
            runtime.close()
            await asyncio.to_thread(repo.confirm, name)
            self._event(
                "model.activated",
                **body,
                previous=current,
                pause_ms=0.0,
                note="no sensor follows this model; active from the next load",
            )
            self._event("model.confirmed", **body, probation="none (not in use)")
            return {"ok": True, **body, "activated": True, "confirmed": True}
        try:
            swap = await asyncio.wait_for(self.swap(name, bundle, runtime), SWAP_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError, EdgeAgentError):
            runtime.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(repo.end_trial, name, "activation interrupted")
            raise
        if not swap.replaced:  # a reload removed the model's sensors meanwhile
            runtime.close()
            await self._confirmed(name, version, body, None)
            return {"ok": True, **body, "activated": True, "confirmed": True}
        previous, previous_runtime = swap.replaced[0]
        limits = ProbationLimits.from_config(self._ota)
        self._event(
            "model.activated",
            **body,
            previous=previous.manifest.version,
            pause_ms=round(swap.pause_ns / 1e6, 4),
            probation={"windows": limits.windows, "seconds": limits.seconds},
        )
        if limits.immediate:
            previous_runtime.close()
            await self._confirmed(name, version, body, None)
            return {"ok": True, **body, "activated": True, "confirmed": True}
        loop = asyncio.get_running_loop()

        def on_verdict(verdict: Verdict) -> None:
            loop.call_soon_threadsafe(self._on_verdict, name, verdict)

        watch = ProbationWatch(bundle, previous, previous_runtime, limits, on_verdict)
        trial = Trial(name, bundle, runtime, previous, previous_runtime, watch, time.monotonic())
        self.trials[name] = trial
        self.watching[bundle.path] = watch
        trial.task = loop.create_task(self._probation_clock(watch), name=f"probation-{name}")
        return {
            "ok": True,
            **body,
            "activated": True,
            "pause_ms": round(swap.pause_ns / 1e6, 4),
            "probation": {"windows": limits.windows, "seconds": limits.seconds},
        }

    async def _probation_clock(self, watch: ProbationWatch) -> None:
        while watch.verdict is None:
            await asyncio.sleep(0.1)
            watch.check_time()

    def _on_verdict(self, name: str, verdict: Verdict) -> None:
        trial = self.trials.get(name)
        if trial is None or self._closing:
            return
        if verdict.passed:
            self._spawn(self._pass(trial, verdict), f"{_CONCLUDING[0]}{name}")
        else:
            self._spawn(self._roll_back_trial(trial, verdict), f"{_CONCLUDING[1]}{name}")

    async def _pass(self, trial: Trial, verdict: Verdict) -> None:
        self._end_trial(trial)
        trial.previous_runtime.close()
        body = {"model": trial.name, "version": trial.bundle.manifest.version}
        await self._confirmed(trial.name, trial.bundle.manifest.version, body, verdict)

    async def _confirmed(
        self, name: str, version: str, body: dict[str, Any], verdict: Verdict | None
    ) -> None:
        repo = self._repo()
        await asyncio.to_thread(repo.confirm, name)
        removed = await asyncio.to_thread(repo.prune, name, self._ota.keep_versions)
        self._event(
            "model.confirmed",
            **body,
            probation=verdict.stats if verdict is not None else "none",
            removed=removed,
        )

    def _end_trial(self, trial: Trial) -> None:
        self.trials.pop(trial.name, None)
        self.watching.pop(trial.bundle.path, None)
        if trial.task is not None and trial.task is not asyncio.current_task():
            trial.task.cancel()

    async def _roll_back_trial(self, trial: Trial, verdict: Verdict) -> dict[str, Any]:
        """Swap the previous version back in after a failed probation."""
        repo = self._repo()
        swap = await asyncio.wait_for(
            self.swap(trial.name, trial.previous, trial.previous_runtime),
            SWAP_TIMEOUT_S,
        )
        self._end_trial(trial)
        for _, old_runtime in swap.replaced:
            old_runtime.close()
        await asyncio.to_thread(repo.end_trial, trial.name, verdict.reason)
        rollback_ms = (time.monotonic() - verdict.detected_mono) * 1000.0
        self._event(
            "model.rolled_back",
            "error",
            model=trial.name,
            from_version=trial.bundle.manifest.version,
            to_version=trial.previous.manifest.version,
            signal=verdict.signal,
            reason=verdict.reason,
            rollback_ms=round(rollback_ms, 2),
            pause_ms=round(swap.pause_ns / 1e6, 4),
            probation=verdict.stats,
        )
        return {
            "ok": True,
            "model": trial.name,
            "from_version": trial.bundle.manifest.version,
            "to_version": trial.previous.manifest.version,
            "rollback_ms": round(rollback_ms, 2),
        }

    async def activate(self, name: str, version: str) -> dict[str, Any]:
        """Activate an installed version: self-test, swap, probation. Refusals are returned."""
        repo = self._repo()
        body: dict[str, Any] = {"model": name, "version": version}
        async with self._busy:
            try:
                try:
                    bundle = await asyncio.to_thread(repo.find, name, version, self._search())
                except BundleError as err:
                    raise UpdateRejectedError("activate", "not_installed", str(err)) from err
                ours = bundle.path.parent.parent == repo.root
                runtime, report = await self._stage(
                    bundle, require_golden=self._ota.require_golden and ours
                )
                self._event("model.staged", **body, path=str(bundle.path), checks=report.as_dict())
                return await self._activate(bundle, runtime, body)
            except UpdateRejectedError as err:
                return self._reject_event(err, **body)

    async def rollback(
        self, name: str, reason: str = "rolled back by an operator"
    ) -> dict[str, Any]:
        """Return `name` to the version before: end its probation, or reactivate the last one.

        Raises:
            OtaStateError: nothing to roll back to.
        """
        repo = self._repo()
        trial = self.trials.get(name)
        if trial is not None:
            verdict = trial.watch.abort(reason)
            if verdict is None:
                raise OtaStateError(
                    f"the probation of {trial.bundle.ref} is ending right now; see model.list"
                )
            return await self._roll_back_trial(trial, verdict)
        async with self._busy:
            target = repo.rollback_target(name)
            if target is None:
                raise OtaStateError(f"{name} has no earlier version to roll back to")
            started = time.monotonic()
            try:
                bundle = await asyncio.to_thread(repo.find, name, target, self._search())
            except BundleError as err:
                raise OtaStateError(f"{name}@{target} cannot be loaded: {err}") from err
            try:
                runtime, _ = await self._stage(bundle, require_golden=False)
            except UpdateRejectedError as err:
                raise OtaStateError(f"{name}@{target} fails its self-test: {err.reason}") from err
            running = self._running(name)
            from_version = running[0].manifest.version if running else repo.serving(name)
            pause_ms = 0.0
            if running is not None:
                swap = await asyncio.wait_for(self.swap(name, bundle, runtime), SWAP_TIMEOUT_S)
                pause_ms = swap.pause_ns / 1e6
                for _, old in swap.replaced:
                    old.close()
            else:
                runtime.close()
            await asyncio.to_thread(repo.record_rollback, name, target, reason)
            rollback_ms = (time.monotonic() - started) * 1000.0
            self._event(
                "model.rolled_back",
                "warning",
                model=name,
                from_version=from_version,
                to_version=target,
                signal="operator",
                reason=reason,
                rollback_ms=round(rollback_ms, 2),
                pause_ms=round(pause_ms, 4),
            )
            return {
                "ok": True,
                "model": name,
                "from_version": from_version,
                "to_version": target,
                "rollback_ms": round(rollback_ms, 2),
            }

    def listing(self) -> dict[str, Any]:
        """Installed versions, state, what serves now and probation progress."""
        repo = self._repo()
        models = repo.listing(self._search())
        for slot in self.slots.values():
            name = slot.bundle.manifest.name
            entry = models.setdefault(name, {"installed": [], "active": None})
            entry.setdefault("serving", [])
            if slot.bundle.manifest.version not in entry["serving"]:
                entry["serving"].append(slot.bundle.manifest.version)
        for name, trial in self.trials.items():
            models.setdefault(name, {})["probation"] = {
                "version": trial.bundle.manifest.version,
                "previous": trial.previous.manifest.version,
                "limits": {
                    "windows": trial.watch.limits.windows,
                    "seconds": trial.watch.limits.seconds,
                },
                **trial.watch.stats(),
            }
        return {"install_dir": str(repo.root), "models": models, "deployment": self.deployment}

    # -- commands (MQTT) ---------------------------------------------------------------------

    def _command_error(self, err: Exception) -> Exception:
        if isinstance(err, UpdateRejectedError):
            return CommandError(err.check, err.reason, {"stage": err.stage})
        return CommandError("unavailable" if self.repo is None else "refused", str(err))

    async def _cmd_deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        from edge_agent.ota.fetch import FetchLimits, check_request

        try:
            self._repo()
            sha256 = str(args.get("sha256", "")).lower()
            size = args.get("size")
            if not isinstance(size, int) or isinstance(size, bool):
                raise UpdateRejectedError("download", "bad_request", "size (bytes) is required")
            inline = bool(args.get("inline", False))
            url = args.get("url")
            if inline == (url is not None):
                raise UpdateRejectedError(
                    "download", "bad_request", "give either url or inline: true (after model.chunk)"
                )
            ota = self._ota
            if inline:
                check_request("file:///inline", sha256, size, FetchLimits(ota.inline_max_bytes))
                source = Source("inline", "inline", sha256, size)
            else:
                limits = FetchLimits(ota.max_bundle_bytes, allow_http=ota.allow_http)
                check_request(str(url), sha256, size, limits)
                source = Source("url", str(url), sha256, size)
            if self._busy.locked():
                raise UpdateRejectedError(
                    "download",
                    "busy",
                    "another deployment is in progress",
                )
        except (UpdateRejectedError, OtaStateError) as err:
            if isinstance(err, UpdateRejectedError) and err.check != "busy":
                self._reject_event(err, deployment=args.get("deployment"))
            raise self._command_error(err) from err
        deployment = str(args.get("deployment") or sha256[:12])
        activate = bool(args.get("activate", True))
        self._spawn(self.deploy(source, activate=activate, deployment=deployment), "ota-deploy")
        return {"accepted": True, "deployment": deployment}

    async def _cmd_chunk(self, args: dict[str, Any]) -> dict[str, Any]:
        from edge_agent.ota.fetch import append_chunk

        try:
            repo = self._repo()
            data = base64.b64decode(str(args.get("data", "")), validate=True)
            sha256 = str(args.get("sha256", "")).lower()
            size, offset = args.get("size"), args.get("offset")
            if not isinstance(size, int) or not isinstance(offset, int):
                raise UpdateRejectedError("download", "bad_request", "size and offset are required")
            received = await asyncio.to_thread(
                append_chunk,
                repo.downloads,
                sha256=sha256,
                size=size,
                offset=offset,
                data=data,
                max_bytes=self._ota.inline_max_bytes,
            )
        except binascii.Error as err:
            raise self._command_error(
                UpdateRejectedError("download", "bad_request", f"data is not base64: {err}")
            ) from err
        except (UpdateRejectedError, OtaStateError) as err:
            raise self._command_error(err) from err
        return {"received": received, "complete": received == size}

    async def _cmd_list(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.listing()
        except OtaStateError as err:
            raise self._command_error(err) from err

    def _ref(self, args: dict[str, Any], *, version: bool) -> tuple[str, str]:
        model = str(args.get("model", ""))
        name, _, ver = model.partition("@")
        ver = str(args.get("version", ver))
        if not name or (version and not ver):
            raise OtaStateError(
                'give model (and version): {"model": "name", "version": "1.2.0"}'
                if version
                else 'give model: {"model": "name"}'
            )
        return name, ver

    async def _cmd_activate(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            self._repo()
            name, version = self._ref(args, version=True)
            if self._busy.locked():
                raise OtaStateError("another deployment is in progress")
        except OtaStateError as err:
            raise self._command_error(err) from err
        self._spawn(self.activate(name, version), "ota-activate")
        return {"accepted": True, "model": name, "version": version}

    async def _cmd_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            name, _ = self._ref(args, version=False)
            reason = str(args.get("reason") or "rolled back by an operator")
            return await self.rollback(name, reason)
        except OtaStateError as err:
            raise self._command_error(err) from err

    async def _cmd_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            repo = self._repo()
            name, version = self._ref(args, version=True)
            await asyncio.to_thread(repo.remove, name, version)
        except OtaStateError as err:
            raise self._command_error(err) from err
        self._event("model.removed", model=name, version=version)
        return {"removed": f"{name}@{version}"}

    # -- control socket (local CLI) ------------------------------------------------------------

    async def _ctl_install(self, request: dict[str, Any]) -> dict[str, Any]:
        path = str(request.get("archive", ""))
        if self.repo is None:
            return {"ok": False, "error": self.unavailable}
        if self._busy.locked():
            return {"ok": False, "error": "another deployment is in progress", "code": "busy"}
        return await self.deploy(
            Source("path", path),
            activate=bool(request.get("activate", True)),
            deployment=f"local-{Path(path).name}",
        )

    async def _ctl_activate(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            name, version = self._ref(request, version=True)
        except OtaStateError as err:
            return {"ok": False, "error": str(err)}
        return await self.activate(name, version)
