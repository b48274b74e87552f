"""The consumer's report: what PostgreSQL holds, per gateway and topic, as JSON."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, LiteralString

import psycopg

__all__ = ["MAX_LISTED", "SILENT_AFTER_S", "report"]

MAX_LISTED = 50
"""Gaps, rejects and violations listed (the counts are complete)."""

SILENT_AFTER_S = 90.0
"""An online gateway heard from longer ago than this is reported `silent`: three heartbeats
at the default `sync.heartbeat_interval_s` (30 s). Its last will may never come: NATS does
not send it when the node that held the session dies (docs/brokers.md)."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def report(
    conn: psycopg.Connection[Any],
    *,
    silent_after_s: float = SILENT_AFTER_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything stored, checked.

    Args:
        conn: The consumer's database.
        silent_after_s: An online gateway with no live message for this long is `silent`.
        now: Unix seconds to judge silence at (default: the clock).

    Returns:
        A JSON-ready dict: `ok`, `totals`, `gateways` (online state, `silent`, `quiet_s`
        since the last live message, last heartbeat and message; per topic kind: received,
        first/last seq, duplicates, conflicts, reordered arrivals, and gaps by state — `open`
        (missing, not asked yet or being asked), `repaired`, `evicted` (dropped by the
        gateway's policy, not losses)), `violations` (seqs still missing, conflicts,
        rejected payloads), `rejected`.
    """
    at = time.time() if now is None else now
    gateways: dict[str, dict[str, Any]] = {}
    for tenant, site, device, online, seq, last_beat, last_seen in conn.execute(
        "SELECT tenant, site, device, online, status_seq, last_heartbeat_at, last_seen_at "
        "FROM gateways ORDER BY tenant, site, device"
    ):
        quiet_s = max(0.0, at - last_seen.timestamp())
        gateways[f"{tenant}/{site}/{device}"] = {
            "online": online,
            "silent": bool(online) and quiet_s > silent_after_s,
            "quiet_s": round(quiet_s, 1),
            "status_seq": seq,
            "last_heartbeat_at": _iso(last_beat),
            "last_seen_at": _iso(last_seen),
            "topics": {},
        }
    gap_stats: dict[tuple[str, str], dict[str, Any]] = {}
    for device, topic, state, n, missing, evicted, span in conn.execute(
        "SELECT device, topic, state, count(*), sum(missing), sum(evicted), "
        "sum(to_seq - from_seq + 1) FROM gaps GROUP BY device, topic, state"
    ):
        entry = gap_stats.setdefault((device, topic), _empty_gaps())
        if state in ("open", "requested"):
            entry["open"] += n
            entry["missing"] += int(missing)
            entry["evicted"] += int(evicted)
        elif state == "repaired":
            entry["repaired"] += n
            entry["repaired_seqs"] += int(span) - int(evicted)
        else:
            entry["evicted_gaps"] += n
            entry["evicted"] += int(evicted)
    violations: list[str] = []
    open_rows = conn.execute(
        "SELECT device, topic, from_seq, to_seq, state, missing, attempts, last_error "
        "FROM gaps WHERE state IN ('open', 'requested') ORDER BY device, topic, from_seq"
    ).fetchall()
    listed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for device, topic, lo, hi, state, missing, attempts, error in open_rows:
        items = listed.setdefault((device, topic), [])
        if len(items) < MAX_LISTED:
            items.append(
                {
                    "from_seq": lo,
                    "to_seq": hi,
                    "state": state,
                    "missing": missing,
                    "attempts": attempts,
                    "last_error": error,
                }
            )
        gw = topic.rsplit("/", 4)
        where = f"{'/'.join(gw[1:4])} {gw[4]}"
        violations.append(f"{where}: seq gap {lo}..{hi} ({missing} missing, {state})")
    for row in conn.execute(
        "SELECT device, topic, tenant, site, kind, first_seq, last_seq, received, duplicates, "
        "conflicts, reordered FROM streams ORDER BY tenant, site, device, kind"
    ):
        device, topic, tenant, site, kind, first, last, received, dups, conflicts, reordered = row
        gw = f"{tenant}/{site}/{device}"
        info = gateways.setdefault(
            gw,
            {
                "online": None,
                "silent": False,
                "quiet_s": None,
                "status_seq": None,
                "last_heartbeat_at": None,
                "last_seen_at": None,
                "topics": {},
            },
        )
        gaps = gap_stats.get((device, topic), _empty_gaps())
        gaps["listed"] = listed.get((device, topic), [])
        info["topics"][kind] = {
            "received": received,
            "first_seq": first,
            "last_seq": last,
            "duplicates": dups,
            "conflicts": conflicts,
            "reordered": reordered,
            "gaps": gaps,
        }
        if conflicts:
            violations.append(f"{gw} {kind}: seq reused with a new msg_id ({conflicts} messages)")
    rejected_n = _scalar(conn, "SELECT count(*) FROM rejects")
    rejected = [
        {"topic": t, "reason": r}
        for t, r in conn.execute(
            "SELECT topic, reason FROM rejects ORDER BY id LIMIT %s", (MAX_LISTED,)
        )
    ]
    violations += [f"{r['topic']}: rejected: {r['reason']}" for r in rejected]
    totals = {
        "messages": _scalar(conn, "SELECT count(*) FROM messages"),
        "duplicates": _scalar(conn, "SELECT coalesce(sum(duplicates), 0) FROM streams"),
        "conflicts": _scalar(conn, "SELECT coalesce(sum(conflicts), 0) FROM streams"),
        "rejected": rejected_n,
        "ignored": _scalar(conn, "SELECT coalesce(sum(count), 0) FROM ignored"),
        "gateways": len(gateways),
        "online": sum(1 for g in gateways.values() if g["online"]),
        "silent": sum(1 for g in gateways.values() if g["silent"]),
        "missing": sum(g["missing"] for g in gap_stats.values()),
        "repaired_seqs": sum(g["repaired_seqs"] for g in gap_stats.values()),
        "evicted_seqs": sum(g["evicted"] for g in gap_stats.values()),
    }
    return {
        "ok": not violations,
        "totals": totals,
        "gateways": gateways,
        "violations": violations[: MAX_LISTED * 4],
        "violations_total": len(violations),
        "rejected": rejected,
    }


def _empty_gaps() -> dict[str, Any]:
    return {
        "open": 0,
        "missing": 0,
        "repaired": 0,
        "repaired_seqs": 0,
        "evicted_gaps": 0,
        "evicted": 0,
    }


def _scalar(conn: psycopg.Connection[Any], sql: LiteralString) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0
