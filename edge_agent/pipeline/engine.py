"""The pipeline engine: the inbox's messages in, windows through the models, results out.

One task on the event loop takes everything queued in the inbox, feeds each sensor's
frames to its streams, runs each model once over the windows cut in that round (inline or
on the inference thread, see `batching`), and hands the results to the store's writer.
Control messages (`Reload`, `Swap`, `Stop`) are handled between two rounds.

Failure domains inside the engine:

- a stream whose ingest raises is set aside (its frames are dropped and counted) and
  restarted after a capped, jittered backoff, with the layout its device announced; the
  other streams never notice;
- a model that raises or answers with a wrong shape or NaN/inf is disabled for the streams
  concerned (`model.failed`) until a reload or a new version (swap) re-enables it.

The engine never holds the daemon: it gets the ports it needs (emit, the store's submit,
the supervisor's failure report, a reload callable) from the composition root.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError
from edge_agent.events import Emit, Severity
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import Runtime
from edge_agent.metrics import Histogram, Inc, noop_inc
from edge_agent.pipeline.batching import Judge, ModelFailure, infer_round, run_inline
from edge_agent.pipeline.messages import (
    Frames,
    LinkState,
    Message,
    ModelSwap,
    Reload,
    Stop,
    Swap,
    coalesce_reads,
)
from edge_agent.pipeline.results import ResultBatch
from edge_agent.pipeline.stream import Emitted, ModelSlot, SensorStream
from edge_agent.pipeline.summary import SummaryAccumulator
from edge_agent.store.results import insert_results
from edge_agent.store.txn import Op
from edge_agent.supervise import Backoff
from firmware_bridge.protocol.v1 import Frame

log = logging.getLogger(__name__)

MAX_ROUND = 4096
"""Inbox messages taken into one round at most."""

Submit = Callable[[Op[list[ResultBatch]], Callable[[list[ResultBatch]], None]], Future[Any]]
FaceTake = Callable[[str, list[Frame], float], list[Frame]]


@dataclass
class PipelineObserver:
    """Optional hooks into the data path (benchmarks time the stages through these).

    Each is called on the event loop's thread, except `on_frames`, which is called where
    the frames arrive (a link thread or the loop). Keep them short: they sit on the path.
    """

    on_frames: Callable[[str, float], None] | None = None
    """(sensor, recv_mono) for every read handed to the pipeline."""
    on_inferred: Callable[[list[ResultBatch], float, float], None] | None = None
    """(batches, inference start, inference end), monotonic seconds, for every round."""
    on_committed: Callable[[list[ResultBatch], float], None] | None = None
    """(batches, commit time) after they were committed and counted."""


@dataclass
class _Suspended:
    """A stream set aside after its ingest raised, until `resume_mono`."""

    resume_mono: float
    attempt: int
    hello: Any
    dropped_frames: int = 0


@dataclass
class PipelineStats:
    """Progress figures of the engine."""

    windows_committed: int = 0
    batches_started: int = 0
    batches_done: int = 0
    frames_set_aside: int = 0
    model_failures: int = 0
    window_latency: Histogram = field(default_factory=Histogram)
    """Seconds from a window's last read to its commit (`edge_agent_window_latency_seconds`)."""


@dataclass
class Pipeline:
    """Streams, model slots and the inbox of one daemon.

    Args:
        emit: Where events go.
        submit: The store's `submit` (results are committed on the writer thread).
        failed: Reports an unexpected exception of a named component (the supervisor's).
        restarted: Reports that a named component runs again (the supervisor's).
        reload: Applies a config reload between two rounds; returns the outcome.
        gap_policy: The gap policy of a sensor by name (None: the sensor is not configured).
        probation: Versions on probation by bundle path (OTA's, read on every round).
        backoff: Delays before a failed stream is restarted.
    """

    emit: Emit
    submit: Submit
    failed: Callable[[str, BaseException], None]
    restarted: Callable[..., None]
    reload: Callable[[], Awaitable[dict[str, Any]]]
    gap_policy: Callable[[str], str | None]
    probation: Mapping[Path, Judge] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)
    observer: PipelineObserver | None = None
    on_result: Callable[[ResultBatch], None] | None = None
    on_results: Callable[[ResultBatch], None] | None = None
    """Every result batch (the control socket's `tail`)."""
    show_results: Callable[[], bool] = lambda: False
    inc: Inc = noop_inc
    faces: FaceTake | None = None
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    sensor_models: dict[str, list[ModelSlot]] = field(default_factory=dict)
    streams: dict[tuple[str, int], SensorStream] = field(default_factory=dict)
    summaries: dict[tuple[str, str], SummaryAccumulator] = field(default_factory=dict)
    stats: PipelineStats = field(default_factory=PipelineStats)

    def __post_init__(self) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._suspended: dict[str, _Suspended] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # stream → (attempt, last failure)
        self._shown = 0
        self._shown_window = 0.0

    # -- the thread → loop bridge --------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept messages from now on (called on the loop's thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def post(self, message: Message) -> None:
        """Queue a message: directly on the loop's thread, else through the loop."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.inbox.put_nowait(message)
        else:
            loop.call_soon_threadsafe(self.inbox.put_nowait, message)

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        """LinkSink: hand a read's frames to the pipeline (from the loop or a link thread)."""
        observer = self.observer
        if observer is not None and observer.on_frames is not None:
            observer.on_frames(sensor, recv_mono)
        self.post(Frames(sensor, frames, recv_mono, recv_wall))

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        """LinkSink: a sensor connected or was lost."""
        self.post(LinkState(sensor, state, detail))

    def on_rejected(self, sensor: str, reason: str) -> None:
        """RefusalSink: the sensor's decoder refused a new kind of input (counted there).

        Once per kind and link, so a device repeating the same bad line is only counted
        (`input_rejected` in the sensor's health).
        """
        self.emit("sensor.rejected", "warning", sensor=sensor, reason=reason)

    async def swap(self, name: str, bundle: Bundle, runtime: Runtime) -> ModelSwap:
        """Make a loaded model serve every bare reference to `name`, between two rounds.

        Windows cut before the swap are run on the model they were cut for, the following
        ones on the new model (the input contract must match; `ota.staging` checks it).
        A model disabled at run time is served again by the new version.

        Raises:
            EdgeAgentError: the pipeline is stopping.
        """
        if self.stopping:
            raise EdgeAgentError("the daemon is stopping; model not swapped")
        done: asyncio.Future[ModelSwap] = asyncio.get_running_loop().create_future()
        await self.inbox.put(Swap(name, bundle, runtime, done))
        return await done

    async def request_reload(self) -> dict[str, Any]:
        """Queue a reload between two rounds and await its outcome."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.inbox.put(Reload(done))
        return await done

    def progress(self) -> tuple[int, int]:
        """(batches handled, batches waiting or in hand): what the watchdog watches."""
        stats = self.stats
        waiting = self.inbox.qsize() + stats.batches_started - stats.batches_done
        return stats.batches_done, waiting

    def close(self) -> None:
        """Stop the inference thread (after the last round); safe to call twice."""
        self._executor.shutdown(wait=True)

    # -- streams -------------------------------------------------------------------------------

    def stream(self, sensor: str, stream_id: int) -> SensorStream | None:
        """The stream of (sensor, stream id), created on its first frames."""
        key = (sensor, stream_id)
        stream = self.streams.get(key)
        if stream is None:
            policy = self.gap_policy(sensor)
            if policy is None:
                return None  # frames a sensor read just before a reload removed it
            name = sensor if stream_id == 0 else f"{sensor}.{stream_id}"
            stream = SensorStream(name, self.sensor_models.get(sensor, []), gap_policy=policy)
            self.streams[key] = stream
        return stream

    def forget_sensor(self, sensor: str) -> None:
        """Drop a sensor's streams (their partial windows go with them)."""
        for key in [k for k in self.streams if k[0] == sensor]:
            name = self.streams.pop(key).name
            self._suspended.pop(name, None)
            self._failures.pop(name, None)

    def sensor_streams(self, sensor: str) -> list[SensorStream]:
        """The live streams of one sensor."""
        return [s for (name, _), s in self.streams.items() if name == sensor]

    def revive_models(self) -> None:
        """Serve every model disabled at run time again (a reload asked for it)."""
        for stream in self.streams.values():
            for model in stream.revive_models():
                self.emit("model.recovered", sensor=stream.name, model=model.slot.ref, by="reload")

    def _stream_failed(self, key: tuple[str, int], stream: SensorStream, err: Exception) -> None:
        """Set a stream aside after its ingest raised; it restarts after a backoff."""
        name = stream.name
        now = time.monotonic()
        attempt, last = self._failures.get(name, (0, 0.0))
        if now - last >= self.backoff.healthy_after_s:
            attempt = 0
        attempt += 1
        self._failures[name] = (attempt, now)
        self.failed(f"stream:{name}", err)
        del self.streams[key]
        self._suspended[name] = _Suspended(now + self.backoff.delay(attempt), attempt, stream.hello)

    def _resume(self, key: tuple[str, int], name: str, held: _Suspended) -> SensorStream | None:
        del self._suspended[name]
        stream = self.stream(*key)
        if stream is None:
            return None
        if held.hello is not None:
            stream.adopt_hello(held.hello)
        self.restarted(f"stream:{name}", frames_dropped=held.dropped_frames)
        return stream

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Handle the inbox until `Stop` (a supervised component: a bug restarts it)."""
        loop = asyncio.get_running_loop()
        done = False
        while not done:
            items = [await self.inbox.get()]
            while not self.inbox.empty() and len(items) < MAX_ROUND:
                items.append(self.inbox.get_nowait())
            # Reads of one sensor that queued up while the loop was busy become one ingest
            # call: per-call numpy overhead is what bounds ingest when the loop falls behind.
            items = coalesce_reads(items)
            self.stats.batches_started += 1
            try:
                done = await self._round(loop, items)
            except Exception as err:
                self._abandon(items, err)
                raise
            finally:
                self.stats.batches_done += 1

    def _abandon(self, items: list[Message], err: Exception) -> None:
        """A round failed: answer who waits on it, and keep a `Stop` for the restarted task."""
        for item in items:
            if isinstance(item, Reload | Swap) and item.done is not None and not item.done.done():
                item.done.set_exception(RuntimeError(f"the pipeline failed: {err}"))
            elif isinstance(item, Stop):
                self.inbox.put_nowait(item)

    async def _round(self, loop: asyncio.AbstractEventLoop, items: list[Message]) -> bool:
        emitted: list[Emitted] = []
        stop = False
        for item in items:
            if isinstance(item, Frames):
                self._ingest(item, emitted)
            elif isinstance(item, LinkState):
                severity: Severity = "info" if item.state == "connected" else "warning"
                self.emit(f"sensor.{item.state}", severity, sensor=item.sensor, detail=item.detail)
            elif isinstance(item, Reload):
                # Windows cut so far run on the models they were cut for, then the reload.
                await self._infer_and_store(loop, emitted)
                emitted = []
                try:
                    outcome = await self.reload()
                except BaseException as err:
                    if item.done is not None and not item.done.done():
                        item.done.set_exception(err)
                    raise
                if item.done is not None and not item.done.done():
                    item.done.set_result(outcome)
            elif isinstance(item, Swap):
                # Windows cut so far run on the model they were cut for; the next ones on
                # the new one: none dropped, none run twice.
                await self._infer_and_store(loop, emitted)
                emitted = []
                if not item.done.done():
                    item.done.set_result(self._swap_now(item.name, item.bundle, item.runtime))
            elif isinstance(item, Stop):
                stop = True
        await self._infer_and_store(loop, emitted)
        return stop

    def _ingest(self, item: Frames, emitted: list[Emitted]) -> None:
        sensor = item.sensor
        by_stream: dict[int, list[Frame]] = {}
        for frame in item.frames:
            by_stream.setdefault(frame.stream_id, []).append(frame)
        for stream_id, group in by_stream.items():
            key = (sensor, stream_id)
            stream = self.streams.get(key)
            if stream is None:
                if self._suspended:
                    name = sensor if stream_id == 0 else f"{sensor}.{stream_id}"
                    held = self._suspended.get(name)
                    if held is not None:
                        if time.monotonic() < held.resume_mono:
                            held.dropped_frames += len(group)
                            self.stats.frames_set_aside += len(group)
                            self.inc("frames_set_aside", len(group), sensor=name)
                            continue
                        stream = self._resume(key, name, held)
                if stream is None:
                    stream = self.stream(sensor, stream_id)
                if stream is None:
                    continue
            try:
                faces = self.faces  # takes the stream's face frames, if on
                rest = faces(stream.name, group, item.recv_mono) if faces else group
                emitted.extend(stream.ingest(rest, item.recv_mono, item.recv_wall))
            except Exception as err:  # this stream fails alone
                self._stream_failed(key, stream, err)
            notices = stream.notices
            while notices:
                what, severity, body = notices.pop(0)
                self.emit(what, severity, sensor=stream.name, **body)  # type: ignore[arg-type]

    def _swap_now(self, name: str, bundle: Bundle, runtime: Runtime) -> ModelSwap:
        """The swap itself, between two rounds: repoint the slots, revive failed models."""
        start = time.perf_counter_ns()
        replaced: list[tuple[Bundle, Runtime]] = []
        swapped: list[ModelSlot] = []
        for ref, slot in self.slots.items():
            if "@" not in ref and slot.bundle.manifest.name == name:
                if all(slot.runtime is not r for _, r in replaced):
                    replaced.append((slot.bundle, slot.runtime))
                slot.bundle, slot.runtime = bundle, runtime
                swapped.append(slot)
        pause = time.perf_counter_ns() - start
        for slot in swapped:
            for stream in self.streams.values():
                for model in stream.revive_models(slot):
                    self.emit(
                        "model.recovered",
                        sensor=stream.name,
                        model=model.slot.ref,
                        by=f"new version {bundle.ref}",
                    )
        return ModelSwap(pause, replaced)

    # -- inference and results -----------------------------------------------------------------

    async def _infer_and_store(
        self, loop: asyncio.AbstractEventLoop, emitted: list[Emitted]
    ) -> None:
        if not emitted:
            return
        if run_inline(emitted):
            done = infer_round(emitted, self.probation, time.monotonic)
        else:
            done = await loop.run_in_executor(
                self._executor, infer_round, emitted, self.probation, time.monotonic
            )
        if done.failures:
            self._models_failed(done.failures)
        batches = done.batches
        if not batches:
            return
        observer = self.observer
        if observer is not None and observer.on_inferred is not None:
            observer.on_inferred(batches, done.started_mono, done.ended_mono)
        self._account(batches)
        self.submit(insert_results(batches), self._committed_threadsafe)

    def _models_failed(self, failures: Iterable[ModelFailure]) -> None:
        for failure in failures:
            e = failure.emitted
            if e.model.failed is not None:
                continue
            e.stream.fail_model(e.model, failure.reason)
            self.stats.model_failures += 1
            self.inc("model_failures", model=e.model.slot.ref, sensor=e.stream.name)
            self.emit(
                "model.failed",
                "error",
                sensor=e.stream.name,
                model=e.model.slot.ref,
                reason=failure.reason,
                windows_lost=len(e.cut.windows),
            )

    def _account(self, batches: list[ResultBatch]) -> None:
        show = self.show_results()
        for b in batches:
            acc = self.summary(b.sensor, b.model, b.version, b.labels)
            acc.add(b.label_index, b.confidence)
            if self.on_result is not None:
                self.on_result(b)
            if self.on_results is not None:
                self.on_results(b)
            if show:
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
            logging.getLogger("edge_agent").info(
                "result %s %-10s %.2f  %s@%s  window end %s",
                b.sensor,
                label,
                float(b.confidence[i]),
                b.model,
                b.version,
                stamp,
            )

    def summary(
        self, sensor: str, model: str, version: str, labels: list[str]
    ) -> SummaryAccumulator:
        """The summary accumulator of (sensor, model@version), created on first use."""
        key = (sensor, f"{model}@{version}")
        acc = self.summaries.get(key)
        if acc is None:
            acc = SummaryAccumulator(sensor, model, version, labels)
            self.summaries[key] = acc
        return acc

    def _committed_threadsafe(self, batches: list[ResultBatch]) -> None:
        """On the writer thread, right after the commit: account on the loop."""
        now = time.monotonic()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._committed, batches, now)

    def _committed(self, batches: list[ResultBatch], committed_mono: float) -> None:
        for b in batches:
            self.stats.windows_committed += len(b)
            self.stats.window_latency.observe(committed_mono - b.recv_mono, len(b))
            self.inc("windows", len(b), sensor=b.sensor, model=b.model)
            acc = self.summary(b.sensor, b.model, b.version, b.labels)
            acc.add_latency((committed_mono - b.recv_mono) * 1000.0, len(b))
        observer = self.observer
        if observer is not None and observer.on_committed is not None:
            observer.on_committed(batches, committed_mono)

    def dropped_windows(self) -> dict[tuple[str, str], int]:
        """Windows dropped at gaps, by (stream, model ref), for the summaries."""
        return {
            (s.name, m.slot.ref): m.cursor.dropped
            for s in self.streams.values()
            for m in s.attached
        }
