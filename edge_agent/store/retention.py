"""Bounded disk: age and size caps, a documented eviction order, and counters of every drop.

Eviction order (first evicted first), see docs/reliability.md:

1. quarantined rows (kept only for inspection),
2. delivered messages kept for resend requests (`store.delivered`; already acknowledged),
3. window results already packed for upload (local history),
4. local history of summaries and events (their outbox copies are separate),
5. queued `results` messages,
6. window results not yet packed for upload,
7. queued `heartbeat` messages,
8. queued `summary` messages,
9. queued `events` messages.

Delivered messages also end after `sync.keep_delivered_s` (and at the age cap); that is
their configured life, not a drop, so only the disk cap's evictions of them are counted
(`delivered.history`).

Eviction notices themselves (`outbox.evicted` events, priority 0) are never evicted.
Every outbox message evicted after it received a sequence number is announced with the
topic and the seq range, so the cloud can tell a drop by policy from a loss.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.store.checks import parse_count
from edge_agent.store.meta import results_cursor
from edge_agent.store.txn import Op, Txn

# Table and column names in the SQL below are constants of this module, never input (S608).
CHUNK = 2000
NOTICE_PRIORITY = 0


@dataclass
class EvictionReport:
    """What one enforcement pass did."""

    used_bytes_before: int = 0
    used_bytes_after: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    announced: list[dict[str, Any]] = field(default_factory=list)


def used_bytes(txn: Txn) -> int:
    """Bytes of the database file that hold data (free pages excluded)."""
    conn = txn.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _count(txn: Txn, report: EvictionReport, cls: str, n: int) -> None:
    if n <= 0:
        return
    report.dropped[cls] = report.dropped.get(cls, 0) + n
    txn.conn.execute(
        "INSERT INTO dropped(class, count) VALUES (?, ?) "
        "ON CONFLICT(class) DO UPDATE SET count = count + excluded.count",
        (cls, n),
    )


def _results_cursor(txn: Txn) -> int:
    return results_cursor(txn)


def _evict_outbox(
    txn: Txn,
    report: EvictionReport,
    kind: str,
    where: str,
    args: tuple[Any, ...],
    reason: str,
    limit: int | None = CHUNK,
) -> int:
    """Delete queued messages of one kind (oldest first) and announce their seq range."""
    sql = (
        f"SELECT id, seq FROM outbox WHERE kind = ? AND priority > {NOTICE_PRIORITY} AND {where} "
        "ORDER BY id"
    )
    params: tuple[Any, ...] = (kind, *args)
    if limit is not None:
        sql += " LIMIT ?"
        params = (*params, limit)
    rows = txn.conn.execute(sql, params).fetchall()
    if not rows:
        return 0
    txn.conn.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in rows])
    # A row whose seq is not a number (poison) goes too, but cannot be part of a range.
    seqs = [r[1] for r in rows if isinstance(r[1], int) and not isinstance(r[1], bool)]
    if not seqs:
        _count(txn, report, f"outbox.{kind}", len(rows))
        return len(rows)
    notice = {
        "topic": kind,
        "seq_from": min(seqs),
        "seq_to": max(seqs),
        "messages": len(rows),
        "reason": reason,
    }
    report.announced.append(notice)
    ts = time.time()
    txn.conn.execute(
        "INSERT INTO events(ts, kind, sensor, severity, body) VALUES (?, ?, NULL, ?, ?)",
        (ts, "outbox.evicted", "warning", json.dumps(notice)),
    )
    txn.enqueue(
        "events",
        {
            "event": "outbox.evicted",
            "severity": "warning",
            "sensor": None,
            "event_ts": ts,
            **notice,
        },
        priority=NOTICE_PRIORITY,
    )
    _count(txn, report, f"outbox.{kind}", len(rows))
    return len(rows)


def enforce_limits(
    max_bytes: int,
    max_age_s: float,
    *,
    now: float | None = None,
    chunk: int = CHUNK,
    budget: int | None = None,
    keep_delivered_s: float = math.inf,
) -> Op[EvictionReport]:
    """Apply the age cap, then evict in order until the used size is under 90 % of the cap.

    Args:
        max_bytes: The cap.
        max_age_s: The age cap (`inf`: none).
        keep_delivered_s: How long delivered messages are kept (`inf`: up to the age cap).
        now: The time the age cap counts from (default: now).
        chunk: Rows deleted per step.
        budget: At most this many steps (None: until under the target). A full disk evicts
            one small step per transaction, so no transaction needs much journal space.
    """

    def op(txn: Txn) -> EvictionReport:
        conn = txn.conn
        report = EvictionReport(used_bytes_before=used_bytes(txn))
        cutoff = (time.time() if now is None else now) - max_age_s

        # Age: local history and queued messages older than the cap.
        cursor = _results_cursor(txn)
        n = conn.execute(
            "DELETE FROM results WHERE t_end < ? AND id <= ?", (cutoff, cursor)
        ).rowcount
        _count(txn, report, "results.history", n)
        for table, column in (("quarantine", "ts"), ("summaries", "t_end"), ("events", "ts")):
            n = conn.execute(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,)).rowcount
            _count(txn, report, f"{table}.history", n)
        keep = min(max_age_s, keep_delivered_s)
        if keep < math.inf:
            stamp = time.time() if now is None else now
            # A stamp too far ahead to judge (a clock set wrong then, or text, which SQLite
            # orders above every number) goes too: nothing kept can outlive its life.
            conn.execute(
                "DELETE FROM delivered WHERE delivered_at < ? OR delivered_at > ?",
                (stamp - keep, stamp + keep),
            )
        for kind in ("results", "heartbeat", "summary", "events"):
            _evict_outbox(txn, report, kind, "created < ?", (cutoff,), "max_age", limit=None)
        stale = conn.execute(
            "SELECT max(id), count(*) FROM results WHERE id > ? AND t_end < ?", (cursor, cutoff)
        ).fetchone()
        if stale[1]:
            # Too old to send: skip them by moving the upload cursor past them.
            _skip_unsent(txn, report, int(stale[0]))

        target = int(max_bytes * 0.9)
        steps: list[Callable[[], int]] = [
            lambda: _delete_oldest(txn, report, "quarantine", "1", (), "quarantine.history", chunk),
            lambda: _delete_oldest(txn, report, "delivered", "1", (), "delivered.history", chunk),
            lambda: _delete_oldest(
                txn,
                report,
                "results",
                "id <= ?",
                (_results_cursor(txn),),
                "results.history",
                chunk,
            ),
            lambda: _delete_oldest(txn, report, "summaries", "1", (), "summaries.history", chunk),
            lambda: _delete_oldest(
                txn, report, "events", "kind != 'outbox.evicted'", (), "events.history", chunk
            ),
            lambda: _evict_outbox(txn, report, "results", "1", (), "disk cap", chunk),
            lambda: _skip_oldest_unsent(txn, report, chunk),
            lambda: _evict_outbox(txn, report, "heartbeat", "1", (), "disk cap", chunk),
            lambda: _evict_outbox(txn, report, "summary", "1", (), "disk cap", chunk),
            lambda: _evict_outbox(txn, report, "events", "1", (), "disk cap", chunk),
        ]
        left = budget
        for step in steps:
            while used_bytes(txn) > target and (left is None or left > 0):
                if step() == 0:
                    break
                if left is not None:
                    left -= 1
        report.used_bytes_after = used_bytes(txn)
        return report

    return op


def _delete_oldest(
    txn: Txn,
    report: EvictionReport,
    table: str,
    where: str,
    args: tuple[Any, ...],
    cls: str,
    chunk: int = CHUNK,
) -> int:
    n = txn.conn.execute(
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} "
        f"ORDER BY id LIMIT {int(chunk)})",
        args,
    ).rowcount
    _count(txn, report, cls, n)
    return int(n)


def _skip_unsent(txn: Txn, report: EvictionReport, upto_id: int) -> None:
    cursor = _results_cursor(txn)
    n = txn.conn.execute("DELETE FROM results WHERE id > ? AND id <= ?", (cursor, upto_id)).rowcount
    txn.conn.execute(
        "INSERT INTO meta(key, value) VALUES ('results_cursor', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(upto_id),),
    )
    _count(txn, report, "results.unsent", n)


def _skip_oldest_unsent(txn: Txn, report: EvictionReport, chunk: int = CHUNK) -> int:
    cursor = _results_cursor(txn)
    row = txn.conn.execute(
        "SELECT max(id), count(*) FROM (SELECT id FROM results WHERE id > ? ORDER BY id LIMIT ?)",
        (cursor, chunk),
    ).fetchone()
    if not row[1]:
        return 0
    _skip_unsent(txn, report, int(row[0]))
    return int(row[1])


def dropped_counters() -> Op[dict[str, int]]:
    """Everything dropped by policy since the database was created, by class.

    A row that is not a (name, count) pair is quarantined.
    """

    def op(txn: Txn) -> dict[str, int]:
        out: dict[str, int] = {}
        for rowid, cls, count in txn.conn.execute(
            "SELECT rowid, class, count FROM dropped"
        ).fetchall():
            try:
                if not isinstance(cls, str) or not cls:
                    raise ValueError(f"class {cls!r} is not a name")
                out[cls] = parse_count(count)
            except ValueError as err:
                txn.quarantine("dropped", cls, str(err), (cls, count))
                txn.conn.execute("DELETE FROM dropped WHERE rowid = ?", (rowid,))
        return out

    return op
