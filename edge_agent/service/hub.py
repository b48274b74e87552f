"""The daemon's side of running as a service: systemd notifications, watchdog, control socket.

`ServiceHub` gets narrow ports from the composition root, never the daemon: a config
getter, the health board (every component's figures), the command registry's control-socket
view, the progress probes the watchdog watches, and a few getters. The root calls
`start()` once the store is open, models are loaded and sensors are started, `ready()`
right after, `stopping()` when shutdown begins and `close()` at the very end. The hub
subscribes `on_event` to the event bus and gets every window result through `on_results`,
for `edge-agent tail` and the last-errors list of `edge-agent status`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.events import Event
from edge_agent.health import HealthBoard
from edge_agent.pipeline.results import ResultBatch
from edge_agent.registry import Handler
from edge_agent.service.control import ControlError, ControlServer, TailFanout, control_socket_path
from edge_agent.service.live import LiveFeed, Streams
from edge_agent.service.notify import Notifier, watchdog_timeout
from edge_agent.service.watchdog import PipelineWatchdog, Probe

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
STREAMING_WITHIN_S = 5.0


class RateMeter:
    """Samples per second of each sensor over the last few seconds."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._history: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, now: float, counts: dict[str, int]) -> None:
        """Record cumulative sample counts at `now`."""
        self._history.append((now, counts))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()

    def rates(self) -> dict[str, float]:
        """Rate per sensor over the window (empty until two samples a second apart exist)."""
        if len(self._history) < 2:
            return {}
        (t0, first), (t1, last) = self._history[0], self._history[-1]
        if t1 - t0 < 0.5:
            return {}
        return {
            name: round(max(0, n - first.get(name, 0)) / (t1 - t0), 2) for name, n in last.items()
        }


class ServiceHub:
    """systemd notifications, the pipeline watchdog and the control socket of one daemon.

    Args:
        config: The running config (it may change on reload).
        health: Every component's health figures (`sensors`, `mqtt`, `store`, ...).
        commands: The control socket's commands (the registry's live local view).
        probes: What the watchdog watches for progress (pipeline, store).
        state: starting, running, reloading or stopping.
        outbox_depth: Awaits the number of messages waiting in the outbox.
        sample_counts: Samples received so far by sensor (for the rates in `status`).
        config_source: Where the config came from, for `status`.
        started_mono: When the process started (monotonic).
        notifier: systemd's notify socket (default: from the environment).
        streams: The pipeline's live streams, for the `watch` feed (None: no `watch`).
        probation: Model versions on probation by bundle path, for the `watch` feed.
        storage: Awaits the outbox's oldest age and disk figures, for the `watch` feed.
    """

    def __init__(
        self,
        *,
        config: Callable[[], AgentConfig],
        health: HealthBoard,
        commands: Mapping[str, Handler],
        probes: Sequence[Probe],
        state: Callable[[], str],
        outbox_depth: Callable[[], Awaitable[int]],
        sample_counts: Callable[[], dict[str, int]],
        config_source: Callable[[], str],
        started_mono: float,
        notifier: Notifier | None = None,
        streams: Streams | None = None,
        probation: Callable[[], Mapping[Path, object]] | None = None,
        storage: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.config = config
        self.health = health
        self.commands = commands
        self.probes = list(probes)
        self.state = state
        self._outbox_depth = outbox_depth
        self.sample_counts = sample_counts
        self.config_source = config_source
        self.started_mono = started_mono
        self.notifier = notifier or Notifier()
        self.tail = TailFanout()
        self.live = (
            LiveFeed(
                streams=streams,
                status=self.status,
                tail=self.tail,
                probation=probation,
                storage=storage,
            )
            if streams
            else None
        )
        self.control: ControlServer | None = None
        self.watchdog: PipelineWatchdog | None = None
        self.rates = RateMeter()
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=20)
        self.outbox_depth: int | None = None
        self.ready_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the control socket (a failure is logged; `serve_control` retries it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            await self._open_control()
        except ControlError as err:
            log.error("control socket disabled for now: %s", err)

    async def _open_control(self) -> ControlServer:
        path = control_socket_path(self.config())
        server = ControlServer(
            path,
            self.commands,
            self.tail,
            max_request_bytes=self.config().commands.max_request_bytes,
            streamers={"watch": self.live.watch} if self.live is not None else None,
        )
        await server.start()
        self.control = server
        log.info("control socket: %s", path)
        return server

    async def serve_control(self) -> None:
        """The control socket as a supervised component: (re)open it, serve until it fails.

        Raises:
            ControlError: the socket cannot be bound (the supervisor retries with backoff).
            Exception: a conversation failed unexpectedly; the socket is reopened.
        """
        server = self.control or await self._open_control()
        try:
            await server.serve()
        finally:
            if self.control is server:
                self.control = None
            await server.close()

    def ready(self) -> None:
        """Tell systemd start-up is complete and start the watchdog and status tasks."""
        self.ready_at = time.monotonic()
        self.notifier.ready(self.status_line())
        self.watchdog = PipelineWatchdog(
            self.notifier,
            self.probes,
            stall_timeout_s=self.config().service.stall_timeout_s,
            watchdog_s=watchdog_timeout(),
            on_change=self._on_stall,
            exempt=lambda: self.state() == "reloading",
        )
        if self.watchdog.watchdog_s is not None:
            log.info(
                "systemd watchdog: timeout %.1f s, checked every %.2f s",
                self.watchdog.watchdog_s,
                self.watchdog.interval_s,
            )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.watchdog.run(), name="watchdog"),
            loop.create_task(self._status_loop(), name="status"),
        ]

    def reloading(self) -> None:
        """`RELOADING=1` before a reload."""
        self.notifier.reloading()

    def reloaded(self, summary: dict[str, Any]) -> None:
        """`READY=1` after a reload, with what happened in the status line."""
        if summary.get("ok"):
            restarted = len(summary.get("restarted", [])) + len(summary.get("added", []))
            note = f"reloaded ({restarted} sensor(s) restarted)"
        else:
            note = "reload refused (config invalid; still running the previous one)"
        self.notifier.ready(f"{note}; {self.status_line()}")

    def stopping(self) -> None:
        """`STOPPING=1` as shutdown begins."""
        self.notifier.stopping("stopping: draining windows, flushing the store, going offline")

    async def close(self) -> None:
        """Stop the tasks and the control socket; safe to call twice."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.close()
            self.control = None
        self.notifier.close()

    # -- what the daemon reports ------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Event bus listener: keep errors for `status`, show the event to `tail`."""
        record = {
            "type": "event",
            "ts": round(event.wall, 3),
            "event": event.kind,
            "severity": event.severity,
            "sensor": event.sensor,
            "detail": dict(event.body),
        }
        if event.severity != "info":
            self.recent_errors.append(record)
        if self.tail.active:
            # Delivered on the loop by the bus; inline (before or after the loop) otherwise.
            if self._loop is not None and threading.get_ident() != self._loop_thread:
                self._loop.call_soon_threadsafe(self.tail.publish, record)
            else:
                self.tail.publish(record)

    def on_results(self, batch: ResultBatch) -> None:
        """Window results of one batch, one `tail` record per window."""
        if not self.tail.active:
            return
        labels = batch.labels
        model = f"{batch.model}@{batch.version}"
        for t_end, index, confidence in zip(
            batch.t_end.tolist(),
            batch.label_index.tolist(),
            batch.confidence.tolist(),
            strict=True,
        ):
            self.tail.publish(
                {
                    "type": "result",
                    "ts": round(t_end, 3),
                    "sensor": batch.sensor,
                    "model": model,
                    "label": labels[index] if labels else str(index),
                    "confidence": round(confidence, 4),
                }
            )

    def _on_stall(self, stall: str | None) -> None:
        if stall is not None:
            self.recent_errors.append(
                {
                    "type": "event",
                    "ts": round(time.time(), 3),
                    "event": "agent.stalled",
                    "severity": "error",
                    "sensor": None,
                    "detail": {"reason": stall},
                }
            )
            self.notifier.status(f"STALLED: {stall}")
        else:
            self.notifier.status(self.status_line())

    # -- status ------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        interval = self.config().service.status_interval_s
        next_line = 0.0
        while True:
            now = time.monotonic()
            self.rates.sample(now, self.sample_counts())
            if now >= next_line:
                next_line = now + interval
                await self._refresh_depth(timeout=0.5)
                if self.watchdog is None or self.watchdog.stall is None:
                    self.notifier.status(self.status_line())
            await asyncio.sleep(1.0)

    async def _refresh_depth(self, timeout: float) -> None:
        try:
            self.outbox_depth = await asyncio.wait_for(self._outbox_depth(), timeout)
        except Exception as err:
            # A busy or stalled store must not hold up `status`; the watchdog reports stalls.
            log.debug("status: outbox depth unavailable: %s", err)

    def status_line(self) -> str:
        """One line for `systemctl status` (STATUS=)."""
        snap = self.health.snapshot("sensors", "mqtt", "pipeline")
        sensors: Mapping[str, Any] = snap.get("sensors", {})
        enabled = [h for h in sensors.values() if h.get("state") != "disabled"]
        streaming = sum(
            1
            for h in enabled
            if h.get("state") == "connected"
            and h.get("seconds_since_data") is not None
            and h["seconds_since_data"] < STREAMING_WITHIN_S
        )
        mqtt = "mqtt connected" if snap.get("mqtt", {}).get("connected") else "mqtt offline"
        depth = "?" if self.outbox_depth is None else str(self.outbox_depth)
        committed = snap.get("pipeline", {}).get("windows_committed", 0)
        state = self.state()
        if snap["degraded"]:
            state = f"{state}, degraded: {', '.join(snap['degraded'])}"
        return (
            f"{state}: {streaming}/{len(enabled)} sensors streaming, "
            f"{committed} windows stored, outbox {depth}, {mqtt}"
        )

    async def status(self) -> dict[str, Any]:
        """Everything `edge-agent status` (and the MQTT `status` command) shows, JSON-ready."""
        await self._refresh_depth(timeout=1.0)
        snap = self.health.snapshot()
        rates = self.rates.rates()
        sensors = {name: dict(h) for name, h in snap.pop("sensors", {}).items()}
        for name, health in sensors.items():
            health["rate_hz"] = rates.get(name)
        models = [{"ref": ref, **m} for ref, m in snap.pop("models", {}).items()]
        pipeline = snap.pop("pipeline", {})
        mqtt = snap.pop("mqtt", {})
        store = snap.pop("store", {})
        cfg = self.config()
        wd = self.watchdog
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state(),
            "health": {"state": snap.pop("state"), "degraded": snap.pop("degraded")},
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "ready_after_s": (
                round(self.ready_at - self.started_mono, 3) if self.ready_at else None
            ),
            "config": self.config_source(),
            "device": {
                "id": cfg.device.id,
                "tenant": cfg.device.tenant,
                "site": cfg.device.site,
                "topic_root": cfg.topic_root,
            },
            "sensors": sensors,
            "models": models,
            "windows_committed": pipeline.get("windows_committed", 0),
            "pipeline": pipeline,
            "outbox_depth": self.outbox_depth,
            "dropped": store.get("dropped", {}),
            "mqtt_connected": bool(mqtt.get("connected")),
            "mqtt": {
                "broker": mqtt.get("host") or ", ".join(map(str, cfg.mqtt.nodes())),
                **mqtt,
            },
            "store": {"path": str(cfg.storage.path), **store},
            **snap,  # components, faces and whatever else reports its health
            "systemd": {
                "notify": self.notifier.backend,
                "watchdog_s": wd.watchdog_s if wd else None,
                "stall": wd.stall if wd else None,
            },
            "last_errors": list(self.recent_errors)[-10:],
        }
