"""The composition root: builds the components from the config, wires them, runs them.

    links ─▶ Pipeline (streams → windows → models) ─▶ Store ─▶ outbox ─▶ MqttUplink
                      │                                  ▲
                      └── EventBus ─▶ log, store events + outbox, `tail`, counters

Nothing else imports this module (the CLI's `run` and the benchmarks start it). Each part
gets the narrow ports it needs (an `emit`, a config getter, the store's `call`, the
pipeline's swapper), never the daemon, and runs under the `Supervisor` as its own failure
domain; see docs/architecture.md for the map and what happens when each part fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.brokers import broker_quirks
from edge_agent.config import AgentConfig
from edge_agent.config_guard import ConfigGuard, GuardFiles, Startup
from edge_agent.embed import serving_in_thread
from edge_agent.errors import BundleError, EdgeAgentError
from edge_agent.events import Event, EventBus, count_listener, log_listener
from edge_agent.health import HealthBoard
from edge_agent.health_providers import (
    HeartbeatBody,
    mqtt_health,
    pipeline_health,
    sample_counts,
    store_health,
)
from edge_agent.inference.bundle import Bundle, shipped_models_dir
from edge_agent.inference.runtime import Runtime
from edge_agent.metrics import Counters
from edge_agent.ota.manager import OtaManager
from edge_agent.periodic import Heartbeat, ResultsPacker, Retention, SilenceMonitor, SummaryCloser
from edge_agent.pipeline.engine import Pipeline, PipelineObserver
from edge_agent.pipeline.messages import ModelSwap, Reload, Stop
from edge_agent.pipeline.results import ResultBatch
from edge_agent.pipeline.stream import ModelSlot, SensorStream
from edge_agent.pipeline.summary import SummaryAccumulator
from edge_agent.registry import CommandRegistry
from edge_agent.reloader import Reloader
from edge_agent.sensors import SensorLinks, load_models, models_health
from edge_agent.service.hub import ServiceHub
from edge_agent.service.live import storage_figures
from edge_agent.service.process import limit_malloc_arenas
from edge_agent.service.reload import resolve_models
from edge_agent.service.watchdog import Probe
from edge_agent.store.db import Store, outbox_depth, record_event
from edge_agent.supervise import Backoff, Supervisor
from edge_agent.sync.commands import AgentCommands, CommandServer
from edge_agent.sync.mqtt import MqttUplink
from edge_agent.sync.resend import Announcer, Resender
from firmware_bridge.links import Link

if TYPE_CHECKING:
    from edge_agent.faces.pipeline import FacePipeline
    from edge_agent.monitor.server import MetricsServer

__all__ = ["Daemon", "run_daemon", "serving_in_thread"]

log = logging.getLogger("edge_agent")

SWITCH_INTERVAL_S = 0.0005
"""GIL switch interval while the daemon runs (CPython's default is 5 ms)."""

PERIODIC = ("heartbeat", "results", "summaries", "retention", "silence")

STORE_CHECK_S = 1.0
"""How often the root checks that the store can still persist anything."""


class Daemon:
    """One running gateway agent. `run()` until `request_stop()` (or SIGINT/SIGTERM).

    Args:
        config: The configuration to run.
        on_result: Called with every result batch (on the loop), for embedding.
        handle_signals: Install SIGINT/SIGTERM/SIGHUP handlers on the loop.
        config_path: The file SIGHUP and `reload` re-read (None: the embedded default).
        observer: Hooks into the data path (benchmarks time the stages with these).
        backoff: Restart delays of failed components (tests shrink them).
        startup: What the start-up chose to run (`config_guard.choose_startup_config`).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_result: Callable[[ResultBatch], None] | None = None,
        handle_signals: bool = True,
        config_path: Path | None = None,
        observer: PipelineObserver | None = None,
        backoff: Backoff | None = None,
        startup: Startup | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._startup = startup or Startup(config, b"")
        self.handle_signals = handle_signals
        self.started_mono = time.monotonic()
        self.ready = asyncio.Event()
        self.state = "starting"  # starting → running ⇄ reloading → stopping
        self.counters = Counters()
        self.bus = EventBus(self.counters)
        emit = self.bus.emit
        self.health = HealthBoard(self.counters)
        self.supervisor = Supervisor(emit, backoff=backoff, counters=self.counters)
        self.store = Store(
            Path(config.storage.path),
            device_id=config.device.id,
            topic_root=config.topic_root,
            synchronous=config.storage.synchronous,
            commit_interval_ms=config.storage.commit_interval_ms,
            max_bytes=config.storage.max_bytes,
            max_age_s=config.storage.max_age_days * 86400.0,
            reserve_bytes=config.storage.reserve_bytes,
            emit=emit,
            inc=self.counters.inc,
            health=self.health,
        )
        self.pipeline = Pipeline(
            emit=emit,
            submit=self.store.submit,
            failed=self.supervisor.failed,
            restarted=self.supervisor.restarted,
            reload=self._reload_now,
            gap_policy=self._gap_policy,
            backoff=self.supervisor.backoff,
            observer=observer,
            on_result=on_result,
            show_results=lambda: self.config.logging.show_results,
            inc=self.counters.inc,
        )
        self.ota = OtaManager(
            config=self._config, emit=emit, slots=self.pipeline.slots, swap=self.pipeline.swap
        )
        self.pipeline.probation = self.ota.watching
        self.sensors = SensorLinks(self._config, self.pipeline, emit)
        self.faces: FacePipeline | None = None
        self.metrics: MetricsServer | None = None
        self.uplink: MqttUplink | None = None
        self.registry = CommandRegistry()
        self.commands = CommandServer(self.registry, self._config, emit, self.counters.inc)
        self.service = ServiceHub(
            config=self._config,
            health=self.health,
            commands=self.registry.local_view(),
            probes=[
                Probe("pipeline", self.pipeline.progress, "batches"),
                Probe("store", lambda: (self.store.stats.commits, self.store.pending()), "writes"),
            ],
            state=lambda: self.state,
            outbox_depth=lambda: self.store.call(outbox_depth()),
            sample_counts=lambda: sample_counts(self.pipeline.streams),
            config_source=self._config_source,
            started_mono=self.started_mono,
            streams=lambda: self.pipeline.streams,
            probation=lambda: self.ota.watching,
            storage=lambda: storage_figures(self.store.call, self.config.storage.path),
        )
        self.pipeline.on_results = self.service.on_results
        AgentCommands(
            config=self._config,
            config_path=config_path,
            status=self.service.status,
            reload=self.reload,
            flush=self._flush,
            sensor_health=self.sensor_health,
            state=lambda: self.state,
        ).register(self.registry)
        self.ota.register(self.registry)
        call, notify = self.store.call, self._notify_uplink
        self.results = ResultsPacker(self._config, call, notify)
        self.summary_closer = SummaryCloser(
            self._config, call, notify, self.pipeline.summaries, self.pipeline.dropped_windows
        )
        self.retention = Retention(self._config, call, notify)
        body = HeartbeatBody(call, self.health, self.started_mono, lambda: self.windows_committed)
        self.heartbeat = Heartbeat(self._config, call, body, notify)
        # Gap repair and fleet re-announce: the gateway's side of a consumer that lost something.
        self.resender = Resender(self._config, call, notify, emit, self.counters.inc)
        self.resender.register(self.registry)
        self.announcer = Announcer(
            self._config,
            republish=lambda: self.uplink is not None and self.uplink.reannounce(),
            beat=self.heartbeat.beat,
            stats=self.resender.stats,
            inc=self.counters.inc,
        )
        self.silence = SilenceMonitor(lambda: self.config.sensors, self.pipeline.streams, emit)
        # Reverts a broker change that never connects; keeps the last known good config.
        self.config_guard = (
            ConfigGuard(
                GuardFiles.for_config(config_path),
                emit=emit,
                revert=self._revert_to,
                health=self.health,
            )
            if config_path is not None
            else None
        )
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self.reloader = Reloader(
            config=self._config,
            set_config=self._set_config,
            config_path=config_path,
            source=self._config_source,
            emit=emit,
            pipeline=self.pipeline,
            sensors=self.sensors,
            resolve=self._resolve_models,
            load_models=self._load_models,
            serving=lambda: self._tasks is not None,
            spawn=self._spawn,
            cancel=self._cancel,
            start_periodic=self._start_periodic,
            close_interval=lambda: self.summary_closer.close(final=False),
            uplink=lambda: self.uplink,
            new_uplink=self._new_uplink,
            guard=self.config_guard,
            stopped=self._stop.is_set,
            set_state=self._set_state,
            reloading=self.service.reloading,
            reloaded=self.service.reloaded,
        )
        self._wire_events()
        self._wire_health()

    # -- wiring --------------------------------------------------------------------------------

    def _config(self) -> AgentConfig:
        return self.config

    def _set_config(self, config: AgentConfig) -> None:
        self.config = config

    def _set_state(self, state: str) -> None:
        self.state = state

    def _config_source(self) -> str:
        return str(self.config_path) if self.config_path else "embedded default"

    def _gap_policy(self, sensor: str) -> str | None:
        cfg = next((s for s in self.config.sensors if s.name == sensor), None)
        return cfg.gap_policy if cfg is not None else None

    def _wire_events(self) -> None:
        """The bus feeds the log, the store (events table + outbox), `tail` and the counters."""
        bus = self.bus
        bus.subscribe(log_listener(log))
        bus.subscribe(self._record_event)
        bus.subscribe(self.service.on_event)
        bus.subscribe(count_listener(self.counters))
        if self.config_guard is not None:
            bus.subscribe(self.config_guard.on_event)

    def _record_event(self, event: Event) -> None:
        self.store.submit(
            record_event(
                event.kind, dict(event.body), sensor=event.sensor, severity=event.severity
            ),
            on_commit=lambda _: self._notify_uplink(),
        )

    def _wire_health(self) -> None:
        board = self.health
        board.provide("sensors", self.sensor_health)
        board.provide("models", lambda: models_health(self.pipeline))
        board.provide("pipeline", lambda: pipeline_health(self.pipeline))
        board.provide("mqtt", lambda: mqtt_health(self.uplink, self.resender.stats))
        board.provide(
            "store",
            lambda: store_health(self.store, self.retention.dropped, self.retention.delivered),
        )
        board.provide("components", self.supervisor.health)
        board.provide("counters", self.counters.snapshot)
        if self.config_guard is not None:
            board.provide("config_guard", self.config_guard.snapshot)

    def _notify_uplink(self) -> None:
        loop, uplink = self._loop, self.uplink
        if loop is not None and uplink is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended: nothing to wake
                loop.call_soon_threadsafe(uplink.notify)

    def _new_uplink(self, config: AgentConfig) -> MqttUplink:
        """The MQTT session for `config`, with remote commands attached; now the current one."""
        uplink = MqttUplink(config, self.store, emit=self.bus.emit, inc=self.counters.inc)
        announcer = self.announcer

        def on_message(conn: Any, message: Any) -> None:
            if message.topic == announcer.topic:
                announcer.on_message(message.payload, bool(message.retain))
            else:
                self.commands.on_message(conn.client, message)

        def on_connected(conn: Any) -> None:
            self.commands.on_connected(conn.client)
            announcer.on_connected(conn.client)

        uplink.on_command = on_message
        uplink.on_connected = on_connected
        uplink.keep_delivered = lambda: self.config.sync.keep_delivered_s > 0
        self.uplink = uplink
        return uplink

    # -- what tests, benchmarks and the CLI read -----------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop `run()` runs on (None before it started)."""
        return self._loop

    @property
    def slots(self) -> dict[str, ModelSlot]:
        """Loaded models by reference."""
        return self.pipeline.slots

    @property
    def streams(self) -> dict[tuple[str, int], SensorStream]:
        """Live streams by (sensor, stream id)."""
        return self.pipeline.streams

    @property
    def summaries(self) -> dict[tuple[str, str], SummaryAccumulator]:
        """Summary accumulators of the current interval by (stream, model@version)."""
        return self.pipeline.summaries

    @property
    def windows_committed(self) -> int:
        """Window results committed since start."""
        return self.pipeline.stats.windows_committed

    @property
    def links(self) -> dict[str, Link]:
        """Open sensor links by sensor name."""
        return self.sensors.links

    def sensor_health(self) -> dict[str, Any]:
        """Per-sensor state for heartbeats and `status`."""
        return self.sensors.health()

    async def _flush(self) -> int:
        await self.results.pack()
        self._notify_uplink()
        return await self.store.call(outbox_depth())

    # -- requests (any thread) -----------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask `run()` to stop cleanly (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():  # not started, or already ended
            self._stop.set()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile: it has stopped
            loop.call_soon_threadsafe(self._stop.set)

    def request_reload(self) -> None:
        """Re-read the config soon (SIGHUP; thread-safe). The outcome is logged and recorded."""
        self.pipeline.post(Reload())

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply it between two pipeline rounds; returns what changed."""
        return await self.pipeline.request_reload()

    async def swap_model(self, name: str, bundle: Bundle, runtime: Runtime) -> ModelSwap:
        """Make a loaded model serve every bare reference to `name` (see `Pipeline.swap`)."""
        return await self.pipeline.swap(name, bundle, runtime)

    # -- sensors and models --------------------------------------------------------------------

    async def _reload_now(self) -> dict[str, Any]:
        return await self.reloader.reload_now()

    async def _revert_to(self, path: Path) -> dict[str, Any]:
        """The config guard's way back: reload from `path` (the file, or the good copy)."""
        self.reloader.revert_to(path)
        return await self.reload()

    def _resolve_models(self, config: AgentConfig) -> dict[str, Bundle | BundleError]:
        search = [*config.models.dirs, shipped_models_dir()]
        return self.ota.resolve_refs(resolve_models(config, shipped_models_dir()), search)

    def _load_models(self, sensors: list[str] | None = None) -> None:
        search = [*self.config.models.dirs, shipped_models_dir()]
        load_models(
            self.config, self.pipeline, self.ota.find_bundle, search, self.bus.emit, sensors
        )

    # -- supervised tasks ----------------------------------------------------------------------

    def _spawn(self, name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `start` as the supervised component `name` in the task group."""
        assert self._tasks is not None
        self._running[name] = self._tasks.create_task(self.supervisor.run(name, start), name=name)

    def _start_periodic(self, *names: str) -> None:
        starts = {
            "heartbeat": self.heartbeat.run,
            "results": self.results.run,
            "summaries": self.summary_closer.run,
            "retention": self.retention.run,
            "silence": self.silence.run,
        }
        for name in names:
            self._spawn(name, starts[name])

    async def _cancel(self, *names: str) -> None:
        tasks = [t for n in names if (t := self._running.pop(n, None)) is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, serve until stopped, then shut down without losing data."""
        # A window closes on a link thread and is finished on the loop; CPython's default
        # 5 ms GIL switch interval would let a busy thread sit on that hand-off.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        limit_malloc_arenas()
        loop = self._loop = asyncio.get_running_loop()
        self.bus.bind(loop)
        self.pipeline.bind(loop)
        self.sensors.loop = loop
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._stop.set)
            with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            # The one failure that ends the process: a store that cannot be opened.
            await asyncio.to_thread(self.store.open)
            if self.store.schema_before == 0:
                log.info("store: created %s", self.config.storage.path)
            await asyncio.to_thread(self.ota.open)  # the persisted active versions first
            await asyncio.to_thread(self._load_models)
            await self._start_faces()
            self._new_uplink(self.config)
            if self.config.mqtt.broker != "generic":  # a known broker: say once what it refuses
                for quirk in broker_quirks(self.config):
                    log.warning("mqtt: %s (docs/brokers.md)", quirk.describe())
            self.bus.emit(
                "agent.started",
                version=__version__,
                sensors=[s.name for s in self.config.sensors],
            )
            if self.config_guard is not None:
                self.config_guard.start(self._startup)
            for sensor in self.config.sensors:
                self.sensors.start(sensor.name)
            await self.service.start()
            self.ota.start()
            self.state = "running"
            self.ready.set()
            self.service.ready()
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._serve()
        finally:
            await self._close()

    async def _start_faces(self) -> None:
        if not self.config.faces.enabled:
            return
        # Imported only when faces are on: the face stack is not needed otherwise.
        from edge_agent.faces.pipeline import start_face_pipeline
        from edge_agent.faces.sync import gallery_handlers

        # Through the OTA manager: a face model activated over the air is the one loaded.
        faces = await start_face_pipeline(self.config, self.bus.emit, find=self.ota.find_bundle)
        if faces is None:
            return
        self.faces = faces
        self.pipeline.faces = faces.take

        def templates() -> dict[str, int]:
            store = faces.store
            return dict(store.template_counts()) if store is not None else {}

        self.ota.face_templates = templates
        self.health.provide("faces", faces.health)
        for name, handler in gallery_handlers(faces).items():
            self.registry.register(name, handler, local=False)

    def _metrics_server(self) -> MetricsServer:
        # Imported only when metrics are on: prometheus_client is not loaded otherwise.
        from edge_agent.monitor.build import metrics_server

        return metrics_server(
            self.config.metrics,
            health=self.health,
            counters=self.counters,
            pipeline=self.pipeline,
            store_call=self.store.call,
            state=lambda: self.state,
            stall=lambda: self.service.watchdog.stall if self.service.watchdog else None,
            emit=self.bus.emit,
        )

    async def _serve(self) -> None:
        """Run every component supervised until stopped, then drain in order."""
        self.summary_closer.interval_start = time.time()
        self._spawn("pipeline", self.pipeline.run)
        assert self.uplink is not None
        self._spawn("mqtt", self.uplink.run)
        self._spawn("commands", self.commands.run)
        self._spawn("control", self.service.serve_control)
        self._spawn("ota", self.ota.run)
        if self.faces is not None:
            self._spawn("faces", self.faces.run)
        if self.config.metrics.enabled:
            self.metrics = self._metrics_server()
            self._spawn("metrics", self.metrics.run)
        self._start_periodic(*PERIODIC)
        assert self._tasks is not None
        # Not supervised: a store that cannot persist anything ends the process (exit 1),
        # and systemd's restart is the right answer (see docs/architecture.md).
        self._running["store-watch"] = self._tasks.create_task(
            self.store.watch_writer(STORE_CHECK_S), name="store-watch"
        )
        await self._stop.wait()
        await self.ota.close()  # no swap is queued after this
        async with self.reloader.lock:  # a reload in progress finishes first
            self.state = "stopping"
        self.service.stopping()
        log.info("stopping: closing sensors, flushing results")
        await self._cancel("ota", "faces", "metrics", *PERIODIC)
        await self.sensors.close_all()
        self.pipeline.stopping = True
        self.pipeline.post(Stop())
        pipeline = self._running.pop("pipeline")
        await asyncio.wait({pipeline})
        if self.faces is not None:
            await self.faces.drain()  # decisions in flight become events first
        await self.summary_closer.close(final=True)
        await self.results.pack()
        self.bus.emit(
            "agent.stopped",
            uptime_s=round(time.monotonic() - self.started_mono, 1),
            samples=sample_counts(self.pipeline.streams),
        )
        if self.config_guard is not None:
            self.config_guard.stopped_cleanly()
        await self.store.call(outbox_depth())
        self._notify_uplink()
        await self.uplink.stop(timeout=3.0)
        await self._cancel("mqtt", "commands", "control", "store-watch")
        await self.commands.close()

    async def _close(self) -> None:
        await self.announcer.close()
        if self.config_guard is not None:
            await self.config_guard.close()
        await self.service.close()
        await self.ota.close()
        self.sensors.close_now()
        for slot in self.pipeline.slots.values():
            slot.runtime.close()
        if self.faces is not None:
            await asyncio.to_thread(self.faces.close)
        self.pipeline.close()
        await asyncio.to_thread(self.store.close)
        self.bus.bind(None)


def run_daemon(
    config: AgentConfig, *, config_path: Path | None = None, startup: Startup | None = None
) -> int:
    """Run until SIGINT/SIGTERM (SIGHUP re-reads `config_path`); returns the exit code.

    Exits 1 only when the store cannot be opened (systemd then restarts the service).
    """
    daemon = Daemon(config, config_path=config_path, startup=startup)
    failed: list[BaseException] = []

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Until the loop installs its own handlers, SIGTERM stops startup like Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupt)
    # A reload asked for before start-up finished must not kill the process (SIGHUP's default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        asyncio.run(daemon.run())
    except* EdgeAgentError as group:
        failed.extend(group.exceptions)
    except* KeyboardInterrupt:
        log.info("stopped during startup")
    for err in failed:
        log.error("%s", err)
    return 1 if failed else 0
