"""Counters: how often something happened, by name and labels.

Components receive `inc` as a port (never the registry); the event bus counts events by
kind into the same registry. `snapshot()` is what `status` and the heartbeat show (a later
exporter serves the same figures to Prometheus).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Protocol

Key = tuple[str, tuple[tuple[str, str], ...]]


class Inc(Protocol):
    """The port handed to components: count `n` more of `name` (with optional labels)."""

    def __call__(self, name: str, n: int = 1, **labels: str) -> None: ...


def _render(key: Key) -> str:
    name, labels = key
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


class Counters:
    """A thread-safe registry of monotonically increasing counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Key, int] = {}

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        """Add `n` to the counter `name` with `labels` (created at 0 on first use)."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n

    def get(self, name: str, **labels: str) -> int:
        """The current value of one counter (0 if it never counted)."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            return self._values.get(key, 0)

    def total(self, name: str) -> int:
        """The sum of `name` over every label set."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def items(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter as (name, labels, value), sorted (what the exporter serves)."""
        with self._lock:
            items = sorted(self._values.items())
        return [(name, dict(labels), value) for (name, labels), value in items]

    def snapshot(self) -> dict[str, int]:
        """Every counter, keyed Prometheus-style: `name` or `name{label="value",...}`."""
        with self._lock:
            items = list(self._values.items())
        return {_render(key): value for key, value in sorted(items)}


def noop_inc(name: str, n: int = 1, **labels: str) -> None:
    """An `Inc` port that counts nothing (components built without a registry)."""


SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (s) of the duration histograms: sub-millisecond inference up to stalls."""


class Histogram:
    """Counts of observed values by upper bound, plus their sum: what a Prometheus histogram needs.

    Observing is a bisect and two additions (no lock: a lost update between two threads
    would only blur a figure, and each histogram has one writer), so it can sit on the
    data path. The exporter reads `snapshot()` when scraped.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Count `n` observations of `value` (NaN and negative values count as 0)."""
        if not value > 0.0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count)], sum, count); the last bound is +Inf."""
        counts = list(self.counts)
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, self.sum, running
