"""`CloudStore`: telemetry into PostgreSQL, idempotently, with the gap and status accounting.

One `write` per batch is one transaction. Several consumers (members of a shared
subscription) may write the same database at once; the rules that keep them correct:

- messages are inserted `ON CONFLICT DO NOTHING` on (device, topic, seq), so a copy stored
  by another member, or re-sent by the gateway, is counted as a duplicate, never stored twice;
- each touched `streams` row is locked (`FOR UPDATE`, in sorted order) before its gaps are
  computed, so gap rows of a stream change under that lock only, and the highest seq one
  member sees includes what the others committed;
- gateway rows are updated in sorted order too, so two writers never deadlock;
- a due gap is claimed `FOR UPDATE SKIP LOCKED`: one member asks the gateway, not all.

Gap rows are recomputed from what is stored (`messages`, `evictions`), never counted
incrementally, so a re-sent or late message, an eviction announced twice or a reply from
a previous run cannot make them drift.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from edge_agent.cloud.ingest import Rejected, Telemetry, Unrelated, eviction_of
from edge_agent.cloud.schema import DDL, SCHEMA_LOCK
from edge_agent.contract.payloads import StatusPayload
from edge_agent.contract.ranges import (
    MAX_RESEND_SEQS,
    Range,
    holes,
    intersect,
    merge,
    request_spans,
    size,
    subtract,
)
from edge_agent.contract.topics import parse_topic

__all__ = ["BatchOutcome", "CloudStore", "DueGap", "RepairTiming"]

Item = Telemetry | Rejected | Unrelated
Stream = tuple[str, str]
LIVE = ("open", "requested")


def at(t: float) -> datetime:
    """Unix seconds as an aware datetime (what timestamptz columns take)."""
    return datetime.fromtimestamp(t, UTC)


@dataclass(frozen=True)
class RepairTiming:
    """When gaps are asked for.

    Attributes:
        grace_s: A gap younger than this is not asked for: the missing seqs may still
            arrive (out of order, from another member of a shared subscription).
        retry_s: Delay before the first retry; doubled per attempt, with ±20 % jitter.
        retry_max_s: Cap of the retry delay.
        max_spans: `sync.resend` requests sent per gap per attempt (each ≤ 10,000 seqs);
            the rest of a very long gap is asked on the next attempts.
        tail_probe_s: A stream of an online gateway quiet this long is asked once for
            what follows its last seq: a loss at the end of a burst has no later message
            to reveal it. Longer than the gateway's cadences (heartbeat 30 s, summary
            60 s by default), so a steady stream is never probed. 0: never.
        tail_span: Seqs a tail probe asks for (the gateway answers `unissued` for those
            it never issued, so the span costs nothing when nothing was lost).
    """

    grace_s: float = 2.0
    retry_s: float = 5.0
    retry_max_s: float = 120.0
    max_spans: int = 5
    tail_probe_s: float = 300.0
    tail_span: int = 1000

    def retry_delay(self, attempts: int) -> float:
        base = min(self.retry_max_s, self.retry_s * 2.0 ** max(0, attempts - 1))
        return float(base * random.uniform(0.8, 1.2))


@dataclass
class BatchOutcome:
    """What one `write` did, by outcome."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    online: list[str] = field(default_factory=list)
    """Gateway roots whose newest status says online (their gaps are asked again now)."""

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


@dataclass(frozen=True)
class DueGap:
    """A gap claimed for asking: which gateway, which topic, which spans."""

    gap_id: int
    root: str
    topic: str
    spans: list[Range]
    attempt: int


class CloudStore:
    """The consumer's PostgreSQL connection and everything it writes and reads.

    Args:
        dsn: libpq connection string.
        prefix: Topic prefix of the fleet.
        timing: When gaps are asked for.
        from_first: A stream seen for the first time above seq 1 has a gap from 1 (for a
            database that predates the gateways; off, a consumer joining a running fleet
            would ask for everything before it joined).

    Not thread-safe: one thread (the consumer's writer) uses it. `close()` is safe twice.
    """

    def __init__(
        self,
        dsn: str,
        *,
        prefix: str = "edge",
        timing: RepairTiming | None = None,
        from_first: bool = False,
    ):
        self.prefix = prefix.rstrip("/")
        self.timing = timing or RepairTiming()
        self.from_first = from_first
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=False)
        self._closed = False

    def reconnect(self) -> None:
        """A new connection after the database went away (the old one is dropped)."""
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = psycopg.connect(self.dsn, autocommit=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()

    def __enter__(self) -> CloudStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_schema(self) -> None:
        """Create what is missing (safe with several consumers starting at once)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.conn.execute(DDL)

    # -- writing a batch -----------------------------------------------------------------------

    def write(self, items: Sequence[Item], now: float) -> BatchOutcome:
        """Store one batch in one transaction; retried once on a deadlock between members."""
        for attempt in range(3):
            try:
                with self.conn.transaction():
                    return self._write(items, now)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, items: Sequence[Item], now: float) -> BatchOutcome:
        out = BatchOutcome()
        telemetry = [i for i in items if isinstance(i, Telemetry)]
        self._rejects([i for i in items if isinstance(i, Rejected)], out)
        self._ignored([i for i in items if isinstance(i, Unrelated)], out)
        rows = [t for t in telemetry if t.name.kind != "status"]
        inserted, dups, conflicts = self._messages(rows, out)
        evictions = [(t, e) for t in rows if (e := eviction_of(t)) is not None]
        streams = sorted({t.stream for t in rows} | {(t.name.device, e[0]) for t, e in evictions})
        for key in streams:
            self._lock_stream(key)
        for key in streams:
            self._account(key, inserted.get(key, []), dups.get(key, 0), conflicts.get(key, 0), now)
        for item, (topic, lo, hi, reason) in evictions:
            self._evicted(item.name.device, topic, [(lo, hi)], "event", reason, now)
            out.add("evictions")
        self._gateways(telemetry, now, out)
        return out

    def _rejects(self, items: list[Rejected], out: BatchOutcome) -> None:
        if not items:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rejects (topic, received_at, reason, payload) VALUES (%s, %s, %s, %s)",
                [
                    (r.inbound.topic, at(r.inbound.received), r.reason, r.inbound.payload)
                    for r in items
                ],
            )
        out.add("rejected", len(items))

    def _ignored(self, items: list[Unrelated], out: BatchOutcome) -> None:
        if not items:
            return
        counts: dict[str, int] = defaultdict(int)
        for item in items:
            counts[item.inbound.topic] += 1
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ignored (topic, count) VALUES (%s, %s) "
                "ON CONFLICT (topic) DO UPDATE SET count = ignored.count + EXCLUDED.count",
                sorted(counts.items()),
            )
        out.add("ignored", len(items))

    def _messages(
        self, rows: list[Telemetry], out: BatchOutcome
    ) -> tuple[dict[Stream, list[int]], dict[Stream, int], dict[Stream, int]]:
        """Insert; returns the seqs stored now, duplicates and conflicts, per stream."""
        inserted: dict[Stream, list[int]] = defaultdict(list)
        dups: dict[Stream, int] = defaultdict(int)
        conflicts: dict[Stream, int] = defaultdict(int)
        if not rows:
            return inserted, dups, conflicts
        # Sorted by key: two writers inserting the same keys take their locks in one order.
        rows = sorted(rows, key=lambda t: (t.name.device, t.inbound.topic, t.payload.seq))
        cols: list[list[Any]] = [[] for _ in range(11)]
        for t in rows:
            values = (
                t.name.device,
                t.inbound.topic,
                t.payload.seq,
                t.name.tenant,
                t.name.site,
                t.name.kind,
                t.payload.msg_id,
                t.payload.ts,
                at(t.inbound.received),
                t.inbound.retained,
                t.json(),
            )
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        stored = self.conn.execute(
            "INSERT INTO messages (device, topic, seq, tenant, site, kind, msg_id, ts, "
            "received_at, retained, payload) "
            "SELECT d, t, s, te, si, k, m, ts, r, re, p::jsonb FROM unnest("
            "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], "
            "%s::text[], %s::float8[], %s::timestamptz[], %s::bool[], %s::text[]) "
            "AS x(d, t, s, te, si, k, m, ts, r, re, p) "
            "ON CONFLICT DO NOTHING RETURNING device, topic, seq",
            cols,
        ).fetchall()
        fresh = {(d, t, int(s)) for d, t, s in stored}
        others: list[Telemetry] = []
        for t in rows:
            key = (t.name.device, t.inbound.topic, t.payload.seq)
            if key in fresh:
                fresh.discard(key)
                inserted[t.stream].append(t.payload.seq)
            else:
                others.append(t)
        out.add("accepted", sum(len(v) for v in inserted.values()))
        if not others:
            return inserted, dups, conflicts
        known = {
            (d, t, int(s)): m
            for d, t, s, m in self.conn.execute(
                "SELECT m.device, m.topic, m.seq, m.msg_id FROM messages m JOIN unnest("
                "%s::text[], %s::text[], %s::bigint[]) AS x(d, t, s) "
                "ON m.device = x.d AND m.topic = x.t AND m.seq = x.s",
                (
                    [t.name.device for t in others],
                    [t.inbound.topic for t in others],
                    [t.payload.seq for t in others],
                ),
            )
        }
        clashes = []
        for t in others:
            stored_id = known.get((t.name.device, t.inbound.topic, t.payload.seq))
            if stored_id == t.payload.msg_id:
                dups[t.stream] += 1
                out.add("duplicate")
            else:
                conflicts[t.stream] += 1
                out.add("conflict")
                clashes.append(
                    (
                        t.name.device,
                        t.inbound.topic,
                        t.payload.seq,
                        t.payload.msg_id,
                        stored_id or "",
                        at(t.inbound.received),
                        Jsonb(t.message),
                    )
                )
        if clashes:
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO conflicts (device, topic, seq, msg_id, stored_msg_id, "
                    "received_at, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    clashes,
                )
        return inserted, dups, conflicts

    def _lock_stream(self, key: Stream) -> None:
        device, topic = key
        name = parse_topic(topic, self.prefix)
        if name is None:  # pragma: no cover - only telemetry topics get here
            raise ValueError(f"{topic} is not a telemetry topic")
        self.conn.execute(
            "INSERT INTO streams (device, topic, tenant, site, kind) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (device, topic, name.tenant, name.site, name.kind),
        )
        self.conn.execute(
            "SELECT 1 FROM streams WHERE device = %s AND topic = %s FOR UPDATE", (device, topic)
        )

    def _account(self, key: Stream, seqs: list[int], dups: int, conflicts: int, now: float) -> None:
        """Stream counters, new gaps, and the gaps these seqs fill (the stream is locked)."""
        device, topic = key
        row = self.conn.execute(
            "SELECT last_seq FROM streams WHERE device = %s AND topic = %s", key
        ).fetchone()
        last = None if row is None or row[0] is None else int(row[0])
        if seqs:
            self.conn.execute(
                "UPDATE streams SET last_seq = greatest(last_seq, %s), "
                "first_seq = least(first_seq, %s), received = received + %s, "
                "duplicates = duplicates + %s, conflicts = conflicts + %s, updated_at = %s "
                "WHERE device = %s AND topic = %s",
                (max(seqs), min(seqs), len(seqs), dups, conflicts, at(now), device, topic),
            )
        elif dups or conflicts:
            self.conn.execute(
                "UPDATE streams SET duplicates = duplicates + %s, conflicts = conflicts + %s, "
                "updated_at = %s WHERE device = %s AND topic = %s",
                (dups, conflicts, at(now), device, topic),
            )
        if not seqs:
            return
        # Every topic's seq starts at 1: with `from_first` (a database older than the
        # fleet) a stream first seen above 1 lost its beginning.
        new = holes(0 if last is None and self.from_first else last, seqs)
        fills = sorted(s for s in seqs if last is not None and s <= last)
        for lo, hi in new:
            gap_id = self.conn.execute(
                "INSERT INTO gaps (device, topic, from_seq, to_seq, missing, opened_at, "
                "next_ask_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (device, topic, lo, hi, hi - lo + 1, at(now), at(now + self.timing.grace_s)),
            ).fetchone()
            assert gap_id is not None
            self._recompute(int(gap_id[0]), device, topic, lo, hi, "open", now)
        if fills:
            self._recompute_overlapping(device, topic, [(s, s) for s in fills], now)

    def _recompute_overlapping(
        self, device: str, topic: str, ranges: list[Range], now: float
    ) -> None:
        ranges = merge(ranges)
        rows = self.conn.execute(
            "SELECT id, from_seq, to_seq, state FROM gaps WHERE device = %s AND topic = %s "
            "AND state IN ('open', 'requested') AND to_seq >= %s AND from_seq <= %s "
            "ORDER BY from_seq",
            (device, topic, ranges[0][0], ranges[-1][1]),
        ).fetchall()
        for gap_id, lo, hi, state in rows:
            if intersect([(int(lo), int(hi))], ranges):
                self._recompute(int(gap_id), device, topic, int(lo), int(hi), str(state), now)

    def _present(self, device: str, topic: str, lo: int, hi: int) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM messages WHERE device = %s AND topic = %s "
            "AND seq BETWEEN %s AND %s",
            (device, topic, lo, hi),
        ).fetchone()
        return int(row[0]) if row else 0

    def _evicted_ranges(self, device: str, topic: str, lo: int, hi: int) -> list[Range]:
        rows = self.conn.execute(
            "SELECT from_seq, to_seq FROM evictions WHERE device = %s AND topic = %s "
            "AND to_seq >= %s AND from_seq <= %s",
            (device, topic, lo, hi),
        ).fetchall()
        return intersect([(lo, hi)], [(int(a), int(b)) for a, b in rows])

    def _recompute(
        self, gap_id: int, device: str, topic: str, lo: int, hi: int, state: str, now: float
    ) -> None:
        """Set a live gap's missing/evicted counts from what is stored, and close it when
        nothing is missing: a gap filled before it was ever asked for was a reordering
        (deleted, counted on the stream); after, it was repaired; else evicted."""
        evicted_ranges = self._evicted_ranges(device, topic, lo, hi)
        evicted = size(evicted_ranges) - sum(
            self._present(device, topic, a, b) for a, b in evicted_ranges
        )
        missing = (hi - lo + 1) - self._present(device, topic, lo, hi) - evicted
        if missing > 0:
            self.conn.execute(
                "UPDATE gaps SET missing = %s, evicted = %s WHERE id = %s",
                (missing, evicted, gap_id),
            )
            return
        if evicted == 0 and state == "open":
            self.conn.execute("DELETE FROM gaps WHERE id = %s", (gap_id,))
            self.conn.execute(
                "UPDATE streams SET reordered = reordered + 1 WHERE device = %s AND topic = %s",
                (device, topic),
            )
            return
        self.conn.execute(
            "UPDATE gaps SET missing = 0, evicted = %s, state = %s, closed_at = %s WHERE id = %s",
            (evicted, "evicted" if evicted else "repaired", at(now), gap_id),
        )

    def _evicted(
        self,
        device: str,
        topic: str,
        ranges: list[Range],
        source: str,
        reason: str | None,
        now: float,
    ) -> None:
        """Record ranges a gateway dropped by policy and settle the gaps they explain
        (the stream must be locked)."""
        ranges = merge(ranges)
        if not ranges:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO evictions (device, topic, from_seq, to_seq, source, reason, "
                "recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(device, topic, a, b, source, reason, at(now)) for a, b in ranges],
            )
        self._recompute_overlapping(device, topic, ranges, now)

    def _gateways(self, telemetry: list[Telemetry], now: float, out: BatchOutcome) -> None:
        by_gateway: dict[tuple[str, str, str], list[Telemetry]] = defaultdict(list)
        for t in telemetry:
            by_gateway[t.gateway].append(t)
        for gw in sorted(by_gateway):  # one lock order for every writer
            items = by_gateway[gw]
            live = [t.inbound.received for t in items if not t.inbound.retained]
            seen = at(max(live)) if live else None
            self.conn.execute(
                "INSERT INTO gateways (tenant, site, device, last_seen_at) "
                "VALUES (%s, %s, %s, coalesce(%s, %s)) ON CONFLICT (tenant, site, device) "
                "DO UPDATE SET last_seen_at = greatest(gateways.last_seen_at, %s)",
                (*gw, seen, at(now), seen),
            )
            for t in items:
                if isinstance(t.payload, StatusPayload):
                    self._status(t, out)
            beats = [t for t in items if t.name.kind == "heartbeat"]
            if beats:
                newest = max(beats, key=lambda t: t.payload.seq)
                self.conn.execute(
                    "UPDATE gateways SET last_heartbeat_seq = greatest(last_heartbeat_seq, %s), "
                    "last_heartbeat_at = greatest(last_heartbeat_at, %s) "
                    "WHERE tenant = %s AND site = %s AND device = %s",
                    (newest.payload.seq, at(newest.inbound.received), *gw),
                )

    def _status(self, t: Telemetry, out: BatchOutcome) -> None:
        """Apply a birth or will. Its seq numbers connections: a higher seq is a later
        connection; with the same seq, `offline` (that connection ended) beats `online`.
        So an old retained `offline` never overrides a newer `online`."""
        payload = t.payload
        assert isinstance(payload, StatusPayload)
        first = self.conn.execute(
            "INSERT INTO status_log (topic, msg_id, device, seq, state, ts, received_at, "
            "retained) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING "
            "RETURNING 1",
            (
                t.inbound.topic,
                payload.msg_id,
                payload.device,
                payload.seq,
                payload.state,
                payload.ts,
                at(t.inbound.received),
                t.inbound.retained,
            ),
        ).fetchone()
        online = payload.state == "online"
        # A re-announced birth repeats the birth's msg_id: not new to the log, but it still
        # says the gateway is up (ordered like any status).
        applied = self.conn.execute(
            "UPDATE gateways SET online = %s, status_seq = %s, status_ts = %s, status_at = %s "
            "WHERE tenant = %s AND site = %s AND device = %s AND (status_seq IS NULL "
            "OR %s > status_seq OR (%s = status_seq AND NOT %s AND online)) RETURNING 1",
            (
                online,
                payload.seq,
                payload.ts,
                at(t.inbound.received),
                *t.gateway,
                payload.seq,
                payload.seq,
                online,
            ),
        ).fetchone()
        out.add("status" if first else "status_repeated")
        if applied and online:
            root = t.inbound.topic.rsplit("/", 1)[0]
            out.online.append(root)
            # Back online: what it could not answer while away is asked again now.
            self.conn.execute(
                "UPDATE gaps SET next_ask_at = least(next_ask_at, %s) WHERE state = 'requested' "
                "AND starts_with(topic, %s)",
                (at(t.inbound.received), root + "/"),
            )

    # -- repair --------------------------------------------------------------------------------

    def claim_due(self, now: float, limit: int = 50) -> list[DueGap]:
        """Gaps due for a `sync.resend`, claimed by this consumer (others skip them): each
        is marked requested with its next retry time, and returned with the spans to ask."""
        due: list[DueGap] = []
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT id, device, topic, from_seq, to_seq, attempts FROM gaps "
                "WHERE state IN ('open', 'requested') AND next_ask_at <= %s "
                "ORDER BY next_ask_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (at(now), limit),
            ).fetchall()
            for gap_id, device, topic, lo, hi, attempts in rows:
                spans = self.missing_spans(str(device), str(topic), int(lo), int(hi))
                attempt = int(attempts) + 1
                self.conn.execute(
                    "UPDATE gaps SET state = 'requested', attempts = %s, asked_at = %s, "
                    "next_ask_at = %s WHERE id = %s",
                    (attempt, at(now), at(now + self.timing.retry_delay(attempt)), gap_id),
                )
                if spans:
                    root = str(topic).rsplit("/", 1)[0]
                    chosen = spans[: self.timing.max_spans]
                    due.append(DueGap(int(gap_id), root, str(topic), chosen, attempt))
        return due

    def claim_tails(self, now: float, limit: int = 50) -> list[DueGap]:
        """Streams of online gateways quiet for `tail_probe_s` since their last message and
        not probed since: each is marked probed and returned with the span after its last
        seq (gap id 0: a probe, not a gap)."""
        if self.timing.tail_probe_s <= 0:
            return []
        due: list[DueGap] = []
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT s.device, s.topic, s.last_seq FROM streams s JOIN gateways g "
                "ON (g.tenant, g.site, g.device) = (s.tenant, s.site, s.device) "
                "WHERE g.online AND s.last_seq IS NOT NULL AND s.updated_at <= %s "
                "AND (s.probed_at IS NULL OR s.probed_at < s.updated_at) "
                "ORDER BY s.updated_at LIMIT %s FOR UPDATE OF s SKIP LOCKED",
                (at(now - self.timing.tail_probe_s), limit),
            ).fetchall()
            for device, topic, last in rows:
                self.conn.execute(
                    "UPDATE streams SET probed_at = %s WHERE device = %s AND topic = %s",
                    (at(now), device, topic),
                )
                span = (int(last) + 1, int(last) + min(self.timing.tail_span, MAX_RESEND_SEQS))
                due.append(DueGap(0, str(topic).rsplit("/", 1)[0], str(topic), [span], 1))
        return due

    def missing_spans(self, device: str, topic: str, lo: int, hi: int) -> list[Range]:
        """`sync.resend` spans for what is still missing of [lo, hi]."""
        present = [
            int(r[0])
            for r in self.conn.execute(
                "SELECT seq FROM messages WHERE device = %s AND topic = %s "
                "AND seq BETWEEN %s AND %s",
                (device, topic, lo, hi),
            )
        ]
        missing = subtract([(lo, hi)], [(s, s) for s in present])
        return request_spans(subtract(missing, self._evicted_ranges(device, topic, lo, hi)))

    def apply_reply(
        self, topic: str, lo: int, hi: int, evicted: Iterable[Range], summary: dict[str, Any]
    ) -> None:
        """A gateway's `sync.resend` answer for [lo, hi] of `topic`: record what it has
        evicted and settle the gaps that explains; note the answer on the gaps it covers."""
        name = parse_topic(topic, self.prefix)
        if name is None:
            raise ValueError(f"{topic} is not a telemetry topic")
        now = float(summary.get("at") or datetime.now(UTC).timestamp())
        with self.conn.transaction():
            self._lock_stream((name.device, topic))
            self._evicted(name.device, topic, list(evicted), "resend", "sync.resend reply", now)
            self.conn.execute(
                "UPDATE gaps SET last_reply = %s, last_error = NULL WHERE device = %s "
                "AND topic = %s AND to_seq >= %s AND from_seq <= %s",
                (Jsonb(summary), name.device, topic, lo, hi),
            )

    def note_error(self, gap_id: int, error: str) -> None:
        """The gateway refused a request for this gap (kept for the report)."""
        with self.conn.transaction():
            self.conn.execute("UPDATE gaps SET last_error = %s WHERE id = %s", (error, gap_id))
