"""A config that cannot brick the gateway: last known good, confirmation deadline, crash count.

Three files live beside the config (or in systemd's `$STATE_DIRECTORY` when the service
runs with one, since /etc is read-only to it), named after the config file:

- `<name>.good`: the last known good config, a byte copy of a file the daemon ran with
  while connected to the broker (CONNACK), or, with no broker reachable, that ran without
  a crash for `service.config_confirm_s` (then only when no good copy exists yet or its
  broker settings are those of the good copy: a config that never reached a broker does
  not replace one that did).
- `<name>.guard.json`: the crash counter (starts in a row of one config that did not end
  in a clean stop or run `config_confirm_s`), and the hashes of files refused earlier.
- `<name>.refused-<UTC time>`: a refused file, kept for inspection.

At start (`choose_startup_config`), a file that does not validate, that was refused
before, or that the daemon has started on `service.config_crash_limit` times in a row
without a clean run is replaced by the good copy, loudly. Without a good copy, an invalid
file still ends the start with exit 2 and the precise error (the embedded default would
run emulated sensors under this gateway's name and store in the working directory: worse
than a clear refusal that systemd and `doctor` show).

While running (`ConfigGuard`), every reload that changes the broker settings must see an
`mqtt.connected` event within `service.config_confirm_s`; otherwise the refused file is
kept aside, the good copy is put back (when the file can be written) and the daemon
reloads it, reporting `config.reverted`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.config_sources import decode_config, read_config_bytes
from edge_agent.durable import write_atomically
from edge_agent.errors import ConfigError
from edge_agent.events import Emit, Event
from edge_agent.health import HealthBoard

log = logging.getLogger(__name__)

GOOD_SUFFIX = ".good"
STATE_SUFFIX = ".guard.json"
REFUSED_INFIX = ".refused-"
KEEP_REFUSED_HASHES = 16
DEFAULT_CRASH_LIMIT = 3


def sha256(data: bytes) -> str:
    """Hex SHA-256 of a config file's bytes: how the guard recognises a file."""
    return hashlib.sha256(data).hexdigest()


def load_config_bytes(
    raw: bytes, *, source: str, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate config file bytes as `load_config` validates a file.

    Raises:
        ConfigError: not UTF-8, not TOML, or invalid values, naming `source`.
    """
    return parse_config(decode_config(raw, source), source=source, environ=environ)


def read_config(
    path: Path | None, *, environ: Mapping[str, str] | None = None
) -> tuple[AgentConfig, bytes]:
    """The config in `path` and the bytes it was read from (the embedded default: no bytes).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not TOML, or invalid.
    """
    if path is None:
        return parse_config({}, source="embedded default", environ=environ), b""
    raw = read_config_bytes(path)
    return load_config_bytes(raw, source=str(path), environ=environ), raw


def broker_settings(config: AgentConfig) -> dict[str, Any]:
    """What decides whether the broker accepts the session (the secret included)."""
    settings = config.mqtt.model_dump(mode="json")
    settings["password"] = config.mqtt.password.get_secret_value() if config.mqtt.password else None
    settings["client_id"] = config.client_id
    return settings


@dataclass(frozen=True)
class GuardFiles:
    """Where the guard keeps its copies and counter for one config file."""

    config: Path
    directory: Path

    @classmethod
    def for_config(cls, config: Path, environ: Mapping[str, str] | None = None) -> GuardFiles:
        """Beside the config, or in systemd's `$STATE_DIRECTORY` (the first one) when set."""
        env = os.environ if environ is None else environ
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        return cls(config, Path(state_dir) if state_dir else config.parent)

    @property
    def good(self) -> Path:
        """The last known good copy."""
        return self.directory / (self.config.name + GOOD_SUFFIX)

    @property
    def state(self) -> Path:
        """The crash counter and refused hashes (JSON)."""
        return self.directory / (self.config.name + STATE_SUFFIX)

    def refused(self, wall: float) -> Path:
        """Where a file refused at `wall` is kept."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
        path = self.directory / f"{self.config.name}{REFUSED_INFIX}{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = self.directory / f"{self.config.name}{REFUSED_INFIX}{stamp}-{n}"
        return path


@dataclass
class GuardState:
    """What the guard remembers across starts (`<name>.guard.json`).

    Attributes:
        config_sha256: The config the last start ran.
        unclean_starts: Starts in a row of that config without a clean stop or run.
        refused: Hashes of files refused (most recent last).
        fallback: What the last start fell back from, if it did (for `doctor`).
    """

    config_sha256: str | None = None
    unclean_starts: int = 0
    refused: list[str] = field(default_factory=list)
    fallback: dict[str, Any] | None = None

    @classmethod
    def read(cls, path: Path) -> GuardState:
        """The saved state; a missing or damaged file is a fresh state (never an error)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                config_sha256=data.get("config_sha256"),
                unclean_starts=max(0, int(data.get("unclean_starts", 0))),
                refused=[str(h) for h in data.get("refused", [])][-KEEP_REFUSED_HASHES:],
                fallback=data.get("fallback") if isinstance(data.get("fallback"), dict) else None,
            )
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def write(self, path: Path) -> bool:
        """Save atomically (0640); False, logged, when the directory cannot be written."""
        body = {
            "config_sha256": self.config_sha256,
            "unclean_starts": self.unclean_starts,
            "refused": self.refused[-KEEP_REFUSED_HASHES:],
            "fallback": self.fallback,
        }
        try:
            write_atomically(path, json.dumps(body, indent=1) + "\n", mode=0o640)
        except OSError as err:
            log.warning("config guard: cannot save %s: %s", path, err)
            return False
        return True


def _same_mode_and_owner(path: Path) -> tuple[int, tuple[int | None, int | None] | None]:
    """Mode and owner of `path` for a copy of it (0600 and ours when it is gone)."""
    try:
        st = path.stat()
    except OSError:
        return 0o600, None
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    return st.st_mode & 0o777, owner


def keep_copy(files: GuardFiles, target: Path, data: bytes) -> bool:
    """Write `data` to `target` with the config's mode and owner; False when it cannot."""
    mode, owner = _same_mode_and_owner(files.config)
    try:
        files.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data, mode=mode, owner=owner)
    except OSError as err:
        log.error("config guard: cannot write %s: %s", target, err)
        return False
    return True


def restore(files: GuardFiles, data: bytes) -> bool:
    """Put `data` (the good copy) back as the config file; False when it is read-only."""
    mode, owner = _same_mode_and_owner(files.config)
    try:
        write_atomically(files.config, data, mode=mode, owner=owner)
    except OSError as err:
        log.error(
            "config guard: cannot put the last known good config back into %s (%s); the "
            "daemon runs it from %s",
            files.config,
            err,
            files.good,
        )
        return False
    return True


@dataclass
class Startup:
    """The config a start runs on, and what it refused to get there.

    Attributes:
        config: The validated config to run.
        raw: Its bytes (the file's, or the good copy's after a fallback).
        fallback: None, or `refused` (where the refused file was kept), `reason`,
            `good` (the good copy run instead) and `restored` (whether the config file
            holds the good copy again).
    """

    config: AgentConfig
    raw: bytes
    fallback: dict[str, Any] | None = None


def choose_startup_config(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    files: GuardFiles | None = None,
    wall: Callable[[], float] = time.time,
) -> Startup:
    """The config to start on: the file, or the last known good copy when the file would
    brick the gateway (invalid, refused before, or `config_crash_limit` unclean starts in a
    row). Counts this start as unclean until `ConfigGuard` sees a clean run or stop.

    Raises:
        ConfigError: the file is unusable and there is no usable good copy.
    """
    files = files or GuardFiles.for_config(path, environ)
    state = GuardState.read(files.state)
    source = str(path)
    reason: str | None = None
    config: AgentConfig | None = None
    failure: ConfigError | None = None
    try:
        raw = read_config_bytes(path)
    except ConfigError as err:
        raw, failure = b"", err
    if failure is None:
        try:
            config = load_config_bytes(raw, source=source, environ=environ)
        except ConfigError as err:
            failure = err
    if failure is not None:
        reason = "; ".join(str(issue) for issue in failure.issues)
    digest = sha256(raw)
    if config is not None and digest in state.refused:
        reason = "this file was refused before: it did not reach the broker in time"
    limit = config.service.config_crash_limit if config is not None else DEFAULT_CRASH_LIMIT
    if (
        config is not None
        and reason is None
        and state.config_sha256 == digest
        and state.unclean_starts >= limit
    ):
        reason = (
            f"the daemon started on this file {state.unclean_starts} times in a row "
            "without running cleanly"
        )
    if reason is None:
        assert config is not None
        unclean = state.unclean_starts if state.config_sha256 == digest else 0
        state.config_sha256, state.unclean_starts = digest, unclean + 1
        state.fallback = None
        state.write(files.state)
        return Startup(config, raw)

    good = _read_good(files, environ)
    if good is None or sha256(good[1]) == digest:
        if config is None:
            assert failure is not None
            raise failure
        # Nothing else to go back to (or the good copy is this very file, so the crashes
        # are not the config's doing): run it, and say so; systemd's StartLimitBurst ends
        # a real loop.
        log.error(
            "config guard: %s: %s; %s",
            path,
            reason,
            "it is the last known good config" if good else "no last known good config",
        )
        unclean = state.unclean_starts if state.config_sha256 == digest else 0
        state.config_sha256, state.unclean_starts = digest, unclean + 1
        state.write(files.state)
        return Startup(config, raw)
    good_config, good_raw = good
    refused = files.refused(wall())
    kept = keep_copy(files, refused, raw) if raw else False
    restored = restore(files, good_raw)
    if not restored and digest not in state.refused:
        state.refused.append(digest)
    fallback = {
        "config": str(path),
        "reason": reason,
        "refused": str(refused) if kept else None,
        "good": str(files.good),
        "restored": restored,
        "at": round(wall(), 3),
        "when": "start",
    }
    good_digest = sha256(good_raw)
    unclean = state.unclean_starts if state.config_sha256 == good_digest else 0
    state.config_sha256, state.unclean_starts = good_digest, unclean + 1
    state.fallback = fallback
    state.write(files.state)
    return Startup(good_config, good_raw, fallback)


def _read_good(
    files: GuardFiles, environ: Mapping[str, str] | None
) -> tuple[AgentConfig, bytes] | None:
    try:
        raw = files.good.read_bytes()
    except OSError:
        return None
    try:
        return load_config_bytes(raw, source=str(files.good), environ=environ), raw
    except ConfigError as err:
        log.error(
            "config guard: the last known good copy %s no longer validates: %s", files.good, err
        )
        return None


class ConfigGuard:
    """Watches the running config: keeps it as the good copy, or reverts a broker change.

    A config becomes the last known good one once it has run `config_confirm_s` (since the
    start or the reload that brought it) and reached the broker; with no broker reachable,
    by the offline rule of the module docstring. A reload (or a start) that changes the
    broker settings must see a CONNACK within `config_confirm_s`, else it is reverted.

    The daemon tells it what it started on (`start`) and every reload it applied
    (`reloaded`), feeds it the MQTT session's state (`broker_state`, or the bus's
    `mqtt.connected` / `mqtt.disconnected` through `on_event`), and says when it stops
    cleanly (`stopped_cleanly`). `revert(path)` is the daemon's reload from a given file.
    """

    def __init__(
        self,
        files: GuardFiles,
        *,
        emit: Emit,
        revert: Callable[[Path], Awaitable[Mapping[str, Any]]],
        health: HealthBoard | None = None,
        environ: Mapping[str, str] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self._emit = emit
        self._revert = revert
        self._health = health
        self._environ = environ
        self._wall = wall
        self.config: AgentConfig | None = None
        self.raw = b""
        self.connected = False
        self.pending: dict[str, Any] | None = None
        self.fallback: dict[str, Any] | None = None
        self.reverted: dict[str, Any] | None = None
        self.confirmed_at: float | None = None
        self._reached = False  # the running config has had a CONNACK
        self._settled = False  # ... and has run `config_confirm_s`
        self._new_file = False  # it differs from the good copy it started beside
        self._degraded: str | None = None
        self._deadline: asyncio.Task[None] | None = None
        self._settle: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the daemon tells it -------------------------------------------------------------

    def start(self, startup: Startup) -> None:
        """The daemon is running `startup` (on the loop): report a fallback, start the timers."""
        if startup.fallback is not None:
            self.fallback = startup.fallback
            self._degrade(f"config fallback: {startup.fallback['reason']}")
            self._emit("config.fallback", "error", **startup.fallback)
        good = _read_good(self.files, self._environ) if startup.raw else None
        # A file whose broker settings differ from the good copy's (edited, then restarted
        # rather than reloaded) must prove itself like a reload.
        broker_changed = good is not None and broker_settings(good[0]) != broker_settings(
            startup.config
        )
        self._running(startup.config, startup.raw, broker_changed=broker_changed)

    def reloaded(self, config: AgentConfig, raw: bytes, *, broker_changed: bool) -> None:
        """A reload applied `config` (read as `raw`); arms the deadline if the broker changed."""
        self._running(config, raw, broker_changed=broker_changed)

    def on_event(self, event: Event) -> None:
        """Bus listener: `mqtt.connected` (a CONNACK) confirms the running config."""
        if event.kind in ("mqtt.connected", "mqtt.disconnected"):
            self.broker_state(event.kind == "mqtt.connected")

    def broker_state(self, connected: bool) -> None:
        """The MQTT session came up (CONNACK accepted) or went down."""
        self.connected = connected
        if not connected:
            return
        self._reached = True
        self._cancel(self._deadline)
        self._deadline = None
        self.pending = None
        if self._settled:
            self._spawn(self._keep_as_good())

    def stopped_cleanly(self) -> None:
        """The daemon stops cleanly: this start does not count towards the crash limit."""
        self._clear_crash_count()

    async def close(self) -> None:
        """Cancel the timers; safe to call twice."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        """For status, heartbeat and doctor."""
        return {
            "file": str(self.files.config),
            "good": str(self.files.good) if self.files.good.exists() else None,
            "confirmed_at": self.confirmed_at,
            "awaiting_broker": self.pending,
            "fallback": self.fallback,
            "reverted": self.reverted,
        }

    # -- inside ---------------------------------------------------------------------------------

    def _running(self, config: AgentConfig, raw: bytes, *, broker_changed: bool) -> None:
        """`config` runs from now on: restart the settle timer, arm the deadline if needed."""
        self.config, self.raw = config, raw
        self._cancel(self._deadline)
        self._cancel(self._settle)
        self._deadline = None
        self.pending = None
        self._settled = False
        good = self._good_bytes()
        self._new_file = bool(raw) and raw != good
        if broker_changed:
            self.connected = False  # the session is being replaced; its CONNACK is to come
        if broker_changed and self._new_file and good is not None:
            self._reached = False
            self.pending = {"since": round(self._wall(), 3), "sha256": sha256(raw)}
            self._deadline = self._spawn(self._deadline_after(config.service.config_confirm_s))
        else:
            self._reached = self._reached and self.connected
        self._settle = self._spawn(self._settle_after(config.service.config_confirm_s))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name="config-guard")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        """A timer that failed is reported, never left to end anything else."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        err = task.exception()
        log.error("config guard: %s", err, exc_info=err)
        self._emit("component.failed", "error", component="config-guard", error=repr(err))

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done():
            task.cancel()

    def _degrade(self, reason: str) -> None:
        if self._health is None:
            return
        if self._degraded is not None:
            self._health.recover(self._degraded)
        self._degraded = reason
        self._health.degrade(reason)

    def _recover(self) -> None:
        if self._health is not None and self._degraded is not None:
            self._health.recover(self._degraded)
        self._degraded = None

    def _good_bytes(self) -> bytes | None:
        try:
            return self.files.good.read_bytes()
        except OSError:
            return None

    async def _settle_after(self, seconds: float) -> None:
        """`seconds` of running without a crash: a clean start, and maybe a good copy."""
        await asyncio.sleep(seconds)
        self._settled = True
        await asyncio.to_thread(self._clear_crash_count)
        if self._reached:
            await self._keep_as_good()
        elif not self.connected and self.pending is None and self.config is not None:
            config, raw = self.config, self.raw
            if await asyncio.to_thread(self._may_keep_offline, config):
                await self._keep_as_good(raw)

    def _may_keep_offline(self, config: AgentConfig) -> bool:
        """No good copy yet, or one with the same broker settings (worker thread)."""
        good = _read_good(self.files, self._environ)
        return good is None or broker_settings(good[0]) == broker_settings(config)

    async def _keep_as_good(self, raw: bytes | None = None) -> None:
        """The running config proved itself: keep it; a new file ends earlier reports."""
        raw = self.raw if raw is None else raw
        proven = self._new_file
        if not await asyncio.to_thread(self._save_good, raw, clear_report=proven):
            return
        if proven and raw == self.raw:
            self._new_file = False
            self.fallback = self.reverted = None
            self._recover()

    def _save_good(self, raw: bytes, *, clear_report: bool = False) -> bool:
        """Keep `raw` as the last known good copy (worker thread: it fsyncs)."""
        if not raw:
            return False
        if self._good_bytes() != raw:
            if not keep_copy(self.files, self.files.good, raw):
                return False
            log.info("config guard: %s is the last known good config now", self.files.config)
        self.confirmed_at = round(self._wall(), 3)
        state = GuardState.read(self.files.state)
        digest = sha256(raw)
        if digest in state.refused or (clear_report and state.fallback is not None):
            if digest in state.refused:
                state.refused.remove(digest)
            if clear_report:
                state.fallback = None
            state.write(self.files.state)
        return True

    def _clear_crash_count(self) -> None:
        state = GuardState.read(self.files.state)
        if state.unclean_starts:
            state.unclean_starts = 0
            state.write(self.files.state)

    async def _deadline_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._deadline = None
        await self._go_back(f"no broker connection within {seconds:g} s of the change")

    async def _go_back(self, reason: str) -> None:
        """Put the last known good config back and reload it; report `config.reverted`."""
        self.pending = None
        good = self._good_bytes()
        if good is None:
            self._emit(
                "config.unconfirmed",
                "warning",
                config=str(self.files.config),
                reason=f"{reason}; no last known good config to go back to",
            )
            return
        self.reverted = await asyncio.to_thread(self._put_back, self.raw, good, reason)
        self._degrade(f"config reverted: {reason}")
        self._emit("config.reverted", "error", **self.reverted)
        restored = self.reverted["restored"]
        outcome = await self._revert(self.files.config if restored else self.files.good)
        if not outcome.get("ok"):
            log.error("config guard: reloading the last known good config failed: %s", outcome)

    def _put_back(self, raw: bytes, good: bytes, reason: str) -> dict[str, Any]:
        """Keep the refused file aside, restore the good one, remember (worker thread)."""
        refused = self.files.refused(self._wall())
        kept = keep_copy(self.files, refused, raw)
        restored = restore(self.files, good)
        reverted = {
            "config": str(self.files.config),
            "refused": str(refused) if kept else None,
            "reason": reason,
            "restored": restored,
            "at": round(self._wall(), 3),
        }
        state = GuardState.read(self.files.state)
        if not restored and sha256(raw) not in state.refused:
            state.refused.append(sha256(raw))  # the next start must not run it either
        state.fallback = {**reverted, "when": "reload"}
        state.write(self.files.state)
        return reverted


__all__ = [
    "ConfigGuard",
    "GuardFiles",
    "GuardState",
    "Startup",
    "broker_settings",
    "choose_startup_config",
    "load_config_bytes",
    "read_config",
    "sha256",
]
