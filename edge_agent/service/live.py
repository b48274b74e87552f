"""`watch` on the control socket: a live feed of signals, results, events and health.

What the technician's page (`edge-agent ui`) shows, a few times a second, over the same
socket and permissions as `status` and `tail`:

- `{"type": "signals", "sensor", "stream", "channels", "units", "rate_hz", "t", "v"}`: the
  samples each stream received since the last record, read from the stream's ring buffer
  (in physical units, at the finest rate a model reads them) and down-sampled by block
  means to at most `points` per second; the first record of a stream carries the last
  `history_s` seconds so a plot fills at once;
- `{"type": "result", ...}` and `{"type": "event", ...}`: as `tail` sends them;
- `{"type": "health", "status": {...}, "timing": {...}, "storage": {...}}`: what
  `edge-agent status` shows; per model its version, runtime, probation and mean time per
  inference call; the outbox's oldest message age and the store's disk; every `health_s`.

Nothing is added to the data path: the rings are read on the loop, between pipeline rounds,
only while someone watches. A client too slow to keep up loses result and event records
(reported as `{"type": "dropped"}`); signals are read fresh each tick, so they never queue.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.pipeline.stream import SensorStream
from edge_agent.service.control import TailFanout
from edge_agent.store.txn import Op, Txn

Streams = Callable[[], Mapping[tuple[str, int], SensorStream]]

MAX_SENSORS = 64
STORAGE_TIMEOUT_S = 0.5


def oldest_waiting() -> Op[float | None]:
    """When the oldest message still in the outbox was queued (wall time), or None."""

    def op(txn: Txn) -> float | None:
        row = txn.conn.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return float(row[0]) if row is not None else None

    return op


def _disk(db: Path) -> dict[str, int]:
    """Free and total bytes of the store's file system, and the database's own size."""
    try:
        usage = shutil.disk_usage(db.parent)
        size = sum(os.stat(f).st_size for f in (db, Path(f"{db}-wal")) if f.exists())
    except OSError:
        return {}
    return {"disk_free_bytes": usage.free, "disk_total_bytes": usage.total, "db_bytes": size}


async def storage_figures(
    call: Callable[[Op[float | None]], Awaitable[float | None]], db: Path
) -> dict[str, Any]:
    """The outbox's oldest message age and the disk the store lives on, for the page."""
    out: dict[str, Any] = {}
    try:
        oldest = await asyncio.wait_for(call(oldest_waiting()), STORAGE_TIMEOUT_S)
        out["outbox_oldest_age_s"] = round(time.time() - oldest, 1) if oldest else 0.0
    except Exception:  # a busy store must not hold up the page
        out["outbox_oldest_age_s"] = None
    out.update(_disk(db))
    return out


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """What one `watch` client asked for (checked for sense, see `parse_watch`)."""

    sensors: frozenset[str] | None = None
    rate_hz: float = 4.0
    points: int = 50
    history_s: float = 20.0
    health_s: float = 0.5
    results: bool = True
    events: bool = True


def _number(request: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number from {lo:g} to {hi:g}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{key!r} must be a number from {lo:g} to {hi:g}")
    return value


def parse_watch(request: Mapping[str, Any]) -> WatchOptions:
    """The options of a `watch` request.

    Raises:
        ValueError: an option of the wrong kind or out of its range (the message names it).
    """
    sensors = request.get("sensors")
    chosen: frozenset[str] | None = None
    if sensors is not None:
        if not isinstance(sensors, list) or len(sensors) > MAX_SENSORS:
            raise ValueError(f"'sensors' must be a list of at most {MAX_SENSORS} sensor names")
        if not all(isinstance(s, str) and 0 < len(s) <= 255 for s in sensors):
            raise ValueError("'sensors' must be a list of sensor names")
        chosen = frozenset(sensors)
    flags = {}
    for flag in ("results", "events"):
        value = request.get(flag, True)
        if not isinstance(value, bool):
            raise ValueError(f"{flag!r} must be true or false")
        flags[flag] = value
    return WatchOptions(
        sensors=chosen,
        rate_hz=_number(request, "rate_hz", 4.0, 0.2, 20.0),
        points=int(_number(request, "points", 50, 1, 1000)),
        history_s=_number(request, "history_s", 20.0, 0, 120.0),
        health_s=_number(request, "health_s", 0.5, 0.1, 60.0),
        **flags,
    )


def _downsample(
    values: np.ndarray[Any, Any], times: np.ndarray[Any, Any], most: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Block means of `values` (n, channels) and the last time of each block; ≤ `most` rows."""
    n = len(values)
    if n <= most:
        return values, times
    block = math.ceil(n / most)
    keep = (n // block) * block
    start = n - keep  # drop the oldest remainder: the newest samples always show
    means = values[start:].reshape(-1, block, values.shape[1]).mean(axis=1)
    return means, times[start + block - 1 :: block]


class LiveFeed:
    """Builds `watch` conversations from the pipeline's streams, `tail` and `status`.

    Args:
        streams: The pipeline's live streams by (sensor, stream id).
        status: Awaits what `edge-agent status` shows.
        tail: The fan-out that carries result and event records.
        probation: The model versions on probation, by bundle path (OTA's).
        storage: Awaits the outbox's oldest message age and the disk figures.
        clock: Monotonic time source.
    """

    def __init__(
        self,
        *,
        streams: Streams,
        status: Callable[[], Awaitable[dict[str, Any]]],
        tail: TailFanout,
        probation: Callable[[], Mapping[Path, object]] | None = None,
        storage: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.streams = streams
        self.probation = probation
        self.storage = storage
        self.status = status
        self.tail = tail
        self.clock = clock
        self.watchers = 0

    async def watch(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The records of one `watch` conversation: the reply first, then until cancelled."""
        try:
            options = parse_watch(request)
        except ValueError as err:
            yield {"ok": False, "error": f"bad request: {err}"}
            return
        q = self.tail.subscribe()
        self.watchers += 1
        sent: dict[tuple[str, int, int], int] = {}  # (sensor, stream, ring id) → next index
        next_health = 0.0
        period = 1.0 / options.rate_hz
        try:
            yield {
                "ok": True,
                "watch": {
                    "sensors": sorted(options.sensors) if options.sensors is not None else None,
                    "rate_hz": options.rate_hz,
                    "points": options.points,
                    "health_s": options.health_s,
                },
            }
            while True:
                started = self.clock()
                dropped = self.tail.take_dropped(q)
                if dropped:
                    yield {"type": "dropped", "count": dropped}
                while not q.empty():
                    record = q.get_nowait()
                    if self._wanted(record, options):
                        yield record
                for record in self._signals(options, sent, period):
                    yield record
                if started >= next_health:
                    next_health = started + options.health_s
                    yield {
                        "type": "health",
                        "ts": round(time.time(), 3),
                        "status": await self.status(),
                        "timing": self._timing(),
                        "storage": await self.storage() if self.storage is not None else {},
                    }
                await asyncio.sleep(max(0.0, period - (self.clock() - started)))
        finally:
            self.watchers -= 1
            self.tail.unsubscribe(q)

    def _timing(self) -> dict[str, dict[str, Any]]:
        """Per loaded model: version, runtime, probation and the mean time of an inference call."""
        out: dict[str, dict[str, Any]] = {}
        watching = self.probation() if self.probation is not None else {}
        for stream in list(self.streams().values()):
            for model in stream.attached:
                slot = model.slot
                if slot.ref in out:
                    continue
                stats = slot.runtime.stats
                manifest = slot.bundle.manifest
                out[slot.ref] = {
                    "version": manifest.version,
                    "runtime": manifest.runtime,
                    "calls": stats.calls,
                    "probation": slot.bundle.path in watching,
                    "ms_per_call": round(stats.busy_ns / stats.calls / 1e6, 3)
                    if stats.calls
                    else None,
                }
        return out

    @staticmethod
    def _wanted(record: Mapping[str, Any], options: WatchOptions) -> bool:
        kind = record.get("type")
        if kind == "result" and not options.results:
            return False
        if kind == "event" and not options.events:
            return False
        sensor = record.get("sensor")
        return options.sensors is None or sensor is None or sensor in options.sensors

    def _signals(
        self, options: WatchOptions, sent: dict[tuple[str, int, int], int], period: float
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for (name, stream_id), stream in list(self.streams().items()):
            if options.sensors is not None and name not in options.sensors:
                continue
            hello = stream.hello
            if hello is None or not stream.groups or hello.sample_rate_hz <= 0:
                continue
            group = min(stream.groups.values(), key=lambda g: g.factor)
            ring = group.ring
            rate = hello.sample_rate_hz / group.factor
            key = (name, stream_id, id(ring))
            first = key not in sent
            start = ring.total - int(options.history_s * rate) if first else sent[key]
            start = max(start, ring.oldest, 0)
            sent[key] = ring.total
            n = ring.total - start
            if n <= 0:
                continue
            index = np.arange(start, ring.total) % ring.capacity
            values, times = ring.data[index], ring.times[index]
            most = max(1, math.ceil(options.points * (options.history_s if first else period)))
            values, times = _downsample(values, times, most)
            finite = np.where(np.isfinite(values), values, 0.0)
            out.append(
                {
                    "type": "signals",
                    "sensor": name,
                    "stream": stream_id,
                    "rate_hz": round(rate, 3),
                    "channels": [c.name for c in hello.channels],
                    "units": [c.unit for c in hello.channels],
                    "t": np.round(times, 3).tolist(),
                    "v": np.round(finite.T.astype(np.float64), 4).tolist(),
                }
            )
        return out
