"""A systemd watchdog that pings only while the pipeline makes progress.

A process that is alive but stuck (an inference call that never returns, a store
writer that cannot commit) is worse than one that crashed: systemd cannot see it.
So `WATCHDOG=1` is sent only when every part of the data path either has nothing
to do or has moved since the last look. Idle is healthy: a gateway whose sensors
are silent must not be restarted in a loop; silence is reported as a sensor fault
instead. Because the watchdog runs on the event loop, a blocked loop stops the
pings too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_agent.service.notify import Notifier

log = logging.getLogger(__name__)


@dataclass
class Probe:
    """One part of the data path the watchdog watches.

    Attributes:
        name: What it is, for the stall message ("pipeline", "store").
        read: Returns (progress counter, units of work waiting). The counter only
            has to change when work gets done.
        unit: What the waiting count counts, for the stall message.
    """

    name: str
    read: Callable[[], tuple[int, int]]
    unit: str = "items"
    _counter: int | None = field(default=None, init=False)
    _moved_at: float = field(default=0.0, init=False)
    _waiting: int = field(default=0, init=False)

    def stalled_for(self, now: float) -> float:
        """Seconds this part has had work waiting without progress (0 when healthy)."""
        counter, waiting = self.read()
        self._waiting = waiting
        if counter != self._counter or waiting == 0:
            self._counter = counter
            self._moved_at = now
        return now - self._moved_at

    def reset(self, now: float) -> None:
        """Count this moment as progress (work paused on purpose, e.g. by a reload)."""
        self._moved_at = now

    def describe(self, seconds: float) -> str:
        """Why it counts as stalled."""
        return (
            f"{self.name} stalled: {self._waiting} {self.unit} waiting, "
            f"no progress for {seconds:.1f} s"
        )


class PipelineWatchdog:
    """Checks the probes every `interval_s`; pings systemd while none is stalled.

    Args:
        notifier: Where `WATCHDOG=1` goes.
        probes: The parts of the data path to watch.
        stall_timeout_s: Work waiting this long without progress is a stall.
        watchdog_s: systemd's watchdog timeout (`WATCHDOG_USEC`); None: no pings,
            but stalls are still detected and reported.
        on_change: Called with the stall description when a stall begins, and with
            None when progress resumes.
        exempt: While it returns True (a reload in progress), nothing counts as stalled.
        clock: Monotonic time source.
    """

    def __init__(
        self,
        notifier: Notifier,
        probes: Sequence[Probe],
        *,
        stall_timeout_s: float,
        watchdog_s: float | None,
        on_change: Callable[[str | None], None] | None = None,
        exempt: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.probes = list(probes)
        self.stall_timeout_s = stall_timeout_s
        self.watchdog_s = watchdog_s
        # systemd advises pinging at half the timeout; a third leaves room for a busy loop.
        # Checking at least every second (and 4x per stall timeout) keeps stalls prompt.
        limits = [1.0, stall_timeout_s / 4]
        if watchdog_s:
            limits.append(watchdog_s / 3)
        self.interval_s = min(limits)
        self.on_change = on_change
        self.exempt = exempt
        self.clock = clock
        self.stall: str | None = None
        self.pings = 0
        self.checks = 0

    def check(self) -> str | None:
        """Look at every probe once; returns the stall description, or None when healthy."""
        now = self.clock()
        self.checks += 1
        worst: str | None = None
        for probe in self.probes:
            stalled = probe.stalled_for(now)
            if stalled >= self.stall_timeout_s and worst is None:
                worst = probe.describe(stalled)
        if self.exempt is not None and self.exempt():
            for probe in self.probes:
                probe.reset(now)
            worst = None
        previous, self.stall = self.stall, worst
        if (worst is None) != (previous is None):
            if worst is not None:
                log.error("watchdog: %s; pings to systemd stop until it moves again", worst)
            else:
                log.warning("watchdog: progress resumed after: %s", previous)
            if self.on_change is not None:
                self.on_change(worst)
        return worst

    def tick(self) -> bool:
        """One check, then a ping when healthy and the watchdog is on; True when pinged."""
        if self.check() is None and self.watchdog_s is not None:
            self.pings += 1
            self.notifier.watchdog()
            return True
        return False

    async def run(self) -> None:
        """Tick forever (until cancelled)."""
        while True:
            self.tick()
            await asyncio.sleep(self.interval_s)
