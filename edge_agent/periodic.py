"""The periodic tasks: heartbeat, results packing, summary intervals, retention, silence.

Each is its own component with a `run()` coroutine the composition root starts under the
supervisor, so one that fails (a bug, a store error) is logged, reported as
`component.failed` and restarted without touching the others or the data path. Each takes
only the ports it needs: the store's `call`, a config getter (intervals may change on a
reload), the uplink's `notify`, and the pipeline's figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from edge_agent.config import AgentConfig, SensorConfig
from edge_agent.events import Emit, Severity
from edge_agent.pipeline.silence import SilenceWatch
from edge_agent.pipeline.stream import SensorStream
from edge_agent.pipeline.summary import SummaryAccumulator
from edge_agent.store.db import enqueue
from edge_agent.store.delivered import delivered_rows
from edge_agent.store.results import insert_summaries, pack_results, skip_results_upload
from edge_agent.store.retention import dropped_counters, enforce_limits
from edge_agent.store.txn import Op

log = logging.getLogger(__name__)

T = TypeVar("T")
ConfigGetter = Callable[[], AgentConfig]

RETENTION_INTERVAL_S = 10.0
"""How often the disk caps are checked (they are also enforced whenever the disk is full)."""


class StoreCall(Protocol):
    """The store's `call` as a port: run an operation on the writer thread, await its result."""

    async def __call__(self, op: Op[T]) -> T: ...


class Heartbeat:
    """Queues a heartbeat (health figures) every `sync.heartbeat_interval_s`."""

    def __init__(
        self,
        config: ConfigGetter,
        call: StoreCall,
        body: Callable[[], Awaitable[dict[str, Any]]],
        notify: Callable[[], None],
    ) -> None:
        self.config = config
        self.call = call
        self.body = body
        self.notify = notify

    async def beat(self) -> None:
        """Queue one heartbeat now."""
        await self.call(enqueue("heartbeat", await self.body()))
        self.notify()

    async def run(self) -> None:
        """Beat at once, then every interval."""
        while True:
            await self.beat()
            await asyncio.sleep(self.config().sync.heartbeat_interval_s)


class ResultsPacker:
    """Moves committed window results into `results` outbox messages every interval."""

    def __init__(self, config: ConfigGetter, call: StoreCall, notify: Callable[[], None]) -> None:
        self.config = config
        self.call = call
        self.notify = notify
        self.uploaded = 0

    async def pack(self) -> None:
        """Pack everything committed so far (or mark it handled when upload is off)."""
        cfg = self.config()
        if not cfg.sync.upload_results:
            await self.call(skip_results_upload())
            return
        per_message = cfg.sync.results_per_message
        while True:
            n = await self.call(pack_results(per_message, compress=cfg.mqtt.compress_results))
            self.uploaded += n
            if n:
                self.notify()
            if n < per_message:
                return

    async def run(self) -> None:
        """Pack every `sync.results_interval_s`."""
        while True:
            await asyncio.sleep(self.config().sync.results_interval_s)
            await self.pack()


class SummaryCloser:
    """Closes the summary interval of every (sensor, model) on the wall clock's boundaries."""

    def __init__(
        self,
        config: ConfigGetter,
        call: StoreCall,
        notify: Callable[[], None],
        summaries: Mapping[tuple[str, str], SummaryAccumulator],
        dropped: Callable[[], Mapping[tuple[str, str], int]],
    ) -> None:
        self.config = config
        self.call = call
        self.notify = notify
        self.summaries = summaries
        self.dropped = dropped
        self.interval_start = time.time()

    async def close(self, *, final: bool) -> None:
        """Flush every accumulator as one summary each (`partial` when `final`)."""
        start, end = self.interval_start, time.time()
        self.interval_start = end
        dropped = self.dropped()
        bodies = []
        for (sensor, ref), acc in list(self.summaries.items()):
            body = acc.flush(start, end, dropped.get((sensor, ref), 0))
            if final:
                body["partial"] = True
            bodies.append(body)
        if bodies:
            await self.call(insert_summaries(bodies))
            self.notify()

    async def run(self) -> None:
        """Close at every multiple of `sync.summary_interval_s` (wall clock)."""
        while True:
            interval = self.config().sync.summary_interval_s
            await asyncio.sleep(interval - time.time() % interval)
            await self.close(final=False)


class Retention:
    """Enforces the store's size and age caps every `RETENTION_INTERVAL_S`."""

    def __init__(
        self,
        config: ConfigGetter,
        call: StoreCall,
        notify: Callable[[], None],
        interval_s: float = RETENTION_INTERVAL_S,
    ) -> None:
        self.config = config
        self.call = call
        self.notify = notify
        self.interval_s = interval_s
        self.dropped: dict[str, int] = {}
        self.delivered = 0
        """Delivered messages kept for resend requests, as of the last pass."""

    async def enforce(self) -> None:
        """Evict down to the caps now; logs what was dropped."""
        config = self.config()
        storage = config.storage
        report = await self.call(
            enforce_limits(
                storage.max_bytes,
                storage.max_age_days * 86400.0,
                keep_delivered_s=config.sync.keep_delivered_s,
            )
        )
        self.delivered = await self.call(delivered_rows())
        if report.dropped:
            log.warning(
                "store: over its limits (%.1f MB used), dropped %s",
                report.used_bytes_before / 1e6,
                report.dropped,
            )
            self.dropped = await self.call(dropped_counters())
            self.notify()

    async def run(self) -> None:
        """Enforce at once, then every interval."""
        while True:
            await self.enforce()
            await asyncio.sleep(self.interval_s)


class SilenceMonitor:
    """Per-stream watchdog: `sensor.silent` / `sensor.recovered` (see pipeline.silence)."""

    def __init__(
        self,
        sensors: Callable[[], list[SensorConfig]],
        streams: Mapping[tuple[str, int], SensorStream],
        emit: Emit,
        interval_s: float = 0.1,
    ) -> None:
        self.sensors = sensors
        self.streams = streams
        self.emit = emit
        self.interval_s = interval_s
        self.watches: dict[str, SilenceWatch] = {}  # by stream name

    def check(self, now: float) -> float:
        """Check every stream at `now`; returns when to check next (monotonic)."""
        wake = now + self.interval_s  # or earlier, when a stream's limit runs out sooner
        limits = {s.name: s.silence_limit_s for s in self.sensors()}
        live = set()
        for (sensor, _), stream in list(self.streams.items()):
            live.add(stream.name)
            watch = self.watches.get(stream.name)
            if watch is None:
                watch = self.watches[stream.name] = SilenceWatch(limits.get(sensor, 2.0))
            watch.limit_s = limits.get(sensor, watch.limit_s)
            hello = stream.hello
            rate = hello.sample_rate_hz if hello is not None else None
            event = watch.check(now, stream.stats.last_data_mono, stream.stats.samples, rate)
            if event is not None:
                kind, body = event
                severity: Severity = "warning" if kind == "sensor.silent" else "info"
                self.emit(kind, severity, sensor=stream.name, **body)
            last = stream.stats.last_data_mono
            if last is not None and watch.silent_since is None:
                wake = min(wake, last + watch.effective_limit(rate) + 0.001)
        for name in set(self.watches) - live:  # streams dropped by a reload
            del self.watches[name]
        return wake

    async def run(self) -> None:
        """Check until cancelled."""
        while True:
            wake = self.check(time.monotonic())
            await asyncio.sleep(max(0.005, wake - time.monotonic()))
