"""The one owner of the SQLite connection.

All writes (and the few reads the daemon needs) are operations queued to a
single writer thread. The writer drains everything queued, runs it inside one
transaction and commits, so batches grow by themselves under load while an
idle store commits a lone window result within a fraction of a millisecond.
A failed commit (disk full, I/O error) keeps the operations queued and retries:
nothing that was handed to the store is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge_agent.errors import StoreError
from edge_agent.store.retention import enforce_limits, used_bytes
from edge_agent.store.schema import migrate
from edge_agent.store.txn import PRIORITY, Op, Txn, dumps

__all__ = [
    "MAX_BATCH",
    "PRIORITY",
    "Op",
    "OutboxRow",
    "Store",
    "StoreStats",
    "Txn",
    "delete_outbox",
    "dumps",
    "enqueue",
    "fetch_outbox",
    "outbox_depth",
    "record_event",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Most operations in one transaction; halved while the disk is full.
MAX_BATCH = 4096


@dataclass
class OutboxRow:
    """One message waiting for its PUBACK."""

    id: int
    topic: str
    kind: str
    seq: int
    payload: bytes
    retain: bool
    encoding: str | None = None


@dataclass
class _Item(Generic[T]):
    op: Op[T]
    future: Future[T]
    on_commit: Callable[[T], None] | None = None


@dataclass
class StoreStats:
    """Counters of the writer, read by health reports."""

    commits: int = 0
    ops: int = 0
    failed_commits: int = 0
    failed_ops: int = 0
    last_error: str | None = None
    commit_seconds: list[float] = field(default_factory=list)


class Store:
    """SQLite store owned by one writer thread.

    Use `submit` from any thread (returns a concurrent future) or `call` from the
    event loop. `close()` drains what is queued, commits and closes; it is safe to
    call twice.
    """

    def __init__(
        self,
        path: Path,
        *,
        device_id: str,
        topic_root: str,
        synchronous: str = "NORMAL",
        commit_interval_ms: float = 0.0,
        retry_delay_s: float = 1.0,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        self.path = path
        self.device_id = device_id
        self.topic_root = topic_root
        self.synchronous = synchronous
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.retry_delay_s = retry_delay_s
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.disk_full = False
        self.seq_cache: dict[str, int] = {}
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[_Item[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._closed = False
        self.schema_before: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, timeout: float = 30.0) -> None:
        """Open (creating and migrating if needed) and start the writer thread.

        Raises:
            StoreError: the database cannot be opened or migrated.
        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise StoreError(f"{self.path}: timed out opening the database")
        if self._open_error is not None:
            self._thread.join()
            self._thread = None
            raise StoreError(f"{self.path}: {self._open_error}") from self._open_error

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then close the connection."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def __del__(self) -> None:
        if not self._closed and self._thread is not None:
            warnings.warn(f"Store({self.path}) was never closed", ResourceWarning, stacklevel=1)

    # -- submitting work -------------------------------------------------------------------

    def submit(self, op: Op[T], on_commit: Callable[[T], None] | None = None) -> Future[T]:
        """Queue an operation; its future resolves after the transaction committed.

        `on_commit` runs on the writer thread right after the commit, with the
        operation's result (keep it short).
        """
        future: Future[T] = Future()
        if self._closed:
            future.set_exception(StoreError(f"{self.path}: store is closed"))
            return future
        self._queue.put(_Item(op, future, on_commit))
        return future

    async def call(self, op: Op[T]) -> T:
        """Run `op` on the writer thread and await its committed result."""
        return await asyncio.wrap_future(self.submit(op))

    def pending(self) -> int:
        """Operations queued and not yet committed."""
        return self._queue.qsize()

    def writer_alive(self) -> bool:
        """Whether the writer thread runs (False before `open`, after `close`, or if it died)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- the writer thread -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new database; lets evictions give pages back to the disk.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        self.schema_before = migrate(conn)
        self.seq_cache = dict(conn.execute("SELECT topic, seq FROM topic_seq").fetchall())
        if self.max_bytes is not None:
            # A hard ceiling 25 % above the soft cap: the file can never outgrow it, and
            # reaching it is handled like a full disk (evict, then retry).
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {int(self.max_bytes * 1.25 // page_size)}")
        return conn

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as err:  # reported to open()'s caller
            self._open_error = err
            self._ready.set()
            return
        self._ready.set()
        backlog: list[_Item[Any]] = []
        stopping = False
        limit = MAX_BATCH
        failures = 0
        try:
            while True:
                if not backlog:
                    first = self._queue.get()
                    if first is None:
                        break
                    backlog.append(first)
                    if self.commit_interval_s:
                        time.sleep(self.commit_interval_s)
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    backlog.append(item)
                chunk = backlog[:limit]
                try:
                    committed = self._commit(conn, chunk)
                except Exception as err:  # a bug, not an I/O error: never kill the writer
                    log.exception("store: unexpected error; failing %d operations", len(chunk))
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    for item in chunk:
                        if not item.future.done():
                            item.future.set_exception(err)
                    committed = True
                if committed:
                    backlog = backlog[len(chunk) :]
                    limit = min(MAX_BATCH, limit * 2)
                    failures = 0
                else:
                    failures += 1
                    if stopping and failures >= 5:
                        log.error(
                            "store: giving up on %d queued operations at shutdown: %s",
                            len(backlog),
                            self.stats.last_error,
                        )
                        break
                    if self.disk_full:
                        # A transaction too big for what is left: retry smaller, after evicting.
                        limit = max(1, limit // 2)
                        self._emergency_evict(conn)
                    time.sleep(self.retry_delay_s)
                if stopping and not backlog:
                    break
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()

    def _commit(self, conn: sqlite3.Connection, items: list[_Item[Any]]) -> bool:
        """Run `items` in one transaction. Returns False when the commit failed and must retry."""
        started = time.perf_counter()
        txn = Txn(self, conn)
        results: list[tuple[_Item[Any], Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            self._note_failure(err)
            return False
        for item in items:
            # A caller that gave up (a cancelled await) cancels its future; once marked
            # running it can no longer be cancelled, so set_result below cannot fail.
            future = item.future
            if future.done() or (
                not future.running() and not future.set_running_or_notify_cancel()
            ):
                continue
            conn.execute("SAVEPOINT op")
            try:
                results.append((item, item.op(txn)))
                conn.execute("RELEASE op")
            except sqlite3.OperationalError as err:
                # Disk full or I/O trouble: keep every operation, roll back, retry later.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._note_failure(err)
                return False
            except Exception as err:
                # A bad operation fails alone; the rest of the batch commits.
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                for kind in list(txn.pending_seq):
                    # Seqs it allocated were rolled back with it; reload from the table.
                    row = conn.execute(
                        "SELECT seq FROM topic_seq WHERE topic = ?", (kind,)
                    ).fetchone()
                    txn.pending_seq[kind] = int(row[0]) if row else 0
                self.stats.failed_ops += 1
                item.future.set_exception(err)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._note_failure(err)
            return False
        self.seq_cache.update(txn.pending_seq)
        self.stats.commits += 1
        self.stats.ops += len(results)
        if self.stats.last_error is not None:
            log.warning("store: writes succeed again after: %s", self.stats.last_error)
            self.stats.last_error = None
            self.disk_full = False
        elapsed = time.perf_counter() - started
        if len(self.stats.commit_seconds) < 10_000:
            self.stats.commit_seconds.append(elapsed)
        for item, value in results:
            if item.on_commit is not None:
                try:
                    item.on_commit(value)
                except Exception:
                    log.exception("store: on_commit hook failed")
            item.future.set_result(value)
        return True

    def _emergency_evict(self, conn: sqlite3.Connection) -> None:
        """The disk (or the hard cap) is full: evict down to 70 % of what is used now."""
        txn = Txn(self, conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
            target = int(used_bytes(txn) * 0.7 / 0.9)
            if self.max_bytes is not None:
                target = min(target, self.max_bytes)
            report = enforce_limits(target, self.max_age_s or float("inf"))(txn)
            conn.execute("COMMIT")
            self.seq_cache.update(txn.pending_seq)
            conn.execute("PRAGMA incremental_vacuum")
            log.warning("store: full; evicted %s", report.dropped or "nothing evictable")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("store: emergency eviction failed: %s", err)

    def _note_failure(self, err: sqlite3.Error) -> None:
        message = f"{type(err).__name__}: {err}"
        self.disk_full = "full" in message.lower()
        if self.stats.last_error != message:
            hint = ""
            if "full" in message.lower():
                hint = " (disk full: free space on the data partition; queued writes are kept)"
            log.error("store: commit failed, will retry: %s%s", message, hint)
        self.stats.last_error = message
        self.stats.failed_commits += 1


# -- operations used by the daemon -----------------------------------------------------------


def fetch_outbox(limit: int, exclude: set[int]) -> Op[list[OutboxRow]]:
    """Next rows to publish, by priority then age, skipping those already in flight."""

    def op(txn: Txn) -> list[OutboxRow]:
        rows = txn.conn.execute(
            "SELECT id, topic, kind, seq, payload, retain, encoding FROM outbox "
            "ORDER BY priority, id LIMIT ?",
            (limit + len(exclude),),
        ).fetchall()
        out = [
            OutboxRow(r[0], r[1], r[2], r[3], bytes(r[4]), bool(r[5]), r[6])
            for r in rows
            if r[0] not in exclude
        ]
        return out[:limit]

    return op


def delete_outbox(ids: list[int]) -> Op[int]:
    """Drop acknowledged rows."""

    def op(txn: Txn) -> int:
        txn.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    return op


def outbox_depth() -> Op[int]:
    """Rows waiting in the outbox."""

    def op(txn: Txn) -> int:
        return int(txn.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    return op


def enqueue(kind: str, body: dict[str, Any], *, retain: bool = False) -> Op[int]:
    """Put one message in the outbox."""

    def op(txn: Txn) -> int:
        return txn.enqueue(kind, body, retain=retain)

    return op


def record_event(
    kind: str, body: dict[str, Any], *, sensor: str | None = None, severity: str = "info"
) -> Op[int]:
    """Store an event and queue it for upload in the same transaction."""

    def op(txn: Txn) -> int:
        ts = time.time()
        txn.conn.execute(
            "INSERT INTO events(ts, kind, sensor, severity, body) VALUES (?, ?, ?, ?, ?)",
            (ts, kind, sensor, severity, json.dumps(body)),
        )
        payload = {"event": kind, "severity": severity, "sensor": sensor, "event_ts": ts, **body}
        return txn.enqueue("events", payload)

    return op
