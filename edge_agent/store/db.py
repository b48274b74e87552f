"""The one owner of the SQLite connection.

All writes (and the few reads the daemon needs) are operations queued to a
single writer thread. The writer drains everything queued, runs it inside one
transaction and commits, so batches grow by themselves under load while an
idle store commits a lone window result within a fraction of a millisecond.
A failed commit (disk full, I/O error) keeps the operations queued and retries:
nothing that was handed to the store is dropped.

A full disk (SQLite's `SQLITE_FULL`, also the database's own page cap) is handled without
needing the space it lacks: the space reserve next to the database is released, the
oldest data is evicted in small transactions in the documented order, the freed pages are
given back to the filesystem (incremental vacuum, then a `wal_checkpoint(TRUNCATE)`), and
the reserve is taken again once there is room (see `store.space`, docs/reliability.md).

Rows read back at open (sequence numbers, meta values) and by the uplink (outbox rows)
are checked for sense; a row that cannot be used is quarantined (`store.checks`), never
fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge_agent.errors import StoreError
from edge_agent.events import Emit
from edge_agent.metrics import Inc, noop_inc
from edge_agent.store.checks import outbox_problem, parse_count
from edge_agent.store.reserve import SpaceReserve
from edge_agent.store.retention import enforce_limits, used_bytes
from edge_agent.store.schema import migrate
from edge_agent.store.space import Degrade, DiskSpace, is_full
from edge_agent.store.txn import PRIORITY, Op, Quarantined, Txn, dumps

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

DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
"""Space held next to the database for eviction to borrow when the disk is full."""

# Emergency eviction: rows per delete at first (doubled while it works), and its target.
EVICT_FIRST_CHUNK = 64
EVICT_TO = 0.7  # of the used size when the disk filled
VACUUM_STEP_PAGES = 64  # pages given back to the filesystem per step while full
# SQLite's default automatic checkpoint: every 1000 pages of write-ahead log.
WAL_AUTOCHECKPOINT_PAGES = 1000

# Result codes after which a failed write is retried with every operation kept; any
# other SQLite error belongs to the operation that raised it, which fails alone.
TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _code(err: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (None when it carries none)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _transient(err: sqlite3.Error) -> bool:
    code = _code(err)
    return code is None or code in TRANSIENT


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
    quarantined: int = 0
    """Rows moved to the `quarantine` table since start."""
    evicted_when_full: int = 0
    """Rows and messages evicted because the disk was full, since start."""
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
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        emit: Emit | None = None,
        inc: Inc | None = None,
        health: Degrade | None = None,
    ) -> None:
        """Configure (nothing is opened before `open()`).

        Args:
            path: The database file.
            device_id: Put in every message's envelope.
            topic_root: Prefix of every outbox topic.
            synchronous: SQLite's `synchronous` (NORMAL or FULL).
            commit_interval_ms: Extra time to gather writes before a commit.
            retry_delay_s: Pause between attempts of a failed commit.
            max_bytes: The size cap (a hard page cap is set 25 % above it).
            max_age_s: The age cap used by emergency eviction.
            reserve_bytes: Size of the space reserve (`<path>.reserve`; 0: none).
            emit: Port for `store.quarantined`, `store.disk_full`, `store.disk_recovered`.
            inc: Port for the store's counters.
            health: Marked degraded ("disk full") while the disk is full.
        """
        self.path = path
        self.device_id = device_id
        self.topic_root = topic_root
        self.synchronous = synchronous
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.retry_delay_s = retry_delay_s
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.emit = emit
        self.inc: Inc = inc if inc is not None else noop_inc
        self.space = DiskSpace(
            SpaceReserve(path.with_name(path.name + ".reserve"), reserve_bytes),
            emit=emit,
            inc=inc,
            health=health,
        )
        self.seq_cache: dict[str, int] = {}
        self.stats = StoreStats()
        self._eviction_logged = 0
        # Set from the database at open (`_prepare`): page size, and how much one
        # transaction may add to the file before the rest waits for the next one.
        self._page_size = 4096
        self._growth_cap = WAL_AUTOCHECKPOINT_PAGES * self._page_size
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
        if self.path.is_dir():  # SQLite says only "unable to open database file"
            raise StoreError(
                f"{self.path}: a directory, not a database file; point storage.path at a file "
                f"in it (e.g. {self.path / 'edge-agent.db'})"
            )
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

    async def watch_writer(self, interval_s: float) -> None:
        """Raise StoreError once the writer thread is gone (checked every `interval_s`).

        Nothing can be persisted then; the composition root lets this end the process so
        the service manager restarts the agent.
        """
        while True:
            await asyncio.sleep(interval_s)
            if not self.writer_alive():
                raise StoreError(
                    f"{self.path}: the store's writer stopped; nothing can be persisted, "
                    "exiting so the service manager restarts the agent"
                )

    @property
    def disk_full(self) -> bool:
        """Whether the disk (or the page cap) is full: from the first failed write until
        writes succeed and the space reserve is back."""
        return self.space.full

    # -- the writer thread -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the database; on a full disk, once more with the space reserve released."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect_once()
        except sqlite3.Error as err:
            # On a full disk opening fails with SQLITE_FULL, or with an I/O error when the
            # shared-memory index of the log cannot be allocated.
            free = self.space.free()
            low = free is not None and free < max(self.space.reserve.size, 1 << 20)
            if not (is_full(err) or (low and _code(err) == sqlite3.SQLITE_IOERR)):
                raise
            self.space.enter(err)
            if not self.space.reserve.release():
                raise
        return self._connect_once()

    def _connect_once(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Only takes effect on a new database; lets evictions give pages back to the disk.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # A checkpoint copies the log into the database file, which may grow by as much
        # as the log holds. On a full disk it fails and the log keeps every page since; so
        # the log is checkpointed (and cut back) before it holds half the reserve: once
        # the reserve is released, the pending checkpoint always fits.
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = WAL_AUTOCHECKPOINT_PAGES
        if self.space.reserve.size:
            pages = max(16, min(pages, self.space.reserve.size // page_size // 2))
        conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
        conn.execute(f"PRAGMA journal_size_limit={pages * page_size}")
        # The same bound on what one transaction may add to the file: a checkpoint has to
        # grow the file by that much, so what the log holds must fit in the reserve even
        # when one big batch was committed (see `_growth`).
        self._growth_cap = pages * page_size
        self._page_size = page_size
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        self.schema_before = migrate(conn)
        self.seq_cache = self._load_seqs(conn)
        if self.max_bytes is not None:
            # A hard ceiling 25 % above the soft cap: the file can never outgrow it, and
            # reaching it is handled like a full disk (evict, then retry).
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {int(self.max_bytes * 1.25 // page_size)}")

    def _load_seqs(self, conn: sqlite3.Connection) -> dict[str, int]:
        """The last sequence number of each topic; unusable rows are quarantined and repaired.

        A repaired topic continues after the highest seq still in its outbox (or from 1):
        the consumer may see the sequence restart, which the quarantine event explains.
        """
        rows = conn.execute("SELECT rowid, topic, seq FROM topic_seq").fetchall()
        seqs: dict[str, int] = {}
        bad = []
        for rowid, topic, seq in rows:
            try:
                if not isinstance(topic, str) or not topic:
                    raise ValueError(f"topic {topic!r} is not a name")
                seqs[topic] = parse_count(seq)
            except ValueError as err:
                bad.append((rowid, topic, seq, str(err)))
        if bad:
            txn = Txn(self, conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for rowid, topic, seq, problem in bad:
                    reason = problem
                    conn.execute("DELETE FROM topic_seq WHERE rowid = ?", (rowid,))
                    if isinstance(topic, str) and topic:
                        row = conn.execute(
                            "SELECT max(seq) FROM outbox "
                            "WHERE kind = ? AND typeof(seq) = 'integer'",
                            (topic,),
                        ).fetchone()
                        fixed = max(0, int(row[0] or 0))
                        conn.execute(
                            "INSERT INTO topic_seq(topic, seq) VALUES (?, ?)", (topic, fixed)
                        )
                        seqs[topic] = fixed
                        reason += f"; continues after {fixed}"
                    txn.quarantine("topic_seq", topic, reason, (topic, seq))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._announce(txn.quarantined)
        return seqs

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as err:  # reported to open()'s caller
            self._open_error = err
            self._ready.set()
            return
        self.space.start()
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
                if self.disk_full:
                    need = self.space.shortfall()
                    if need:
                        # Writes work again but the reserve does not fit: free its room
                        # before writing more, or the next full disk has nothing to lend.
                        self._make_room(conn, free=need)
                        self.space.shortfall()
                chunk = backlog[:limit]
                try:
                    done = self._commit(conn, chunk) if self._log_fits(conn) else None
                except Exception as err:  # a bug, not an I/O error: never kill the writer
                    log.exception("store: unexpected error; failing %d operations", len(chunk))
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    for item in chunk:
                        if not item.future.done():
                            item.future.set_exception(err)
                    done = len(chunk)
                if done is not None:
                    backlog = backlog[done:]
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
                        # A transaction too big for what is left: retry smaller, after
                        # making room; at once if room was made.
                        limit = max(1, limit // 2)
                        if self._make_room(conn):
                            continue
                    time.sleep(self.retry_delay_s)
                if stopping and not backlog:
                    break
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()

    def _commit(self, conn: sqlite3.Connection, items: list[_Item[Any]]) -> int | None:
        """Run the first of `items` in one transaction.

        Returns how many were handled (committed or failed alone), from the front; the
        transaction ends early once it has grown the file by `_growth_cap` (the rest waits
        for the next one). None when the commit failed and must be retried.
        """
        started = time.perf_counter()
        txn = Txn(self, conn)
        results: list[tuple[_Item[Any], Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            self._note_failure(err)
            return None
        handled = 0
        for item in items:
            if handled and self._growth(conn) > self._growth_cap:
                break  # the checkpoint of this transaction must fit in the reserve
            handled += 1
            # A caller that gave up (a cancelled await) cancels its future; once marked
            # running it can no longer be cancelled, so set_result below cannot fail.
            future = item.future
            if future.done() or (
                not future.running() and not future.set_running_or_notify_cancel()
            ):
                continue
            conn.execute("SAVEPOINT op")
            quarantined = len(txn.quarantined)
            try:
                results.append((item, item.op(txn)))
                conn.execute("RELEASE op")
            except sqlite3.Error as err:
                if not _transient(err):
                    self._fail_op(conn, txn, item, err, quarantined)
                    continue
                # Disk full or I/O trouble: keep every operation, roll back, retry later.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._note_failure(err)
                return None
            except Exception as err:
                self._fail_op(conn, txn, item, err, quarantined)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._note_failure(err)
            return None
        self.seq_cache.update(txn.pending_seq)
        self.stats.commits += 1
        self.stats.ops += len(results)
        if self.stats.last_error is not None:
            if not self.space.full:  # the end of a full disk is reported by `space`
                log.warning("store: writes succeed again after: %s", self.stats.last_error)
            self.stats.last_error = None
        self.space.committed()
        self._announce(txn.quarantined)
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
        return handled

    def _growth(self, conn: sqlite3.Connection) -> int:
        """Bytes the next complete checkpoint has to add to the database file."""
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return 0
        return max(0, pages * self._page_size - size)

    def _log_fits(self, conn: sqlite3.Connection) -> bool:
        """Whether the log's pending checkpoint still fits in the reserve's room.

        After a checkpoint failed for want of room (the disk filled under committed
        writes), writing more would add to what the file has to grow by, until even the
        released reserve cannot take it and nothing, eviction included, can be written:
        a full disk that never recovers. So such a state counts as a full disk at once.
        """
        if self._growth(conn) <= self._growth_cap:
            return True
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as err:
            if not is_full(err):
                self._note_failure(err)
                return False
            full: sqlite3.Error = err
        else:
            if self._growth(conn) <= self._growth_cap:
                return True
            full = sqlite3.OperationalError("database or disk is full (checkpoint)")
            full.sqlite_errorcode = sqlite3.SQLITE_FULL
        self._note_failure(full)
        return False

    def _fail_op(
        self, conn: sqlite3.Connection, txn: Txn, item: _Item[Any], err: Exception, mark: int
    ) -> None:
        """A bad operation fails alone; the rest of the batch commits."""
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        del txn.quarantined[mark:]  # rolled back with it
        for kind in list(txn.pending_seq):
            # Seqs it allocated were rolled back with it; reload from the table.
            row = conn.execute("SELECT seq FROM topic_seq WHERE topic = ?", (kind,)).fetchone()
            txn.pending_seq[kind] = int(row[0]) if row else 0
        self.stats.failed_ops += 1
        item.future.set_exception(err)

    def _announce(self, quarantined: list[Quarantined]) -> None:
        """Report rows quarantined by a committed transaction: one event per source and
        reason, and the counter."""
        if not quarantined:
            return
        groups: dict[tuple[str, str], list[str | None]] = {}
        for q in quarantined:
            groups.setdefault((q.source, q.reason), []).append(q.key)
        self.stats.quarantined += len(quarantined)
        for (source, reason), keys in groups.items():
            self.inc("store_quarantined", len(keys), source=source)
            if self.emit is None:
                log.warning("store: quarantined %d %s row(s): %s", len(keys), source, reason)
                continue
            try:
                self.emit(
                    "store.quarantined",
                    "warning",
                    source=source,
                    reason=reason,
                    rows=len(keys),
                    keys=keys[:10],
                )
            except Exception:  # the emitter's failure must not undo the committed work
                log.exception("store: reporting a quarantine failed")

    def _make_room(self, conn: sqlite3.Connection, *, free: int = 0) -> bool:
        """The disk (or the page cap) is full: free space without needing any.

        Releases the space reserve, then checkpoints the write-ahead log into the database
        and truncates it (the growth that may need fits in the reserve's room, see
        `_prepare`). Evicts in the documented order, one small transaction at a time with a
        checkpoint after each, so the log never needs more than one batch of room, until
        the used size is 70 % of what it was (or 90 % of the cap) — or, with `free`, until
        that many bytes are freed. Then gives the freed pages back to the filesystem in
        small incremental-vacuum steps, each followed by a checkpoint that shrinks the file.

        Returns whether anything was freed (then the failed write is retried at once).
        """
        released = self.space.reserve.release()
        self._checkpoint(conn)
        dropped: dict[str, int] = {}
        chunk = EVICT_FIRST_CHUNK
        try:
            used = used_bytes(Txn(self, conn))
            goal = used - free if free else int(used * EVICT_TO)
            if self.max_bytes is not None:
                goal = min(goal, int(self.max_bytes * 0.9))
            goal = max(0, goal)
            while True:
                txn = Txn(self, conn)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    report = enforce_limits(
                        max(1, int(goal / 0.9)), float("inf"), chunk=chunk, budget=1
                    )(txn)
                    conn.execute("COMMIT")
                except sqlite3.Error as err:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    log.debug("store: eviction batch of %d failed: %s", chunk, err)
                    # Even this batch did not fit: count it and try a smaller one.
                    self.inc("store_eviction_failures")
                    if not is_full(err) or chunk == 1:
                        if not is_full(err):
                            log.error("store: emergency eviction failed: %s", err)
                        break
                    chunk = max(1, chunk // 4)
                    continue
                self.seq_cache.update(txn.pending_seq)
                self._checkpoint(conn)
                for cls, n in report.dropped.items():
                    dropped[cls] = dropped.get(cls, 0) + n
                if not report.dropped or report.used_bytes_after <= goal:
                    break
                chunk = min(2000, chunk * 2)
            self._give_back(conn)
        except sqlite3.Error as err:  # reading the sizes failed: nothing more to do now
            log.error("store: emergency eviction failed: %s", err)
        evicted = sum(dropped.values())
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "store: made room (asked %d): released=%s evicted=%s; %s bytes free now",
                free,
                released,
                dropped,
                self.space.free(),
            )
        if evicted:
            self.stats.evicted_when_full += evicted
            self.inc("store_evicted_when_full", evicted)
            if self._eviction_logged != self.space.episodes:
                self._eviction_logged = self.space.episodes
                log.warning(
                    "store: disk full; evicted %s (further evictions while full are counted)",
                    dropped,
                )
        return released or evicted > 0

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> bool:
        """Copy the write-ahead log into the database and truncate it; False if it failed."""
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return not (busy and busy[0])

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Return free pages to the filesystem: small vacuum steps, each checkpointed."""
        while True:
            free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free_pages == 0:
                return
            try:
                conn.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})").fetchall()
            except sqlite3.Error:
                return
            if not self._checkpoint(conn):
                return
            if int(conn.execute("PRAGMA freelist_count").fetchone()[0]) >= free_pages:
                return  # not an incremental-vacuum database (created by an old version)

    def _note_failure(self, err: sqlite3.Error) -> None:
        message = f"{type(err).__name__}: {err}"
        self.stats.failed_commits += 1
        if is_full(err):
            self.space.enter(err)  # logged once per episode, then counted
        elif self.stats.last_error != message:
            log.error("store: commit failed, will retry: %s", message)
        self.stats.last_error = message


# -- operations used by the daemon -----------------------------------------------------------


def fetch_outbox(
    limit: int, exclude: set[int], skip_topics: Collection[str] = ()
) -> Op[list[OutboxRow]]:
    """Next rows to publish, by priority then age, skipping those already in flight.

    Rows of `skip_topics` (topics the broker refuses for now) are left where they are.

    A row that cannot be published (see `store.checks.outbox_problem`) is quarantined and
    the rows behind it are returned in its place.
    """

    def op(txn: Txn) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        skip = sorted(skip_topics)
        where = f"WHERE topic NOT IN ({', '.join('?' * len(skip))}) " if skip else ""
        query = (
            "SELECT id, topic, kind, seq, payload, retain, encoding, crc FROM outbox "  # noqa: S608 - placeholders only
            f"{where}ORDER BY priority, id LIMIT ?"
        )
        while True:
            rows = txn.conn.execute(
                query,
                (*skip, limit + len(exclude)),
            ).fetchall()
            poisoned = []
            out = []
            for full in rows:
                r = full[:7]
                if r[0] in exclude:
                    continue
                problem = outbox_problem(r, full[7])
                if problem is not None:
                    txn.quarantine("outbox", r[0], problem, r)
                    poisoned.append(r[0])
                    continue
                out.append(OutboxRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]))
            if not poisoned:
                return out[:limit]
            txn.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in poisoned])

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
    """Store an event and queue it for upload in the same transaction.

    A body JSON cannot carry (NaN, infinity, something not JSON-able) is quarantined
    instead of stored; returns 0 then.
    """

    def op(txn: Txn) -> int:
        ts = time.time()
        try:
            text = dumps(body).decode()
        except (ValueError, TypeError, RecursionError) as err:
            txn.quarantine("events", kind, f"not JSON: {err}", body)
            return 0
        txn.conn.execute(
            "INSERT INTO events(ts, kind, sensor, severity, body) VALUES (?, ?, ?, ?, ?)",
            (ts, kind, sensor, severity, text),
        )
        payload = {"event": kind, "severity": severity, "sensor": sensor, "event_ts": ts, **body}
        return txn.enqueue("events", payload)

    return op
