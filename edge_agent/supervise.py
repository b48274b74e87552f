"""Supervision: each component runs as its own failure domain and is restarted when it fails.

`Supervisor.run(name, start)` is the body of one named task in the daemon's TaskGroup. It
awaits `start()`; when that raises an unexpected exception the supervisor logs it once with
its traceback (repeats of the same error are only counted, as zeroconf's logger does),
publishes `component.failed` (component, error, restarts), waits a capped, jittered,
exponentially growing delay and starts the component again (`component.restarted`). A
component that returns, or is cancelled, has stopped and is not restarted. The delays come
from a `Backoff` the composition root passes in, so tests shrink them instead of sleeping
less.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.events import Emit
from edge_agent.metrics import Counters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restart number n: `initial_s * factor**(n-1)`, capped, jittered."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    """Fraction of the delay drawn at random (± half of it), so restarts do not beat together."""
    healthy_after_s: float = 60.0
    """A run that lasted this long counts as healthy: the next failure waits `initial_s` again."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before restart `attempt` (1-based)."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        spread = base * self.jitter
        draw = (rng or random).random()
        return max(0.0, min(self.max_s, base - spread / 2 + spread * draw))


@dataclass
class ComponentHealth:
    """What the supervisor knows of one component (shown in `status` and heartbeats)."""

    state: str = "starting"
    """starting, running, restarting, stopped."""
    restarts: int = 0
    last_error: str | None = None
    last_failure_wall: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_failure": round(self.last_failure_wall, 3) if self.last_failure_wall else None,
        }


class RepeatLog:
    """Logs an error in full the first time, then only counts identical repeats."""

    def __init__(self, logger: logging.Logger, counters: Counters | None = None) -> None:
        self.logger = logger
        self.counters = counters
        self._seen: set[tuple[str, type[BaseException], str]] = set()
        self.repeats = 0

    def error(self, where: str, err: BaseException) -> bool:
        """Log `err` (with traceback) unless this error was logged before; True if logged."""
        key = (where, type(err), str(err))
        if key in self._seen:
            self.repeats += 1
            if self.counters is not None:
                self.counters.inc("repeated_errors", component=where)
            return False
        self._seen.add(key)
        self.logger.error(
            "%s failed (logged once; repeats are counted): %s: %s",
            where,
            type(err).__name__,
            err,
            exc_info=err,
        )
        return True


def describe(err: BaseException) -> str:
    """`Type: message`, the one-line form used in events."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Supervisor:
    """Runs components, restarting each one that fails; one per daemon."""

    def __init__(
        self,
        emit: Emit,
        *,
        backoff: Backoff | None = None,
        counters: Counters | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.emit = emit
        self.backoff = backoff or Backoff()
        self.counters = counters
        self.components: dict[str, ComponentHealth] = {}
        self._log = RepeatLog(log, counters)
        self._rng = rng or random.Random()

    async def run(self, name: str, start: Callable[[], Awaitable[None]]) -> None:
        """Run `start()` until it returns or is cancelled, restarting it after failures."""
        health = self.components.setdefault(name, ComponentHealth())
        attempt = 0
        while True:
            health.state = "running"
            began = time.monotonic()
            try:
                await start()
            except asyncio.CancelledError:
                health.state = "stopped"
                raise
            except Exception as err:
                if time.monotonic() - began >= self.backoff.healthy_after_s:
                    attempt = 0
                attempt += 1
                self.failed(name, err)
                await asyncio.sleep(self.backoff.delay(attempt, self._rng))
                self.restarted(name)
                continue
            health.state = "stopped"
            return

    def failed(self, name: str, err: BaseException) -> None:
        """Record, log (once) and publish a failure of `name` (also for non-restarted parts)."""
        health = self.components.setdefault(name, ComponentHealth())
        health.state = "restarting"
        health.restarts += 1
        health.last_error = describe(err)
        health.last_failure_wall = time.time()
        if self.counters is not None:
            self.counters.inc("component_failures", component=name)
        self._log.error(name, err)
        self.emit(
            "component.failed",
            "error",
            component=name,
            error=health.last_error,
            restarts=health.restarts,
        )

    def restarted(self, name: str, **body: Any) -> None:
        """`name` runs again after a failure: `component.restarted` (also for non-task parts)."""
        health = self.components.setdefault(name, ComponentHealth())
        health.state = "running"
        self.emit("component.restarted", component=name, restarts=health.restarts, **body)

    def health(self) -> dict[str, Any]:
        """Every component's state, restarts and last error."""
        return {name: h.as_dict() for name, h in self.components.items()}
