"""What the pipeline's inbox carries: typed messages, handled in order by the engine.

Link threads post `Frames` and `LinkState`; the reload path posts `Reload`, OTA posts
`Swap`, shutdown posts `Stop`. Control messages are handled between two inference rounds:
windows cut before one run on the models they were cut for, so a reload or a swap drops
no window and runs none twice.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import Runtime
from firmware_bridge.protocol.v1 import Frame


@dataclass(slots=True)
class Frames:
    """The frames of one read of one sensor."""

    sensor: str
    frames: list[Frame]
    recv_mono: float
    recv_wall: float


@dataclass(frozen=True, slots=True)
class LinkState:
    """A sensor's link connected or was lost."""

    sensor: str
    state: str
    detail: str


@dataclass(frozen=True, slots=True)
class ModelSwap:
    """What a swap did: how long the pipeline waited, what it replaced."""

    pause_ns: int
    replaced: list[tuple[Bundle, Runtime]]
    """(bundle, runtime) that served before, one per distinct runtime replaced."""


@dataclass(frozen=True, slots=True)
class Reload:
    """Re-read the config between two rounds; `done` (if any) gets the outcome."""

    done: asyncio.Future[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Swap:
    """Make `bundle`/`runtime` serve every bare reference to model `name`."""

    name: str
    bundle: Bundle
    runtime: Runtime
    done: asyncio.Future[ModelSwap]


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish the round in hand and end the pipeline task."""


Message = Frames | LinkState | Reload | Swap | Stop


def coalesce_reads(items: list[Message]) -> list[Message]:
    """Join the queued reads of each sensor into one `Frames` per sensor.

    Only reads between two other messages (a state change, a reload, stop) are joined, so
    those keep their place relative to the data. A joined message carries the first read's
    monotonic time (window latency is then measured from the earliest read: never
    flattering) and the last read's wall time (the newest sample arrived with it, which is
    what the device clock needs).
    """
    if len(items) < 2:
        return items
    out: list[Message] = []
    pending: dict[str, tuple[list[list[Frame]], float, list[float]]] = {}

    def flush() -> None:
        for sensor, (parts, recv_mono, wall) in pending.items():
            frames = parts[0] if len(parts) == 1 else list(itertools.chain.from_iterable(parts))
            out.append(Frames(sensor, frames, recv_mono, wall[0]))
        pending.clear()

    for item in items:
        if not isinstance(item, Frames):
            flush()
            out.append(item)
            continue
        joined = pending.get(item.sensor)
        if joined is None:
            pending[item.sensor] = ([item.frames], item.recv_mono, [item.recv_wall])
        else:
            joined[0].append(item.frames)
            joined[2][0] = item.recv_wall
    flush()
    return out
