"""The health board: one snapshot of every component for heartbeats, `status` and `doctor`.

Components `provide` a callable returning their figures; the board calls them on the loop
whenever a snapshot is taken, so the figures are current and nobody keeps a copy. A
condition that makes the gateway less than healthy (a full disk, a reverted config) is
`degrade`d with a reason and `recover`ed when it clears.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.metrics import Counters

log = logging.getLogger(__name__)

Provider = Callable[[], Mapping[str, Any]]


class HealthBoard:
    """Health figures by component name, plus the reasons the gateway is degraded."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters
        self._lock = threading.Lock()
        self._providers: dict[str, Provider] = {}
        self._degraded: list[str] = []
        self._reported: set[str] = set()

    def provide(self, name: str, fn: Provider) -> Callable[[], None]:
        """Show `fn()` under `name` in every snapshot; returns the callable that removes it.

        Raises:
            ValueError: `name` is reserved ("state", "degraded").
        """
        if name in ("state", "degraded"):
            raise ValueError(f"{name!r} is reserved in the health snapshot")
        with self._lock:
            self._providers[name] = fn

        def remove() -> None:
            with self._lock:
                if self._providers.get(name) is fn:
                    del self._providers[name]

        return remove

    def degrade(self, reason: str) -> None:
        """Mark the gateway degraded for `reason` (idempotent)."""
        with self._lock:
            if reason not in self._degraded:
                self._degraded.append(reason)

    def recover(self, reason: str) -> None:
        """Clear `reason` (a reason not present is ignored)."""
        with self._lock:
            if reason in self._degraded:
                self._degraded.remove(reason)

    @property
    def degraded(self) -> list[str]:
        """The reasons the gateway is degraded now (empty when healthy)."""
        with self._lock:
            return list(self._degraded)

    def snapshot(self, *names: str) -> dict[str, Any]:
        """`{"state": "healthy"|"degraded", "degraded": [reasons], <name>: {...}, ...}`.

        With `names`, only those sections are computed (a cheaper read for a status line).
        """
        with self._lock:
            providers = [(n, fn) for n, fn in self._providers.items() if not names or n in names]
            degraded = list(self._degraded)
        out: dict[str, Any] = {
            "state": "degraded" if degraded else "healthy",
            "degraded": degraded,
        }
        for name, fn in providers:
            try:
                out[name] = dict(fn())
            except Exception as err:
                out[name] = {"error": f"{type(err).__name__}: {err}"}
                if self.counters is not None:
                    self.counters.inc("health_provider_failures", provider=name)
                if name not in self._reported:
                    self._reported.add(name)
                    log.error(
                        "health provider %s failed (logged once; repeats are counted): %s",
                        name,
                        err,
                        exc_info=err,
                    )
        return out
