"""Whether the store's disk is full, and how that is told: once in the log, then counted.

A full disk is recognised by SQLite's result code (`SQLITE_FULL`, also returned when the
database reaches its hard page cap), never by the text of the message. The first failure
of an episode is logged, reported as a `store.disk_full` event and marks the health board
degraded ("disk full"); every further failure only adds to a counter. The episode ends
when a commit succeeds and the space reserve could be taken again: that is logged once,
reported as `store.disk_recovered` and clears the degraded reason.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Protocol

from edge_agent.events import Emit
from edge_agent.metrics import Inc, noop_inc
from edge_agent.store.reserve import SpaceReserve, free_bytes

log = logging.getLogger("edge_agent.store.db")

DISK_FULL = "disk full"
"""The health board's degraded reason while the store's disk is full."""


class Degrade(Protocol):
    """The health board as the store sees it (`HealthBoard` is one)."""

    def degrade(self, reason: str) -> None: ...

    def recover(self, reason: str) -> None: ...


def is_full(err: BaseException) -> bool:
    """Whether an SQLite error means the disk (or the database's page cap) is full."""
    code = getattr(err, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL


def _no_emit(kind: str, severity: str = "info", sensor: str | None = None, **body: object) -> None:
    """An `Emit` port that reports nothing (a store built without a bus)."""


class DiskSpace:
    """The full/not-full state of one store, its reserve, and its reports.

    Args:
        reserve: The space reserve next to the database.
        emit: Where `store.disk_full` / `store.disk_recovered` go.
        inc: Where the counters go (`store_disk_full`, `store_full_retries`).
        health: Marked degraded ("disk full") while full.
    """

    def __init__(
        self,
        reserve: SpaceReserve,
        *,
        emit: Emit | None = None,
        inc: Inc | None = None,
        health: Degrade | None = None,
    ) -> None:
        self.reserve = reserve
        self.emit: Emit = emit if emit is not None else _no_emit
        self.inc: Inc = inc if inc is not None else noop_inc
        self.health = health
        self.full = False
        self.since: float | None = None
        self.episodes = 0
        self.retries = 0

    def free(self) -> int | None:
        """Bytes free on the database's filesystem (None when unknown)."""
        try:
            return free_bytes(self.reserve.path.parent)
        except OSError:
            return None

    def enter(self, err: BaseException) -> None:
        """A write failed with `SQLITE_FULL`: start the episode (reported once) or count."""
        self.retries += 1
        self.inc("store_full_retries")
        if self.full:
            return
        self.full = True
        self.since = time.monotonic()
        self.episodes += 1
        self.inc("store_disk_full")
        free = self.free()
        log.error(
            "store: disk full (%s; %s bytes free): evicting in the documented order and "
            "retrying; queued writes are kept. Logged once; retries are counted.",
            err,
            "?" if free is None else free,
        )
        if self.health is not None:
            self.health.degrade(DISK_FULL)
        self.emit(
            "store.disk_full",
            "warning",
            path=str(self.reserve.path.parent),
            free_bytes=free,
            error=str(err),
        )

    def start(self) -> None:
        """At open: take the reserve; a disk without room for it starts the store degraded."""
        if not self.reserve.ensure():
            self.enter(sqlite3.OperationalError("no room for the space reserve"))

    def shortfall(self) -> int:
        """While full: take the reserve back if it fits (twice its size free); else the
        bytes to free so that at least its size stays free.

        Called before each write while full, so the store never fills the disk's last
        bytes without the reserve in place (it would then have nothing to lend eviction).
        """
        if not self.full or self.reserve.ensure():
            return 0
        return self.reserve.shortfall()

    def committed(self) -> None:
        """A commit succeeded: the episode ends once the reserve is back too."""
        if not self.full or not self.reserve.held:
            return
        seconds = round(time.monotonic() - (self.since or time.monotonic()), 3)
        self.full = False
        self.since = None
        log.warning(
            "store: disk space is back after %.1f s (%d failed writes retried)",
            seconds,
            self.retries,
        )
        if self.health is not None:
            self.health.recover(DISK_FULL)
        self.emit("store.disk_recovered", "info", seconds=seconds, retries=self.retries)
