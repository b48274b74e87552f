"""Ring buffer and window cursor: contiguity, wrap-around, gaps."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.pipeline.clock import DeviceClock
from edge_agent.pipeline.ring import RingBuffer, WindowCursor


def _push(ring: RingBuffer, start: int, n: int) -> None:
    values = np.arange(start, start + n, dtype=np.float32)
    ring.extend(np.stack([values, -values], axis=1), values.astype(np.float64))


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 300), min_size=1, max_size=40),
    window=st.integers(1, 64),
    hop=st.integers(1, 64),
)
def test_windows_are_exact_slices_of_the_stream(chunks: list[int], window: int, hop: int) -> None:
    ring = RingBuffer(capacity=512, channels=2)
    cursor = WindowCursor(window, hop)
    seen: list[int] = []
    total = 0
    for n in chunks:
        _push(ring, total, n)
        total += n
        cut = cursor.cut(ring)
        if cut is None:
            continue
        for w, t0, t1 in zip(cut.windows, cut.t_start, cut.t_end, strict=True):
            start = int(w[0, 0])
            assert np.array_equal(w[:, 0], np.arange(start, start + window, dtype=np.float32))
            assert np.array_equal(w[:, 1], -w[:, 0])
            assert t0 == start
            assert t1 == start + window - 1
            seen.append(start)
    # Every window that fits is produced exactly once, in order, unless overwritten before cut.
    expected = list(range(0, total - window + 1, hop))
    assert seen == [s for s in expected if s in set(seen)]
    assert len(seen) + cursor.dropped == len(expected)


def test_window_spanning_a_gap_is_dropped_and_counted() -> None:
    ring = RingBuffer(64, 2)
    cursor = WindowCursor(10, 5)
    _push(ring, 0, 20)
    cursor.cut(ring)
    cursor.mark_gap(ring.total)  # samples 20.. are not contiguous with 19
    _push(ring, 100, 20)
    cut = cursor.cut(ring)
    assert cut is not None
    starts = [int(w[0, 0]) for w in cut.windows]
    assert starts == [100, 105, 110]  # the window at ring index 15 straddled the gap
    assert cut.dropped == 1
    assert cursor.dropped == 1


def test_oversized_chunk_keeps_newest_samples() -> None:
    ring = RingBuffer(8, 2)
    _push(ring, 0, 30)
    assert ring.total == 30
    assert ring.oldest == 22
    windows, _, _ = ring.take(np.array([22], dtype=np.int64), 8)
    assert windows[0, :, 0].tolist() == list(range(22, 30))


def test_device_clock_unwraps_u32_microseconds() -> None:
    clock = DeviceClock()
    values = [0xFFFF_FF00, 0xFFFF_FFF0, 0x10, 0x2000]
    unwrapped = [clock.unwrap(v) for v in values]
    assert unwrapped == [0xFFFF_FF00, 0xFFFF_FFF0, (1 << 32) + 0x10, (1 << 32) + 0x2000]


def test_device_clock_tracks_minimum_delay_and_resets_on_jump() -> None:
    clock = DeviceClock()
    assert clock.observe(10.0, 110.02) == 110.02 - 10.0
    assert abs(clock.observe(11.0, 111.005) - 100.005) < 1e-9  # a faster arrival tightens it
    clock.observe(12.0, 112.5)  # a slow arrival only creeps
    assert clock.offset_s is not None
    assert clock.offset_s < 100.01
    clock.observe(0.0, 200.0)  # device rebooted: re-anchor
    assert clock.offset_s == 200.0
    assert clock.resets == 1
