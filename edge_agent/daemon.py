"""The daemon: links → decoder → ring buffers → windows → models → SQLite → outbox → MQTT.

Threads and the loop meet in one place: link threads hand decoded frames to the
event loop with `call_soon_threadsafe` into an `asyncio.Queue`. The loop cuts
windows (cheap numpy), runs each model once per batch of windows on a single
inference thread, and queues the results to the store's writer thread. Nothing
on the loop blocks on I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import BundleError, ConfigError, EdgeAgentError, RuntimeBackendError
from edge_agent.inference.bundle import Bundle, shipped_models_dir
from edge_agent.inference.runtime import Runtime, open_runtime
from edge_agent.ota.manager import OtaManager
from edge_agent.pipeline.results import ResultBatch
from edge_agent.pipeline.silence import SilenceWatch
from edge_agent.pipeline.stream import Emitted, ModelSlot, SensorStream, coalesce_reads
from edge_agent.pipeline.summary import SummaryAccumulator
from edge_agent.service.hub import ServiceHub
from edge_agent.store.db import Store, enqueue, outbox_depth, record_event
from edge_agent.store.results import (
    insert_results,
    insert_summaries,
    pack_results,
    skip_results_upload,
)
from edge_agent.store.retention import dropped_counters, enforce_limits
from edge_agent.sync.commands import CommandServer
from edge_agent.sync.mqtt import MqttUplink
from firmware_bridge.links import Link, open_link
from firmware_bridge.protocol.v1 import Frame

if TYPE_CHECKING:
    from edge_agent.faces.pipeline import FacePipeline

log = logging.getLogger("edge_agent")

D = TypeVar("D", bound="Daemon")

INLINE_INFERENCE_S = 0.0005
"""A round whose models are expected to take less than this runs on the event loop."""

# How often the disk caps are checked (they are also enforced whenever the disk is full).
RETENTION_INTERVAL_S = 10.0

# GIL switch interval while the daemon runs (CPython's default is 5 ms).
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class ModelSwap:
    """What `Daemon.swap_model` did: how long the pipeline waited, what it replaced."""

    pause_ns: int
    replaced: list[tuple[Bundle, Runtime]]
    """(bundle, runtime) that served before, one per distinct runtime replaced."""


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the link, store and inference threads start.

    glibc gives each thread that allocates its own arena; with a dozen threads allocating
    small buffers the untouched-but-resident remains add megabytes for nothing. This is
    what `MALLOC_ARENA_MAX=2` does, applied from inside so every way of starting the
    daemon gets it. No effect (and no error) on other C libraries.
    """
    with contextlib.suppress(OSError, AttributeError):
        # The process's own symbols: find_library would run ldconfig in a subprocess at start.
        libc = ctypes.CDLL(None)
        m_arena_max = -8  # from glibc's malloc.h
        libc.mallopt(m_arena_max, arenas)


def _rss_mb() -> float:
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/statm", encoding="ascii") as fh,
    ):
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return 0.0


class Daemon:
    """One running gateway agent. `run()` until `request_stop()` (or SIGINT/SIGTERM)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_result: Callable[[ResultBatch], None] | None = None,
        handle_signals: bool = True,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.on_result = on_result
        self.handle_signals = handle_signals
        self.store = Store(
            Path(config.storage.path),
            device_id=config.device.id,
            topic_root=config.topic_root,
            synchronous=config.storage.synchronous,
            commit_interval_ms=config.storage.commit_interval_ms,
            max_bytes=config.storage.max_bytes,
            max_age_s=config.storage.max_age_days * 86400.0,
        )
        self.dropped: dict[str, int] = {}
        self._interval_start = time.time()  # wall time the current summary interval began
        self.slots: dict[str, ModelSlot] = {}
        self.streams: dict[tuple[str, int], SensorStream] = {}
        self.sensor_models: dict[str, list[ModelSlot]] = {}
        self.links: dict[str, Link] = {}
        self.summaries: dict[tuple[str, str], SummaryAccumulator] = {}
        self.uplink: MqttUplink | None = None
        self.started_mono = time.monotonic()
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._infer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.ota = OtaManager(self)
        self._shown = 0
        self._shown_window = 0.0
        self.windows_committed = 0
        self.results_uploaded = 0
        self.silence: dict[str, SilenceWatch] = {}  # by stream name
        self.faces: FacePipeline | None = None  # face crops/embeddings; None when faces are off
        # starting → running ⇄ reloading → stopping; shown by `status` and systemd.
        self.state = "starting"
        # Batches taken from the inbox / fully handled: the watchdog's view of progress.
        self.batches_started = 0
        self.batches_done = 0
        self.service = ServiceHub(self)
        self._tasks: asyncio.TaskGroup | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._loop_thread: int | None = None

    # -- thread → loop bridge (called on link threads) -------------------------------------------

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        """LinkSink: hand a read's frames to the pipeline (from the loop or a link thread)."""
        self._to_inbox(("frames", sensor, frames, recv_mono, recv_wall))

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        """LinkSink: a sensor connected or was lost."""
        self._to_inbox(("state", sensor, state, detail))

    def _to_inbox(self, item: tuple[Any, ...]) -> None:
        """Queue for the pipeline: directly on the loop's thread, else through the loop."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._inbox.put_nowait(item)
        else:
            loop.call_soon_threadsafe(self._inbox.put_nowait, item)

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask `run()` to stop cleanly (thread-safe)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    def _new_uplink(self, config: AgentConfig) -> MqttUplink:
        """An MQTT session for `config`, with remote commands attached."""
        uplink = MqttUplink(config, self.store)
        uplink.on_command = lambda conn, msg: self.commands.on_message(conn.client, msg)
        uplink.on_connected = lambda conn: self.commands.on_connected(conn.client)
        return uplink

    def request_reload(self) -> None:
        """Re-read the config soon (SIGHUP; thread-safe). The outcome is logged and recorded."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._inbox.put_nowait, ("reload", None))

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply it between two pipeline batches; returns what changed."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._inbox.put(("reload", done))
        return await done

    async def swap_model(self, name: str, bundle: Bundle, runtime: Runtime) -> ModelSwap:
        """Make a loaded model serve every bare reference to `name`, between two pipeline rounds.

        Windows cut before the swap are run on the model they were cut for, the following
        ones on the new model (the input contract must match; `ota.staging` checks it).

        Raises:
            EdgeAgentError: the daemon is stopping.
        """
        if self._stop.is_set():
            raise EdgeAgentError("the daemon is stopping; model not swapped")
        done: asyncio.Future[ModelSwap] = asyncio.get_running_loop().create_future()
        await self._inbox.put(("swap", name, bundle, runtime, done))
        return await done

    def _swap_now(self, name: str, bundle: Bundle, runtime: Runtime) -> ModelSwap:
        """The swap itself, on the pipeline task: repoint the slots, nothing else."""
        start = time.perf_counter_ns()
        replaced: list[tuple[Bundle, Runtime]] = []
        for ref, slot in self.slots.items():
            if "@" not in ref and slot.bundle.manifest.name == name:
                if all(slot.runtime is not r for _, r in replaced):
                    replaced.append((slot.bundle, slot.runtime))
                slot.bundle, slot.runtime = bundle, runtime
        return ModelSwap(time.perf_counter_ns() - start, replaced)

    def _event(
        self, kind: str, severity: str = "info", sensor: str | None = None, **body: Any
    ) -> None:
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(severity, logging.ERROR)
        detail = " ".join(f"{k}={v}" for k, v in body.items())
        log.log(level, "event %s%s %s", kind, f" [{sensor}]" if sensor else "", detail)
        self.service.on_event(kind, severity, sensor, body)
        self.store.submit(
            record_event(kind, body, sensor=sensor, severity=severity),
            on_commit=lambda _: self._notify_uplink(),
        )

    def _notify_uplink(self) -> None:
        loop, uplink = self._loop, self.uplink
        if loop is not None and uplink is not None:
            loop.call_soon_threadsafe(uplink.notify)

    def _load_models(self, sensors: list[str] | None = None) -> None:
        search = [*self.config.models.dirs, shipped_models_dir()]
        for sensor in self.config.sensors:
            if sensors is not None and sensor.name not in sensors:
                continue
            slots: list[ModelSlot] = []
            for ref in sensor.models:
                try:
                    if ref not in self.slots:
                        bundle = self.ota.find_bundle(ref, search)
                        runtime = open_runtime(bundle)
                        self.slots[ref] = ModelSlot(bundle, runtime)
                        log.info(
                            "model %s loaded from %s (%s)",
                            bundle.ref,
                            bundle.path,
                            bundle.manifest.runtime,
                        )
                    slots.append(self.slots[ref])
                except (BundleError, RuntimeBackendError) as err:
                    self._event(
                        "model.load_failed", "error", sensor=sensor.name, model=ref, reason=str(err)
                    )
            self.sensor_models[sensor.name] = slots

    def _stream(self, sensor: str, stream_id: int) -> SensorStream | None:
        key = (sensor, stream_id)
        stream = self.streams.get(key)
        if stream is None:
            cfg = next((s for s in self.config.sensors if s.name == sensor), None)
            if cfg is None:
                return None  # frames a sensor read just before a reload removed it
            name = sensor if stream_id == 0 else f"{sensor}.{stream_id}"
            stream = SensorStream(
                name, self.sensor_models.get(sensor, []), gap_policy=cfg.gap_policy
            )
            self.streams[key] = stream
        return stream

    def _start_sensor(self, name: str) -> None:
        """Open and start one enabled sensor's link (a failure is an event, not fatal)."""
        sensor = next((s for s in self.config.sensors if s.name == name), None)
        if sensor is None or not sensor.enabled:
            return
        try:
            link = open_link(sensor.link, sensor, self)
            if self._loop is not None:
                link.bind_loop(self._loop)  # serial ports are read on the loop: no thread hop
            link.start()
        except (EdgeAgentError, OSError, ValueError) as err:
            self._event("sensor.failed", "error", sensor=sensor.name, reason=str(err))
            return
        self.links[sensor.name] = link

    async def _stop_sensor(self, name: str) -> None:
        """Close one sensor's link and forget its streams (their partial windows go with them)."""
        link = self.links.pop(name, None)
        if link is not None:
            await asyncio.to_thread(link.close)
        for key in [k for k in self.streams if k[0] == name]:
            del self.streams[key]

    async def _reload_now(self) -> dict[str, Any]:
        """Re-read the config and apply it (on the pipeline task, between batches)."""
        if self._stop.is_set():
            return {"ok": False, "error": "the daemon is stopping; reload not applied"}
        source = str(self.config_path) if self.config_path else "embedded default"
        async with self._reload_lock:
            self.state = "reloading"
            self.service.reloading()
            try:
                outcome = await self._apply_reload(source)
            finally:
                self.state = "running"
            self.service.reloaded(outcome)
        return outcome

    async def _apply_reload(self, source: str) -> dict[str, Any]:
        from edge_agent.service.reload import plan_reload, resolve_models

        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as err:
            self._event("agent.reload_failed", "error", config=source, reason=str(err))
            return {"ok": False, "config": source, "error": str(err)}
        old = self.config
        loaded = {ref: slot.bundle for ref, slot in self.slots.items()}
        resolved = await asyncio.to_thread(resolve_models, new, shipped_models_dir())
        resolved = await asyncio.to_thread(
            self.ota.resolve_refs, resolved, [*new.models.dirs, shipped_models_dir()]
        )
        plan = plan_reload(old, new, loaded, resolved)
        # Keys built into the store and the socket keep their running values until a restart.
        new = new.model_copy(
            update={
                "device": old.device,
                "storage": old.storage,
                "mqtt": new.mqtt.model_copy(update={"topic_prefix": old.mqtt.topic_prefix}),
                "service": new.service.model_copy(
                    update={"control_socket": old.service.control_socket}
                ),
            }
        )
        restart = [*plan.removed, *plan.changed]
        await asyncio.gather(*(self._stop_sensor(name) for name in restart))
        previous_slots = dict(self.slots)
        for ref in plan.models_changed:
            self.slots.pop(ref, None)
        self.config = new
        for name in plan.removed:
            self.sensor_models.pop(name, None)
        await asyncio.to_thread(self._load_models, [*plan.added, *plan.changed])
        in_use = {ref for s in new.sensors if s.enabled for ref in s.models}
        for ref in [r for r in self.slots if r not in in_use]:
            del self.slots[ref]
        for slot in previous_slots.values():
            if all(slot is not kept for kept in self.slots.values()):
                slot.runtime.close()
        for name in [*plan.changed, *plan.added]:
            self._start_sensor(name)
        for name, change in [
            *((n, "removed") for n in plan.removed),
            *((n, "restarted") for n in plan.changed),
            *((n, "added") for n in plan.added),
        ]:
            self._event("sensor.reconfigured", sensor=name, change=change)
        if plan.logging_changed:
            logging.getLogger().setLevel(new.logging.level)
        if plan.sync_changed and self._tasks is not None and self._ticker_task is not None:
            self._ticker_task.cancel()
            await asyncio.wait({self._ticker_task})
            await self._close_intervals(final=False)
            self._ticker_task = self._tasks.create_task(self._ticker(), name="ticker")
        if plan.mqtt_changed and self._tasks is not None and self.uplink is not None:
            await self.uplink.stop(timeout=3.0)
            if self._uplink_task is not None:
                self._uplink_task.cancel()
                await asyncio.wait({self._uplink_task})
            self.uplink = self._new_uplink(new)
            self._uplink_task = self._tasks.create_task(self.uplink.run(), name="mqtt-uplink")
        summary = plan.summary()
        self._event("agent.reloaded", config=source, **summary)
        if plan.restart_required:
            log.warning(
                "reload: %s changed; restart the service to apply (running values kept)",
                ", ".join(plan.restart_required),
            )
        return {"ok": True, "config": source, **summary}

    async def run(self) -> None:
        """Start everything, serve until stopped, then shut down without losing data."""
        # A window closes on a link thread and is finished on the loop; CPython's default
        # 5 ms GIL switch interval would let a busy thread sit on that hand-off.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        limit_malloc_arenas()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        loop = self._loop
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._stop.set)
            with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await asyncio.to_thread(self.store.open)
        if self.store.schema_before == 0:
            log.info("store: created %s", self.config.storage.path)
        await asyncio.to_thread(self.ota.open)  # the persisted active versions, before loading
        await asyncio.to_thread(self._load_models)
        if self.config.faces.enabled:
            from edge_agent.faces.pipeline import start_face_pipeline

            # Through the OTA manager: a face model activated over the air is the one loaded.
            self.faces = await start_face_pipeline(
                self.config, self._event, find=self.ota.find_bundle
            )
        self.commands = CommandServer(self)
        if self.faces is not None:
            from edge_agent.faces.sync import gallery_handlers

            for name, handler in gallery_handlers(self.faces).items():
                self.commands.register(name, handler)
        self.uplink = self._new_uplink(self.config)
        self._event(
            "agent.started", version=__version__, sensors=[s.name for s in self.config.sensors]
        )
        for sensor in self.config.sensors:
            self._start_sensor(sensor.name)
        await self.service.start()
        self.ota.start(self.commands, self.service.control)
        self.state = "running"
        self.ready.set()
        self.service.ready()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                pipeline = tasks.create_task(self._pipeline(), name="pipeline")
                self._uplink_task = tasks.create_task(self.uplink.run(), name="mqtt-uplink")
                self._ticker_task = tasks.create_task(self._ticker(), name="ticker")
                silence = tasks.create_task(self._watch_silence(), name="silence-watch")
                face_watch = self.faces and tasks.create_task(self.faces.run(), name="faces")
                await self._stop.wait()
                await self.ota.close()  # no swap is queued after this
                async with self._reload_lock:  # a reload in progress finishes first
                    self.state = "stopping"
                self.service.stopping()
                log.info("stopping: closing sensors, flushing results")
                self._ticker_task.cancel()
                silence.cancel()
                if face_watch:
                    face_watch.cancel()
                await asyncio.gather(
                    *(asyncio.to_thread(link.close) for link in self.links.values())
                )
                await self._inbox.put(("stop",))
                await pipeline
                if self.faces is not None:
                    await self.faces.drain()  # decisions in flight become events first
                await self._close_intervals(final=True)
                await self._pack_results()
                samples: dict[str, int] = {}
                for (name, _), stream in self.streams.items():
                    samples[name] = samples.get(name, 0) + stream.stats.samples
                self._event(
                    "agent.stopped",
                    uptime_s=round(time.monotonic() - self.started_mono, 1),
                    samples=samples,
                )
                await self.store.call(outbox_depth())
                self._notify_uplink()
                await self.uplink.stop(timeout=3.0)
                self._uplink_task.cancel()
        finally:
            await self.service.close()
            await self.ota.close()
            for link in self.links.values():
                link.close()
            for slot in self.slots.values():
                slot.runtime.close()
            if self.faces is not None:
                await asyncio.to_thread(self.faces.close)
            self._infer.shutdown(wait=True)
            await asyncio.to_thread(self.store.close)

    # -- pipeline --------------------------------------------------------------------------------

    async def _pipeline(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            items = [await self._inbox.get()]
            while not self._inbox.empty() and len(items) < 4096:
                items.append(self._inbox.get_nowait())
            # Reads of one sensor that queued up while the loop was busy become one ingest
            # call: per-call numpy overhead is what bounds ingest when the loop falls behind.
            items = coalesce_reads(items)
            self.batches_started += 1
            emitted: list[Emitted] = []
            for item in items:
                kind = item[0]
                if kind == "frames":
                    _, sensor, frames, recv_mono, recv_wall = item
                    by_stream: dict[int, list[Frame]] = {}
                    for frame in frames:
                        by_stream.setdefault(frame.stream_id, []).append(frame)
                    for stream_id, group in by_stream.items():
                        stream = self._stream(sensor, stream_id)
                        if stream is None:
                            continue
                        face_path = self.faces  # takes the stream's face frames, if on
                        rest = face_path.take(stream.name, group, recv_mono) if face_path else group
                        emitted.extend(stream.ingest(rest, recv_mono, recv_wall))
                        while stream.notices:
                            what, severity, body = stream.notices.pop(0)
                            self._event(what, severity, sensor=stream.name, **body)
                elif kind == "state":
                    _, sensor, state, detail = item
                    severity = "info" if state == "connected" else "warning"
                    self._event(f"sensor.{state}", severity, sensor=sensor, detail=detail)
                elif kind == "reload":
                    # Windows cut so far run on the models they were cut for, then the swap.
                    await self._infer_and_store(loop, emitted)
                    emitted = []
                    outcome = await self._reload_now()
                    if item[1] is not None and not item[1].done():
                        item[1].set_result(outcome)
                elif kind == "swap":
                    # Windows cut so far run on the model they were cut for; the next ones
                    # on the new one: none dropped, none run twice.
                    await self._infer_and_store(loop, emitted)
                    emitted = []
                    _, name, bundle, runtime, done = item
                    if not done.done():
                        done.set_result(self._swap_now(name, bundle, runtime))
                elif kind == "stop":
                    stopping = True
            await self._infer_and_store(loop, emitted)
            self.batches_done += 1

    async def _infer_and_store(
        self, loop: asyncio.AbstractEventLoop, emitted: list[Emitted]
    ) -> None:
        if emitted:
            if self._infer_inline(emitted):
                batches = self._infer_all(emitted)
            else:
                batches = await loop.run_in_executor(self._infer, self._infer_all, emitted)
            self._account(batches)
            self.store.submit(insert_results(batches), on_commit=self._committed_threadsafe)

    def pipeline_progress(self) -> tuple[int, int]:
        """(batches handled, batches waiting or in hand): what the watchdog watches."""
        waiting = self._inbox.qsize() + self.batches_started - self.batches_done
        return self.batches_done, waiting

    def _infer_inline(self, emitted: list[Emitted]) -> bool:
        """Whether this round's models are quick enough to run on the loop itself.

        Handing a batch to the inference thread and back costs two thread switches, more
        than a small model takes on a few windows; so a round whose expected model time
        (from each runtime's measured cost per window) is under `INLINE_INFERENCE_S` runs
        inline, and anything bigger or not yet measured goes to the inference thread.
        """
        expected_ns = 0.0
        for e in emitted:
            stats = e.model.slot.runtime.stats
            if stats.calls < 8:
                return False
            per_call = stats.busy_ns / stats.calls
            expected_ns += per_call + len(e.cut.windows) * stats.busy_ns / max(1, stats.windows)
        return expected_ns < INLINE_INFERENCE_S * 1e9

    def _infer_all(self, emitted: list[Emitted]) -> list[ResultBatch]:
        """Run every model once over all windows cut for it in this round (inference thread)."""
        by_slot: dict[str, list[Emitted]] = {}
        for e in emitted:
            by_slot.setdefault(e.model.slot.ref, []).append(e)
        batches: list[ResultBatch] = []
        for parts in by_slot.values():
            slot = parts[0].model.slot
            windows = (
                parts[0].cut.windows
                if len(parts) == 1
                else np.concatenate([p.cut.windows for p in parts])
            )
            # Per-stream models (baselines) need to know which windows came from which stream.
            segments = [(p.stream.name, len(p.cut.windows)) for p in parts]
            batch = np.ascontiguousarray(windows, dtype=np.float32)
            watch = self.ota.watching.get(slot.bundle.path) if self.ota.watching else None
            if watch is None:
                out, producer = slot.runtime.infer(batch, segments), slot.bundle
            else:  # on probation: judged, the previous version answering what it fails on
                out, producer = watch.infer(slot.runtime, batch, segments)
            label_index = np.argmax(out, axis=1).astype(np.int64)
            confidence = out[np.arange(len(out)), label_index].astype(np.float32)
            manifest = producer.manifest
            at = 0
            for p in parts:
                n = len(p.cut.windows)
                batches.append(
                    ResultBatch(
                        sensor=p.stream.name,
                        model=manifest.name,
                        version=manifest.version,
                        labels=manifest.output.labels,
                        t_start=p.cut.t_start,
                        t_end=p.cut.t_end,
                        label_index=label_index[at : at + n],
                        confidence=confidence[at : at + n],
                        recv_mono=p.recv_mono,
                    )
                )
                at += n
        return batches

    def _account(self, batches: list[ResultBatch]) -> None:
        for b in batches:
            acc = self._summary(b.sensor, b.model, b.version, b.labels)
            acc.add(b.label_index, b.confidence)
            if self.on_result is not None:
                self.on_result(b)
            self.service.on_results(b)
            if self.config.logging.show_results:
                self._show(b)

    def _show(self, b: ResultBatch) -> None:
        now = time.monotonic()
        if now - self._shown_window > 1.0:
            self._shown_window, self._shown = now, 0
        for i in range(len(b)):
            self._shown += 1
            if self._shown > 20:
                return
            label = b.labels[int(b.label_index[i])] if b.labels else str(int(b.label_index[i]))
            stamp = time.strftime("%H:%M:%S", time.localtime(float(b.t_end[i])))
            log.info(
                "result %s %-10s %.2f  %s@%s  window end %s",
                b.sensor,
                label,
                float(b.confidence[i]),
                b.model,
                b.version,
                stamp,
            )

    def _summary(
        self, sensor: str, model: str, version: str, labels: list[str]
    ) -> SummaryAccumulator:
        key = (sensor, f"{model}@{version}")
        acc = self.summaries.get(key)
        if acc is None:
            acc = SummaryAccumulator(sensor, model, version, labels)
            self.summaries[key] = acc
        return acc

    def _committed_threadsafe(self, batches: list[ResultBatch]) -> None:
        now = time.monotonic()
        lat = [(b, (now - b.recv_mono) * 1000.0) for b in batches]
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._committed, lat)

    def _committed(self, lat: list[tuple[ResultBatch, float]]) -> None:
        for b, ms in lat:
            self.windows_committed += len(b)
            acc = self._summary(b.sensor, b.model, b.version, b.labels)
            acc.add_latency(ms, len(b))

    # -- periodic work ---------------------------------------------------------------------------

    async def _watch_silence(self, interval_s: float = 0.1) -> None:
        """Per-stream watchdog: `sensor.silent` / `sensor.recovered` (see pipeline.silence)."""
        while True:
            now = time.monotonic()
            wake = now + interval_s  # or earlier, when a stream's limit runs out sooner
            limits = {s.name: s.silence_limit_s for s in self.config.sensors}
            live = set()
            for (sensor, _), stream in self.streams.items():
                live.add(stream.name)
                watch = self.silence.get(stream.name)
                if watch is None:
                    watch = self.silence[stream.name] = SilenceWatch(limits.get(sensor, 2.0))
                watch.limit_s = limits.get(sensor, watch.limit_s)
                hello = stream.hello
                event = watch.check(
                    now,
                    stream.stats.last_data_mono,
                    stream.stats.samples,
                    hello.sample_rate_hz if hello is not None else None,
                )
                if event is not None:
                    kind, body = event
                    severity = "warning" if kind == "sensor.silent" else "info"
                    self._event(kind, severity, sensor=stream.name, **body)
                last = stream.stats.last_data_mono
                if last is not None and watch.silent_since is None:
                    rate = hello.sample_rate_hz if hello is not None else None
                    wake = min(wake, last + watch.effective_limit(rate) + 0.001)
            for name in set(self.silence) - live:  # streams dropped by a reload
                del self.silence[name]
            await asyncio.sleep(max(0.005, wake - time.monotonic()))

    async def _ticker(self) -> None:
        sync = self.config.sync
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_heartbeat = now
        next_results = now + sync.results_interval_s
        wall = time.time()
        self._interval_start = wall
        next_summary = now + (sync.summary_interval_s - wall % sync.summary_interval_s)
        next_retention = now
        while True:
            now = loop.time()
            if now >= next_heartbeat:
                next_heartbeat = now + sync.heartbeat_interval_s
                await self._heartbeat()
            if now >= next_results:
                next_results = now + sync.results_interval_s
                await self._pack_results()
            if now >= next_summary:
                next_summary += sync.summary_interval_s
                await self._close_intervals(final=False)
            if now >= next_retention:
                next_retention = now + RETENTION_INTERVAL_S
                await self._enforce_retention()
            await asyncio.sleep(
                max(
                    0.0,
                    min(next_heartbeat, next_results, next_summary, next_retention) - loop.time(),
                )
            )

    async def _enforce_retention(self) -> None:
        storage = self.config.storage
        report = await self.store.call(
            enforce_limits(storage.max_bytes, storage.max_age_days * 86400.0)
        )
        if report.dropped:
            log.warning(
                "store: over its limits (%.1f MB used), dropped %s",
                report.used_bytes_before / 1e6,
                report.dropped,
            )
            self.dropped = await self.store.call(dropped_counters())
            self._notify_uplink()

    async def _pack_results(self) -> None:
        if not self.config.sync.upload_results:
            await self.store.call(skip_results_upload())
            return
        while True:
            n = await self.store.call(
                pack_results(
                    self.config.sync.results_per_message,
                    compress=self.config.mqtt.compress_results,
                )
            )
            self.results_uploaded += n
            if n:
                self._notify_uplink()
            if n < self.config.sync.results_per_message:
                return

    async def _close_intervals(self, *, final: bool) -> None:
        start = self._interval_start
        end = time.time()
        self._interval_start = end
        bodies = []
        dropped = {
            (s.name, m.slot.ref): m.cursor.dropped
            for s in self.streams.values()
            for m in s.attached
        }
        for (sensor, ref), acc in self.summaries.items():
            body = acc.flush(start, end, dropped.get((sensor, ref), 0))
            if final:
                body["partial"] = True
            bodies.append(body)
        if bodies:
            await self.store.call(insert_summaries(bodies))
            self._notify_uplink()

    def sensor_health(self) -> dict[str, Any]:
        """Per-sensor state for heartbeats and `status`."""
        out: dict[str, Any] = {}
        now = time.monotonic()
        for cfg in self.config.sensors:
            link = self.links.get(cfg.name)
            streams = [s for (name, _), s in self.streams.items() if name == cfg.name]
            dec = link.decoder.stats if link else None
            last = max((s.stats.last_data_mono or 0.0 for s in streams), default=0.0)
            out[cfg.name] = {
                "link": cfg.link,
                "state": "disabled"
                if not cfg.enabled
                else ("connected" if link and link.connected else "disconnected"),
                "seconds_since_data": round(now - last, 3) if last else None,
                "samples": sum(s.stats.samples for s in streams),
                "frames_lost": sum(s.stats.frames_lost for s in streams),
                "gaps": sum(s.stats.gaps for s in streams),
                "crc_errors": dec.crc_errors if dec else 0,
                "resyncs": dec.resyncs if dec else 0,
                "windows_dropped": sum(m.cursor.dropped for s in streams for m in s.attached),
                "models": {
                    m.slot.ref: ("ok" if m.enabled else m.reason)
                    for s in streams
                    for m in s.attached
                },
            }
        return out

    async def _heartbeat(self) -> None:
        depth = await self.store.call(outbox_depth())
        times = os.times()
        uplink = self.uplink
        body = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "cpu_s": round(times.user + times.system, 3),
            "rss_mb": round(_rss_mb(), 1),
            "sensors": self.sensor_health(),
            "windows_committed": self.windows_committed,
            "outbox_depth": depth,
            "store": {
                "commits": self.store.stats.commits,
                "failed_commits": self.store.stats.failed_commits,
                "last_error": self.store.stats.last_error,
                "disk_full": self.store.disk_full,
                "dropped": self.dropped,
            },
            "mqtt": {
                "connected": bool(uplink and uplink.stats.connected),
                "published": uplink.stats.published if uplink else 0,
                "acked": uplink.stats.acked if uplink else 0,
                "last_error": uplink.stats.last_error if uplink else None,
            },
        }
        await self.store.call(enqueue("heartbeat", body))
        self._notify_uplink()


@contextlib.contextmanager
def serving_in_thread(
    daemon: D,
    *,
    until: Callable[[D], object],
    timeout: float = 30.0,
    runner: Callable[[Coroutine[Any, Any, None]], object] = asyncio.run,
) -> Iterator[D]:
    """Run `daemon` on a thread of this process (benchmarks embed it this way).

    Yields once `until(daemon)` is true; stops the daemon cleanly on exit. A failure of
    the daemon, or `until` not being met within `timeout`, raises RuntimeError.
    """
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            runner(daemon.run())
        except BaseException as err:  # reported to the caller
            failure.append(err)

    thread = threading.Thread(target=serve, name="daemon")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not failure and not until(daemon):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon was not ready within {timeout:g} s")
            time.sleep(0.002)
        if failure:
            raise RuntimeError(f"daemon failed: {failure[0]!r}") from failure[0]
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(60)
    if failure:
        raise RuntimeError(f"daemon failed: {failure[0]!r}") from failure[0]


def run_daemon(config: AgentConfig, *, config_path: Path | None = None) -> int:
    """Run until SIGINT/SIGTERM (SIGHUP re-reads `config_path`); returns the exit code."""
    daemon = Daemon(config, config_path=config_path)
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
