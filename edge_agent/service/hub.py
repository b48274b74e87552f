"""The daemon's side of running as a service: systemd notifications, watchdog, control socket.

`ServiceHub` is the one object the daemon holds for all of it. The daemon calls
`start()` once the store is open, models are loaded and sensors are started,
`ready()` right after, `stopping()` when shutdown begins and `close()` at the
very end; it hands every event and window result to `on_event` / `on_results`
for `edge-agent tail` and the last-errors list of `edge-agent status`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.service.control import ControlError, ControlServer, TailFanout, control_socket_path
from edge_agent.service.notify import Notifier, watchdog_timeout
from edge_agent.service.watchdog import PipelineWatchdog, Probe
from edge_agent.store.db import outbox_depth

if TYPE_CHECKING:
    from edge_agent.daemon import Daemon
    from edge_agent.pipeline.results import ResultBatch

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
    """systemd notifications, the pipeline watchdog and the control socket of one daemon."""

    def __init__(self, daemon: Daemon, notifier: Notifier | None = None) -> None:
        self.daemon = daemon
        self.notifier = notifier or Notifier()
        self.tail = TailFanout()
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
        """Open the control socket (a failure is logged; the daemon runs on without it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        path = control_socket_path(self.daemon.config)
        server = ControlServer(
            path,
            {"ping": self._ping, "status": self._status, "reload": self._reload},
            self.tail,
        )
        try:
            await server.start()
        except ControlError as err:
            log.error("control socket disabled: %s", err)
            return
        self.control = server
        log.info("control socket: %s", path)

    def ready(self) -> None:
        """Tell systemd start-up is complete and start the watchdog and status tasks."""
        self.ready_at = time.monotonic()
        self.notifier.ready(self.status_line())
        d = self.daemon
        store = d.store
        self.watchdog = PipelineWatchdog(
            self.notifier,
            [
                Probe("pipeline", d.pipeline_progress, "batches"),
                Probe("store", lambda: (store.stats.commits, store.pending()), "writes"),
            ],
            stall_timeout_s=d.config.service.stall_timeout_s,
            watchdog_s=watchdog_timeout(),
            on_change=self._on_stall,
            exempt=lambda: d.state == "reloading",
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

    def on_event(self, kind: str, severity: str, sensor: str | None, body: dict[str, Any]) -> None:
        """An event the daemon recorded: keep errors for `status`, show it to `tail`."""
        record = {
            "type": "event",
            "ts": round(time.time(), 3),
            "event": kind,
            "severity": severity,
            "sensor": sensor,
            "detail": body,
        }
        if severity != "info":
            self.recent_errors.append(record)
        if self.tail.active:
            # Model loading reports from a worker thread; the tail queues live on the loop.
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

    def _sample_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (name, _), stream in self.daemon.streams.items():
            counts[name] = counts.get(name, 0) + stream.stats.samples
        return counts

    async def _status_loop(self) -> None:
        interval = self.daemon.config.service.status_interval_s
        next_line = 0.0
        while True:
            now = time.monotonic()
            self.rates.sample(now, self._sample_counts())
            if now >= next_line:
                next_line = now + interval
                await self._refresh_depth(timeout=0.5)
                if self.watchdog is None or self.watchdog.stall is None:
                    self.notifier.status(self.status_line())
            await asyncio.sleep(1.0)

    async def _refresh_depth(self, timeout: float) -> None:
        try:
            self.outbox_depth = await asyncio.wait_for(
                self.daemon.store.call(outbox_depth()), timeout
            )
        except Exception as err:
            # A busy or stalled store must not hold up `status`; the watchdog reports stalls.
            log.debug("status: outbox depth unavailable: %s", err)

    def status_line(self) -> str:
        """One line for `systemctl status` (STATUS=)."""
        d = self.daemon
        health = d.sensor_health()
        enabled = [h for h in health.values() if h["state"] != "disabled"]
        streaming = sum(
            1
            for h in enabled
            if h["state"] == "connected"
            and h["seconds_since_data"] is not None
            and h["seconds_since_data"] < STREAMING_WITHIN_S
        )
        uplink = d.uplink
        mqtt = "mqtt connected" if uplink and uplink.stats.connected else "mqtt offline"
        depth = "?" if self.outbox_depth is None else str(self.outbox_depth)
        return (
            f"{d.state}: {streaming}/{len(enabled)} sensors streaming, "
            f"{d.windows_committed} windows stored, outbox {depth}, {mqtt}"
        )

    async def status(self) -> dict[str, Any]:
        """Everything `edge-agent status` shows, JSON-ready."""
        d = self.daemon
        await self._refresh_depth(timeout=1.0)
        rates = self.rates.rates()
        sensors = d.sensor_health()
        for name, health in sensors.items():
            health["rate_hz"] = rates.get(name)
        users: dict[str, list[str]] = {}
        for sensor, slots in d.sensor_models.items():
            for slot in slots:
                users.setdefault(slot.ref, []).append(sensor)
        models = [
            {
                "ref": slot.ref,
                "runtime": slot.bundle.manifest.runtime,
                "task": slot.bundle.manifest.task,
                "path": str(slot.bundle.path),
                "sensors": sorted(users.get(slot.ref, [])),
            }
            for slot in d.slots.values()
        ]
        uplink = d.uplink
        cfg = d.config
        store = d.store
        wd = self.watchdog
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": d.state,
            "uptime_s": round(time.monotonic() - d.started_mono, 1),
            "ready_after_s": round(self.ready_at - d.started_mono, 3) if self.ready_at else None,
            "config": str(d.config_path) if d.config_path else "embedded default",
            "device": {
                "id": cfg.device.id,
                "tenant": cfg.device.tenant,
                "site": cfg.device.site,
                "topic_root": cfg.topic_root,
            },
            "sensors": sensors,
            "models": models,
            "windows_committed": d.windows_committed,
            "outbox_depth": self.outbox_depth,
            "mqtt": {
                "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                "connected": bool(uplink and uplink.stats.connected),
                "connected_since": uplink.stats.connected_since if uplink else None,
                "published": uplink.stats.published if uplink else 0,
                "acked": uplink.stats.acked if uplink else 0,
                "last_error": uplink.stats.last_error if uplink else None,
            },
            "store": {
                "path": str(cfg.storage.path),
                "commits": store.stats.commits,
                "pending": store.pending(),
                "failed_commits": store.stats.failed_commits,
                "last_error": store.stats.last_error,
            },
            "systemd": {
                "notify": self.notifier.backend,
                "watchdog_s": wd.watchdog_s if wd else None,
                "stall": wd.stall if wd else None,
            },
            "last_errors": list(self.recent_errors)[-10:],
        }

    # -- control commands --------------------------------------------------------------------

    async def _ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "state": self.daemon.state}

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "status": await self.status()}

    async def _reload(self, request: dict[str, Any]) -> dict[str, Any]:
        summary = await self.daemon.reload()
        return {"ok": bool(summary.get("ok")), "reload": summary, "error": summary.get("error")}
