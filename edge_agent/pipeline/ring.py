"""Per-stream ring buffers and the window cursors that cut them into model inputs.

Everything here is vectorised: a chunk of samples is copied in with at most two
slice assignments, and all windows that became ready are gathered with one
fancy-index take. There is no per-sample Python loop on this path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
TimeArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


class RingBuffer:
    """Fixed-capacity buffer of the most recent samples of one stream, with their host times.

    Indices are absolute: sample `i` is the i-th sample ever written; it is
    still readable while `i >= total - capacity`.
    """

    def __init__(self, capacity: int, channels: int) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError("capacity and channels must be positive")
        self.capacity = capacity
        self.channels = channels
        self.data: FloatArray = np.zeros((capacity, channels), dtype=np.float32)
        self.times: TimeArray = np.zeros(capacity, dtype=np.float64)
        self.total = 0

    def extend(self, samples: FloatArray, times: TimeArray) -> None:
        """Append `samples` (n, channels) with their host `times` (n,)."""
        n = len(samples)
        if n == 0:
            return
        if n >= self.capacity:
            # Only the newest `capacity` samples can survive; write them in one go.
            skip = n - self.capacity
            self.total += skip
            samples = samples[skip:]
            times = times[skip:]
            n = self.capacity
        start = self.total % self.capacity
        first = min(n, self.capacity - start)
        self.data[start : start + first] = samples[:first]
        self.times[start : start + first] = times[:first]
        if first < n:
            self.data[: n - first] = samples[first:]
            self.times[: n - first] = times[first:]
        self.total += n

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self.total - self.capacity)

    def take(self, starts: IndexArray, length: int) -> tuple[FloatArray, TimeArray, TimeArray]:
        """Gather windows `[s, s + length)` for every start `s`.

        Returns:
            windows (k, length, channels), the host time of each window's first
            sample (k,) and of its last sample (k,).
        """
        offsets = np.arange(length, dtype=np.int64)
        index = (starts[:, None] + offsets[None, :]) % self.capacity
        windows = self.data[index]
        t_first = self.times[starts % self.capacity]
        t_last = self.times[(starts + length - 1) % self.capacity]
        return windows, t_first, t_last


@dataclass
class WindowCut:
    """Windows a cursor produced from one push."""

    windows: FloatArray
    t_start: TimeArray
    t_end: TimeArray
    end_index: IndexArray
    dropped: int = 0


@dataclass
class WindowCursor:
    """Cuts windows of `window` samples every `hop` samples from a ring buffer.

    With `drop_gaps`, a window spanning a sequence gap is dropped and counted,
    since its samples are not contiguous in time.
    """

    window: int
    hop: int
    drop_gaps: bool = True
    next_end: int = -1
    produced: int = 0
    dropped: int = 0
    _gaps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.window < 1 or self.hop < 1:
            raise ValueError("window and hop must be positive")
        if self.next_end < 0:
            self.next_end = self.window

    def mark_gap(self, at_index: int) -> None:
        """Samples before `at_index` and from it on are not contiguous."""
        if self.drop_gaps:
            self._gaps.append(at_index)

    def cut(self, ring: RingBuffer) -> WindowCut | None:
        """Return every window that became complete, or None when there is none."""
        if ring.total < self.next_end:
            return None
        ends = np.arange(self.next_end, ring.total + 1, self.hop, dtype=np.int64)
        self.next_end = int(ends[-1]) + self.hop
        starts = ends - self.window
        keep = starts >= ring.oldest
        for gap in self._gaps:
            keep &= ~((starts < gap) & (ends > gap))
        # A gap can only affect windows that end after it; forget gaps no window can span.
        self._gaps = [g for g in self._gaps if g > self.next_end - self.window]
        dropped = int(len(starts) - np.count_nonzero(keep))
        if dropped:
            starts = starts[keep]
            ends = ends[keep]
            self.dropped += dropped
        if len(starts) == 0:
            empty = np.empty((0, self.window, ring.channels), dtype=np.float32)
            none = np.empty(0, dtype=np.float64)
            return WindowCut(empty, none, none, ends, dropped)
        windows, t_start, t_end = ring.take(starts, self.window)
        self.produced += len(starts)
        return WindowCut(windows, t_start, t_end, ends, dropped)
