"""Batching on the way to the models: joined reads and big batches lose no window.

Real protocol-v1 frames from the emulator's encoder, the real decoder, the shipped model.
"""

from __future__ import annotations

import time

import numpy as np

from edge_agent.inference.bundle import find_bundle, shipped_models_dir
from edge_agent.inference.runtime import open_runtime
from edge_agent.pipeline.messages import Frames, LinkState, Stop, coalesce_reads
from edge_agent.pipeline.stream import ModelSlot, SensorStream
from firmware_bridge.emulator import SyntheticMotion, encode_stream
from firmware_bridge.protocol.v1 import Decoder, Frame


def _frames(samples: int, batch: int = 32) -> list[Frame]:
    data = encode_stream(SyntheticMotion(100.0, seed=1), samples, batch, device_id="t")
    return Decoder().feed(data)


def _slot() -> ModelSlot:
    bundle = find_bundle("imu-activity", [shipped_models_dir()])
    return ModelSlot(bundle, open_runtime(bundle))


def _windows(stream: SensorStream, reads: list[list[Frame]]) -> np.ndarray:
    cut = []
    for frames in reads:
        for e in stream.ingest(frames, 0.0, time.time()):
            cut.append(e.cut.windows)
    return np.concatenate(cut)


def test_one_huge_read_gives_the_same_windows_as_small_reads() -> None:
    """A read far bigger than the ring buffer (reads that queued up) still cuts every window."""
    frames = _frames(40_000)  # 4000 decimated samples: several times the ring's capacity
    slot = _slot()
    small = _windows(
        SensorStream("a", [slot]), [frames[i : i + 10] for i in range(0, len(frames), 10)]
    )
    huge = _windows(SensorStream("b", [slot]), [frames])
    assert len(huge) == len(small) == (4000 - 20) // 10 + 1
    np.testing.assert_array_equal(huge, small)


def test_coalesce_reads_joins_per_sensor_and_keeps_other_items_in_place() -> None:
    f = _frames(3200)
    a1, a2, a3, b1 = f[1:3], f[3:5], f[5:7], f[7:9]
    items = [
        Frames("a", a1, 1.0, 101.0),
        Frames("b", b1, 2.0, 102.0),
        Frames("a", a2, 3.0, 103.0),
        LinkState("a", "lost", "unplugged"),
        Frames("a", a3, 4.0, 104.0),
        Stop(),
    ]
    out = coalesce_reads(items)
    assert out == [
        # The earliest read's monotonic time (latency never flatters), the newest wall time.
        Frames("a", [*a1, *a2], 1.0, 103.0),
        Frames("b", b1, 2.0, 102.0),
        LinkState("a", "lost", "unplugged"),
        Frames("a", a3, 4.0, 104.0),
        Stop(),
    ]
    assert coalesce_reads(items[:1]) == items[:1]
