"""`CloudStore` against a private PostgreSQL: idempotent ingest, gateway status ordering, the
gap lifecycle (open → requested → repaired / evicted, reorderings forgotten), rejects, and
the report and its exit status. Messages are crafted (a healthy daemon never sends
duplicates with new ids, bad payloads or holes); the end-to-end tests use real daemons.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edge_agent.cloud import cli
from edge_agent.cloud.consumer import CloudConsumer, ConsumerOptions
from edge_agent.cloud.ingest import Telemetry, classify
from edge_agent.cloud.report import report
from edge_agent.cloud.store import CloudStore, RepairTiming
from tests.cloud_messages import evicted, heartbeat, inbound, items, results, status
from tests.postgres import Postgres

GW = "edge/t1/s1/gw-1"
RES = f"{GW}/results"


@pytest.fixture
def store(postgres: Postgres) -> Iterator[CloudStore]:
    with CloudStore(postgres.database(), timing=RepairTiming(grace_s=2.0, retry_s=5.0)) as s:
        s.ensure_schema()
        s.ensure_schema()  # idempotent
        yield s


def rows(store: CloudStore, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    out = store.conn.execute(sql, args).fetchall()  # type: ignore[call-overload]
    store.conn.rollback()
    return out


def write(store: CloudStore, *messages: tuple[str, Any], now: float | None = None) -> Any:
    return store.write(items("edge", *messages), time.time() if now is None else now)


def gaps(store: CloudStore) -> list[tuple[Any, ...]]:
    return rows(store, "SELECT from_seq, to_seq, state, missing, evicted FROM gaps ORDER BY id")


def test_duplicates_are_stored_once_and_conflicts_recorded(store: CloudStore) -> None:
    one, two = results("gw-1", 1), results("gw-1", 2)
    out = write(store, (RES, one), (RES, two), (RES, one))  # a copy within the batch
    assert (out.counts["accepted"], out.counts["duplicate"]) == (2, 1)
    out = write(store, (RES, two), (RES, results("gw-1", 2)))  # a re-send; a reused seq
    assert (out.counts["duplicate"], out.counts["conflict"]) == (1, 1)
    assert rows(store, "SELECT count(*) FROM messages") == [(2,)]
    assert rows(store, "SELECT received, duplicates, conflicts FROM streams") == [(2, 2, 1)]
    assert rows(store, "SELECT seq, stored_msg_id FROM conflicts") == [(2, two["msg_id"])]
    stored = rows(store, "SELECT payload FROM messages WHERE seq = 2")[0][0]
    assert stored["msg_id"] == two["msg_id"]


def test_rejects_keep_the_reason_and_zlib_payloads_are_read(store: CloudStore) -> None:
    bad = results("gw-1", 3)
    bad["count"] = 2
    spoofed = results("gw-2", 4)  # the payload names another device than the topic
    batch = [
        *items("edge", (RES, bad), (RES, spoofed), (RES, b"\xff not json")),
        classify(inbound(RES, results("gw-1", 1), zlib_=True), "edge"),
        *items("edge", (f"{GW}/cmd/ping", {"id": "1"})),
    ]
    out = store.write(batch, time.time())
    assert (out.counts["rejected"], out.counts["accepted"], out.counts["ignored"]) == (3, 1, 1)
    reasons = [r[0] for r in rows(store, "SELECT reason FROM rejects ORDER BY id")]
    assert "do not have count=2 entries" in reasons[0]
    assert "does not match the topic" in reasons[1]
    assert "not UTF-8 JSON" in reasons[2]


def test_gateway_status_follows_the_status_seq_not_arrival(store: CloudStore) -> None:
    """Birth and will share a connection's seq; a later connection has a higher one. An
    old retained `offline` arriving after a newer `online` must not flip the gateway."""
    topic = f"{GW}/status"

    def state() -> tuple[Any, ...]:
        return rows(store, "SELECT online, status_seq FROM gateways")[0]

    birth5 = status("gw-1", 5, "online")
    write(store, (topic, birth5))
    assert state() == (True, 5)
    write(store, (topic, status("gw-1", 3, "offline")))  # an older connection's will
    assert state() == (True, 5)
    write(store, (topic, status("gw-1", 5, "offline")))  # this connection ended
    assert state() == (False, 5)
    write(store, (topic, birth5))  # a re-announced birth of the ended connection
    assert state() == (False, 5)
    write(store, (topic, status("gw-1", 6, "online")), (f"{GW}/heartbeat", heartbeat("gw-1", 9)))
    assert state() == (True, 6)
    beat = rows(store, "SELECT last_heartbeat_seq, last_heartbeat_at IS NOT NULL FROM gateways")
    assert beat == [(9, True)]
    assert rows(store, "SELECT count(*) FROM status_log") == [(4,)]


def test_a_gap_is_asked_after_the_grace_period_and_repaired(store: CloudStore) -> None:
    t0 = time.time()
    write(store, *[(RES, results("gw-1", s)) for s in (1, 2, 6)], now=t0)
    assert gaps(store) == [(3, 5, "open", 3, 0)]
    assert store.claim_due(t0 + 1.0) == []  # within the grace period: may still come
    (due,) = store.claim_due(t0 + 2.5)
    assert (due.root, due.topic, due.spans, due.attempt) == (GW, RES, [(3, 5)], 1)
    assert store.claim_due(t0 + 2.6) == []  # claimed: asked again only after the retry delay
    write(store, (RES, results("gw-1", 4)), now=t0 + 3)
    assert gaps(store) == [(3, 5, "requested", 2, 0)]
    (again,) = store.claim_due(t0 + 20)
    assert (again.spans, again.attempt) == ([(3, 5)], 2)  # one span: 4 comes again, once
    write(store, (RES, results("gw-1", 3)), (RES, results("gw-1", 5)), now=t0 + 21)
    assert gaps(store) == [(3, 5, "repaired", 0, 0)]
    result = report(store.conn)
    topic = result["gateways"]["t1/s1/gw-1"]["topics"]["results"]
    assert topic["gaps"]["repaired_seqs"] == 3
    assert result["ok"], result["violations"]


def test_a_reordering_within_the_grace_period_is_no_gap(store: CloudStore) -> None:
    """Two writers (members of a shared subscription) each hold part of the stream."""
    t0 = time.time()
    write(store, *[(RES, results("gw-1", s)) for s in (1, 2, 4)], now=t0)
    with CloudStore(store.dsn) as other:
        other.write(items("edge", (RES, results("gw-1", 3))), t0 + 0.2)
    assert gaps(store) == []
    assert rows(store, "SELECT reordered, last_seq FROM streams") == [(1, 4)]


def test_evictions_from_events_and_replies_are_not_losses(store: CloudStore) -> None:
    t0 = time.time()
    events = f"{GW}/events"
    # Announced before the hole is seen: the gap is born evicted.
    write(store, (events, evicted("gw-1", 1, "results", 2, 3)), (RES, results("gw-1", 1)), now=t0)
    write(store, (RES, results("gw-1", 4)), now=t0)
    assert gaps(store) == [(2, 3, "evicted", 0, 2)]
    # A later hole, partly evicted as the reply says, the rest re-sent.
    write(store, (RES, results("gw-1", 9)), now=t0)
    (due,) = store.claim_due(t0 + 3)
    assert due.spans == [(5, 8)]
    summary = {"resent": 2, "pending": 0, "evicted": 2, "unissued": 0, "at": t0 + 3}
    store.apply_reply(RES, 5, 8, [(5, 6)], summary)
    assert gaps(store)[1] == (5, 8, "requested", 2, 2)
    write(store, (RES, results("gw-1", 7)), (RES, results("gw-1", 8)), now=t0 + 4)
    assert gaps(store)[1] == (5, 8, "evicted", 0, 2)
    sources = rows(store, "SELECT from_seq, to_seq, source FROM evictions ORDER BY from_seq")
    assert sources == [(2, 3, "event"), (5, 6, "resend")]
    result = report(store.conn)
    assert result["ok"], result["violations"]
    assert result["totals"]["evicted_seqs"] == 4


def test_an_online_gateway_that_went_quiet_is_reported_silent(
    store: CloudStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A will that never comes (NATS sends none when the node holding the session dies)
    must not leave a dead gateway `online` in the report for ever."""
    write(store, (f"{GW}/status", status("gw-1", 1, "online")))
    seen = time.time()

    def gateway(**kw: Any) -> Any:
        return report(store.conn, **kw)["gateways"]["t1/s1/gw-1"]

    assert (gateway(now=seen + 5)["silent"], gateway(now=seen + 5)["online"]) == (False, True)
    late = report(store.conn, now=seen + 91)
    assert (late["gateways"]["t1/s1/gw-1"]["silent"], late["totals"]["silent"]) == (True, 1)
    assert late["gateways"]["t1/s1/gw-1"]["quiet_s"] >= 91
    assert late["ok"], "silence is a state, not a data violation"
    assert gateway(now=seen + 91, silent_after_s=600)["silent"] is False
    # Heard from again 100 s later: 50 s after that it is not silent (it would be, 150 s
    # after the birth, had the heartbeat not counted).
    beat = inbound(f"{GW}/heartbeat", heartbeat("gw-1", 1), received=seen + 100)
    store.write([classify(beat, "edge")], seen + 100)
    assert gateway(now=seen + 150)["silent"] is False
    assert gateway(now=seen + 191)["silent"] is True
    write(store, (f"{GW}/status", status("gw-1", 1, "offline")))  # the will: offline, not silent
    assert gateway(now=time.time() + 1000)["silent"] is False
    assert cli.main(["report", "--dsn", store.dsn, "--silent-after", "nan"]) == 2
    assert "--silent-after must be > 0" in capsys.readouterr().err


def test_report_exit_status(store: CloudStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--dsn", store.dsn]) == 0
    write(store, *[(RES, results("gw-1", s)) for s in (1, 3)])
    assert cli.main(["report", "--dsn", store.dsn]) == 1
    text = capsys.readouterr().out
    last = json.loads(text[text.rindex('{\n  "ok"') :])
    assert last["ok"] is False
    assert last["violations"] == ["t1/s1/gw-1 results: seq gap 2..2 (1 missing, open)"]
    assert cli.main(["report", "--dsn", "host=127.0.0.1 port=1 connect_timeout=1"]) == 2


def test_from_first_counts_a_missed_beginning(store: CloudStore) -> None:
    """By default nothing before the first seq received is a gap (a consumer joining a
    running fleet); with `from_first` (the database predates the gateways) it is."""
    write(store, (RES, results("gw-1", 3)))
    assert gaps(store) == []
    with CloudStore(store.dsn, from_first=True) as early:
        early.write(items("edge", (f"{GW}/heartbeat", heartbeat("gw-1", 3))), time.time())
    assert gaps(store) == [(1, 2, "open", 2, 0)]


def test_what_postgresql_cannot_hold_is_rejected_not_fatal(store: CloudStore) -> None:
    """Values the contract's models accept but a database cannot store (NaN, infinity, a
    NUL in text, a seq beyond bigint) are rejected at the door; anything else the database
    refuses fails only its own message, never the batch (checked by handing the writer a
    message that skipped the door)."""
    nan = json.dumps(results("gw-1", 2)).replace('"confidence": [0.9]', '"confidence": [NaN]')
    nul = results("gw-1", 3)
    nul["sensor"] = "s\x00"
    huge = results("gw-1", 2**63)
    out = write(store, (RES, nan.encode()), (RES, nul), (RES, huge), (RES, results("gw-1", 1)))
    assert (out.counts["rejected"], out.counts["accepted"]) == (3, 1)
    reasons = [r[0] for r in rows(store, "SELECT reason FROM rejects ORDER BY id")]
    assert ["NaN or infinite" in reasons[0], "NUL" in reasons[1], "beyond" in reasons[2]] == [
        True,
        True,
        True,
    ]
    sneaked = classify(inbound(RES, results("gw-1", 4)), "edge")
    assert isinstance(sneaked, Telemetry)
    sneaked.message["sensor"] = "s\x00"  # past the door: PostgreSQL refuses it
    consumer = CloudConsumer(ConsumerOptions(), store)
    outcomes = consumer._write([classify(inbound(RES, results("gw-1", 5)), "edge"), sneaked], 0)
    assert sum(o.counts["accepted"] for o in outcomes) == 1
    assert "refused by the database" in rows(store, "SELECT reason FROM rejects ORDER BY id")[-1][0]
