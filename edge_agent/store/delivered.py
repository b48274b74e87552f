"""Delivered messages: kept after their PUBACK so a consumer can ask for them again.

A broker may lose messages it acknowledged (a restart without persistence, a cluster that
fails over); the consumer then sees a gap in a topic's `seq` and nothing can fill it unless
the gateway still has the messages. With `sync.keep_delivered_s` > 0 an acknowledged outbox
row is moved to the `delivered` table (in the transaction that would have deleted it) and
kept that long, bounded by the disk cap (delivered copies are the first data evicted,
see `store.retention`). `resend_range` queues such rows again, unchanged: same topic, seq,
msg_id and payload bytes, so the consumer's deduplication sees one message.

The retained `status` topic is a state, not a stream: it is never kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent.contract.ranges import merge
from edge_agent.store.checks import finite_number, outbox_problem
from edge_agent.store.txn import PRIORITY, Op, Txn

STATE_KINDS = frozenset({"status"})
"""Topic kinds that are states (retained), never kept after delivery."""

RESENDABLE_KINDS = frozenset(PRIORITY) - STATE_KINDS
"""Topic kinds a consumer may ask for again."""

_STATES = ", ".join(f"'{kind}'" for kind in sorted(STATE_KINDS))

ACK_CHUNK = 500
"""Most outbox ids in one statement of `ack_outbox` (SQLite's bound-parameter limit is far
above it)."""

# Acknowledged rows (`{ids}`: their placeholders) that can be sent again unchanged, copied
# to `delivered`.
_KEEP = (
    "INSERT OR REPLACE INTO delivered(topic, kind, seq, msg_id, payload, encoding, crc, "  # noqa: S608 - constants
    "created, delivered_at) "
    "SELECT topic, kind, seq, msg_id, payload, encoding, crc, created, ? FROM outbox "
    f"WHERE id IN ({{ids}}) AND retain = 0 AND kind NOT IN ({_STATES}) "
    "AND typeof(topic) = 'text' AND typeof(kind) = 'text' "
    "AND typeof(seq) = 'integer' AND typeof(msg_id) = 'text' "
    "AND typeof(payload) = 'blob' AND typeof(created) IN ('real', 'integer')"
)


def ack_outbox(ids: list[int], *, keep: bool, now: float | None = None) -> Op[int]:
    """Rows the broker acknowledged leave the outbox: into `delivered` when `keep`.

    Only rows that can be sent again unchanged are kept (an integer seq, a text msg_id, a
    bytes payload, not retained, not a state topic); any other is just deleted. A row of a
    (topic, seq) already kept replaces it. Returns how many rows left the outbox.
    """

    def op(txn: Txn) -> int:
        stamp = time.time() if now is None else now
        # One statement per chunk of ids, not one per id: a PUBACK batch costs about half
        # the writer thread's time that way (the drain competes with it for the GIL).
        for start in range(0, len(ids), ACK_CHUNK):
            chunk = ids[start : start + ACK_CHUNK]
            marks = ", ".join("?" * len(chunk))
            if keep:
                txn.conn.execute(_KEEP.format(ids=marks), (stamp, *chunk))
            txn.conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608 - placeholders only
        return len(ids)

    return op


def delivered_rows() -> Op[int]:
    """Delivered messages kept now."""

    def op(txn: Txn) -> int:
        return int(txn.conn.execute("SELECT count(*) FROM delivered").fetchone()[0])

    return op


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sequence numbers as merged, ascending, inclusive `[first, last]` ranges."""
    return _merge([s, s] for s in seqs)


def _stamp(created: object) -> float:
    """The row's creation time, or now when it is not a finite number (a bad row)."""
    return float(created) if finite_number(created) else time.time()  # type: ignore[arg-type]


def _span(first: int, last: int) -> list[list[int]]:
    return [[first, last]] if first <= last else []


def _merge(parts: Iterable[list[int]]) -> list[list[int]]:
    """`[first, last]` ranges merged (as JSON carries them: lists)."""
    return [[a, b] for a, b in merge((a, b) for a, b in parts)]


@dataclass
class ResendOutcome:
    """Where each seq of a requested range stands; every seq is in exactly one list."""

    resent: list[list[int]] = field(default_factory=list)
    """Queued again now (they were kept after delivery)."""
    pending: list[list[int]] = field(default_factory=list)
    """In the outbox now: never sent yet, or already queued again; they will come."""
    evicted: list[list[int]] = field(default_factory=list)
    """No longer held (age, disk cap, keeping off, or unusable)."""
    unissued: list[list[int]] = field(default_factory=list)
    """Above the last seq issued for the topic: nothing to send."""

    def add(self, other: ResendOutcome) -> None:
        """Join the outcome of another part of the range."""
        for name in ("resent", "pending", "evicted", "unissued"):
            merged = _merge([*getattr(self, name), *getattr(other, name)])
            setattr(self, name, merged)

    @staticmethod
    def count(parts: list[list[int]]) -> int:
        """How many seqs `parts` covers."""
        return sum(last - first + 1 for first, last in parts)


def resend_range(topic: str, kind: str, first: int, last: int) -> Op[ResendOutcome]:
    """Queue the kept messages of `topic` with seq in [first, last] again, unchanged.

    A kept row that cannot be sent as it is (see `store.checks.outbox_problem`; also a
    msg_id that is not text) is quarantined and counts as evicted. Callers keep a range
    small (a few hundred seqs): it is one transaction.
    """

    def op(txn: Txn) -> ResendOutcome:
        conn = txn.conn
        row = conn.execute("SELECT seq FROM topic_seq WHERE topic = ?", (kind,)).fetchone()
        issued = row[0] if row is not None and isinstance(row[0], int) else 0
        out = ResendOutcome(unissued=_span(max(first, issued + 1), last))
        top = min(last, issued)
        if top < first:
            return out
        queued = {
            seq
            for (seq,) in conn.execute(
                "SELECT seq FROM outbox WHERE topic = ? AND seq BETWEEN ? AND ?",
                (topic, first, top),
            )
            if isinstance(seq, int)
        }
        resent: list[int] = []
        for rid, t, k, seq, msg_id, payload, encoding, crc, created in conn.execute(
            "SELECT id, topic, kind, seq, msg_id, payload, encoding, crc, created FROM delivered "
            "WHERE topic = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (topic, first, top),
        ).fetchall():
            if seq in queued:
                continue  # queued already (its PUBACK brings the kept copy up to date)
            problem = outbox_problem((rid, t, k, seq, payload, 0, encoding), crc)
            if problem is None and (not isinstance(msg_id, str) or not msg_id):
                problem = f"msg_id is {msg_id!r}, not a non-empty text"
            if problem is not None:
                txn.quarantine("delivered", rid, problem, (t, k, seq, msg_id, payload))
                conn.execute("DELETE FROM delivered WHERE id = ?", (rid,))
                continue
            conn.execute(
                "INSERT INTO outbox(topic, kind, priority, seq, msg_id, payload, created, "
                "retain, encoding, crc) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (t, k, PRIORITY.get(k, 5), seq, msg_id, payload, _stamp(created), encoding, crc),
            )
            conn.execute("DELETE FROM delivered WHERE id = ?", (rid,))
            resent.append(seq)
            queued.add(seq)
        out.resent = ranges(resent)
        out.pending = ranges(queued - set(resent))
        held = set(resent) | queued
        out.evicted = ranges(s for s in range(first, top + 1) if s not in held)
        return out

    return op
