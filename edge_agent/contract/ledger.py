"""`Ledger`: every accepted message in a SQLite file, and the contract report computed from it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.contract.payloads import (
    PayloadError,
    decode_payload,
    parse_payload,
    undocumented_keys,
)
from edge_agent.contract.ranges import subtract
from edge_agent.contract.topics import parse_topic

__all__ = ["MAX_LISTED", "Ledger"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY,
    gateway TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    ts REAL NOT NULL,
    received REAL NOT NULL,
    retained INTEGER NOT NULL,
    late INTEGER NOT NULL,
    undocumented TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_seq ON messages(gateway, kind, seq);
CREATE INDEX IF NOT EXISTS messages_msg_id ON messages(gateway, kind, msg_id);
CREATE TABLE IF NOT EXISTS duplicates(
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL, received REAL NOT NULL, retained INTEGER NOT NULL,
    lag INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts(
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected(
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, received REAL NOT NULL, reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ignored(topic TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""

MAX_LISTED = 50
"""Gap ranges, violations and samples listed per entry of a report (the counts are complete)."""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[k]


class Ledger:
    """Every accepted message in a SQLite file, and the contract report computed from it.

    `record` runs inside a transaction that `commit` closes, so a consumer batches its
    writes; call `commit` a few times a second and before reading the report. Not
    thread-safe: callers serialise access. Several processes may share the file (WAL,
    serialised writers).
    """

    def __init__(self, path: Path | str, *, prefix: str = "edge") -> None:
        self.path = Path(path)
        self.prefix = prefix
        # Used from whichever thread the caller serialises access on (paho's network thread
        # records, the main thread commits).
        self.conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=30.0, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self._in_txn = False
        self._closed = False
        self.pending = 0

    def close(self) -> None:
        """Commit and close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.commit()
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> None:
        if not self._in_txn:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_txn = True

    def commit(self) -> None:
        """Make everything recorded so far durable and visible to other readers."""
        if self._in_txn:
            self.conn.execute("COMMIT")
            self._in_txn = False
            self.pending = 0

    def record(
        self,
        topic: str,
        raw: bytes,
        *,
        retained: bool = False,
        received: float | None = None,
        content_encoding: str | None = None,
    ) -> str:
        """Check and store one message as it arrived.

        Returns:
            What happened to it: `accepted`, `duplicate` (its `msg_id` is stored already),
            `conflict` (a different message with a stored seq; never on `status`, whose
            seq numbers connections and is shared by their online and offline), `rejected`
            (it breaks the
            contract; kept in the `rejected` table with the reason) or `ignored` (not
            gateway telemetry).
        """
        now = time.time() if received is None else received
        self._begin()
        self.pending += 1
        name = parse_topic(topic, self.prefix)
        if name is None:
            self.conn.execute(
                "INSERT INTO ignored(topic, count) VALUES (?, 1) "
                "ON CONFLICT(topic) DO UPDATE SET count = count + 1",
                (topic,),
            )
            return "ignored"
        try:
            message = decode_payload(raw, content_encoding, name.kind)
            payload = parse_payload(name.kind, message)
            if payload.device != name.device:
                raise PayloadError(
                    name.kind,
                    [f"device: {payload.device!r} does not match the topic's {name.device!r}"],
                )
        except PayloadError as err:
            self.conn.execute(
                "INSERT INTO rejected(topic, received, reason, payload) VALUES (?, ?, ?, ?)",
                (topic, now, str(err), raw),
            )
            return "rejected"
        gw, kind, seq = name.gateway, name.kind, payload.seq
        top = self.conn.execute(
            "SELECT max(seq) FROM messages WHERE gateway = ? AND kind = ?", (gw, kind)
        ).fetchone()[0]
        if self.conn.execute(
            "SELECT 1 FROM messages WHERE gateway = ? AND kind = ? AND msg_id = ?",
            (gw, kind, payload.msg_id),
        ).fetchone():
            lag = (top - seq) if top is not None else 0
            self.conn.execute(
                "INSERT INTO duplicates(gateway, kind, seq, msg_id, received, retained, lag) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (gw, kind, seq, payload.msg_id, now, int(retained), lag),
            )
            return "duplicate"
        text = json.dumps(message, separators=(",", ":"))
        # `status` seq numbers connections: online and offline of one connection share it.
        if (
            kind != "status"
            and self.conn.execute(
                "SELECT 1 FROM messages WHERE gateway = ? AND kind = ? AND seq = ?", (gw, kind, seq)
            ).fetchone()
        ):
            self.conn.execute(
                "INSERT INTO conflicts(gateway, kind, seq, msg_id, received, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (gw, kind, seq, payload.msg_id, now, text),
            )
            return "conflict"
        extra = undocumented_keys(payload)
        self.conn.execute(
            "INSERT INTO messages(gateway, kind, seq, msg_id, ts, received, retained, late, "
            "undocumented, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                gw,
                kind,
                seq,
                payload.msg_id,
                payload.ts,
                now,
                int(retained),
                int(top is not None and seq < top),
                json.dumps(extra) if extra else None,
                text,
            ),
        )
        return "accepted"

    # -- reading -------------------------------------------------------------------------------

    def last_seqs(self) -> dict[tuple[str, str], int]:
        """Highest seq stored per (gateway, kind): cheap progress for a waiting caller."""
        rows = self.conn.execute(
            "SELECT gateway, kind, max(seq) FROM messages GROUP BY gateway, kind"
        ).fetchall()
        return {(g, k): int(s) for g, k, s in rows}

    def count(self, kind: str | None = None) -> int:
        """Accepted messages stored (of one kind)."""
        if kind is None:
            return int(self.conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        return int(
            self.conn.execute("SELECT count(*) FROM messages WHERE kind = ?", (kind,)).fetchone()[0]
        )

    def payloads(self, kind: str, gateway: str | None = None) -> list[dict[str, Any]]:
        """Stored payloads of one kind, in seq order (of one gateway, or all)."""
        sql = "SELECT payload FROM messages WHERE kind = ?"
        args: tuple[Any, ...] = (kind,)
        if gateway is not None:
            sql += " AND gateway = ?"
            args = (kind, gateway)
        rows = self.conn.execute(sql + " ORDER BY gateway, seq", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def _evictions(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        rows = self.conn.execute(
            "SELECT gateway, payload FROM messages WHERE kind = 'events' "
            "AND json_extract(payload, '$.event') = 'outbox.evicted'"
        ).fetchall()
        for gw, text in rows:
            body = json.loads(text)
            key = (gw, str(body["topic"]))
            out.setdefault(key, []).append((int(body["seq_from"]), int(body["seq_to"])))
        return out

    def report(
        self,
        *,
        expect_from_first: bool = False,
        inflight_window: int | None = None,
        check_order: bool = False,
    ) -> dict[str, Any]:
        """The contract report over everything stored.

        Args:
            expect_from_first: Count seqs below the first one received as missing (the
                consumer was subscribed before the gateways first published).
            inflight_window: When given, a duplicate `inflight_window` or more messages
                behind the newest seq already stored is a violation (re-sends after a
                crash come only from the messages that were in flight).
            check_order: A new message arriving after a higher seq of its topic is a
                violation (one consumer of a gateway's topics sees them in creation
                order; members of a shared subscription store in their own order, so
                leave it off there).

        Returns:
            A JSON-ready dict: `ok`, `totals`, `gateways` (per gateway and topic kind:
            received, first/last seq, missing with gap ranges, evicted by policy,
            duplicates and how far back they reached, out-of-order arrivals, conflicts,
            undocumented keys, latency from `ts` to arrival), `violations`, `rejected`.
        """
        self.commit()
        conn = self.conn
        evictions = self._evictions()
        violations: list[str] = []
        gateways: dict[str, dict[str, Any]] = {}
        streams = conn.execute(
            "SELECT gateway, kind, count(*), min(seq), max(seq), sum(late) FROM messages "
            "GROUP BY gateway, kind ORDER BY gateway, kind"
        ).fetchall()
        for gw, kind, received, first, last, late in streams:
            seqs = [
                int(r[0])
                for r in conn.execute(
                    "SELECT seq FROM messages WHERE gateway = ? AND kind = ? ORDER BY seq",
                    (gw, kind),
                )
            ]
            start = 1 if expect_from_first else first
            evicted = sorted(evictions.get((gw, kind), []))
            gaps: list[tuple[int, int]] = []
            evicted_missing = 0
            expected = start
            # `status` seq numbers accepted connections, so unused numbers are not losses;
            # there the only rule is that it never goes back (counted as out of order).
            for s in [] if kind == "status" else [*seqs, last + 1]:
                if s > expected:
                    hole = (expected, s - 1)
                    rest = subtract([hole], evicted)
                    gaps += rest
                    evicted_missing += (hole[1] - hole[0] + 1) - sum(b - a + 1 for a, b in rest)
                expected = max(expected, s + 1)
            missing = sum(b - a + 1 for a, b in gaps)
            dup = conn.execute(
                "SELECT count(*), COALESCE(max(lag), 0), COALESCE(sum(retained), 0) "
                "FROM duplicates WHERE gateway = ? AND kind = ?",
                (gw, kind),
            ).fetchone()
            conflicts = conn.execute(
                "SELECT count(*) FROM conflicts WHERE gateway = ? AND kind = ?", (gw, kind)
            ).fetchone()[0]
            undocumented: set[str] = set()
            for (text,) in conn.execute(
                "SELECT DISTINCT undocumented FROM messages WHERE gateway = ? AND kind = ? "
                "AND undocumented IS NOT NULL",
                (gw, kind),
            ):
                undocumented.update(json.loads(text))
            latencies = [
                r[0] * 1000.0
                for r in conn.execute(
                    "SELECT received - ts FROM messages WHERE gateway = ? AND kind = ? "
                    "AND retained = 0",
                    (gw, kind),
                )
            ]
            entry: dict[str, Any] = {
                "received": received,
                "first_seq": first,
                "last_seq": last,
                "missing": missing,
                "gaps": [list(g) for g in gaps[:MAX_LISTED]],
                "evicted_by_policy": evicted_missing,
                "duplicates": dup[0],
                "duplicates_retained": dup[2],
                "max_duplicate_lag": dup[1],
                "out_of_order": late,
                "conflicts": conflicts,
                "undocumented_keys": sorted(undocumented),
                "latency_ms": {
                    "p50": _round(_percentile(latencies, 50)),
                    "p99": _round(_percentile(latencies, 99)),
                    "max": _round(max(latencies) if latencies else None),
                },
            }
            if kind == "results":
                entry["windows"] = conn.execute(
                    "SELECT COALESCE(sum(json_extract(payload, '$.count')), 0) FROM messages "
                    "WHERE gateway = ? AND kind = 'results'",
                    (gw,),
                ).fetchone()[0]
            gateways.setdefault(gw, {"topics": {}})["topics"][kind] = entry
            where = f"{gw} {kind}"
            violations += [f"{where}: seq gap {a}..{b}" for a, b in gaps]
            if conflicts:
                violations.append(f"{where}: seq reused with a new msg_id ({conflicts} messages)")
            if kind == "status" and late:
                violations.append(f"{where}: status seq went back ({late} messages)")
            elif check_order and late:
                violations.append(f"{where}: arrived after a higher seq ({late} messages)")
            if inflight_window is not None and dup[1] >= inflight_window:
                violations.append(
                    f"{where}: a duplicate reached {dup[1]} messages back, beyond the "
                    f"in-flight window of {inflight_window}"
                )
        for gw, info in gateways.items():
            row = conn.execute(
                "SELECT json_extract(payload, '$.state') FROM messages "
                "WHERE gateway = ? AND kind = 'status' ORDER BY seq DESC, ts DESC LIMIT 1",
                (gw,),
            ).fetchone()
            info["state"] = row[0] if row else None
        rejected_n = conn.execute("SELECT count(*) FROM rejected").fetchone()[0]
        rejected = [
            {"topic": t, "reason": r}
            for t, r in conn.execute(
                "SELECT topic, reason FROM rejected ORDER BY id LIMIT ?", (MAX_LISTED,)
            )
        ]
        violations += [f"{r['topic']}: rejected: {r['reason']}" for r in rejected]
        totals = {
            "accepted": self.count(),
            "duplicates": conn.execute("SELECT count(*) FROM duplicates").fetchone()[0],
            "conflicts": conn.execute("SELECT count(*) FROM conflicts").fetchone()[0],
            "rejected": rejected_n,
            "ignored": conn.execute("SELECT COALESCE(sum(count), 0) FROM ignored").fetchone()[0],
            "gateways": len(gateways),
        }
        return {
            "ok": not violations,
            "totals": totals,
            "gateways": gateways,
            "violations": violations[: MAX_LISTED * 4],
            "violations_total": len(violations),
            "rejected": rejected,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
