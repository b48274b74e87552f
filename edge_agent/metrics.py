"""Counters: how often something happened, by name and labels.

Components receive `inc` as a port (never the registry); the event bus counts events by
kind into the same registry. `snapshot()` is what `status` and the heartbeat show (a later
exporter serves the same figures to Prometheus).
"""

from __future__ import annotations

import threading
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

    def snapshot(self) -> dict[str, int]:
        """Every counter, keyed Prometheus-style: `name` or `name{label="value",...}`."""
        with self._lock:
            items = list(self._values.items())
        return {_render(key): value for key, value in sorted(items)}


def noop_inc(name: str, n: int = 1, **labels: str) -> None:
    """An `Inc` port that counts nothing (components built without a registry)."""
