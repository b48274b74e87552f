"""The reference consumer flags exactly what docs/mqtt.md says a consumer must notice."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.contract import ContractChecker, Ledger


def _msg(seq: int, msg_id: str) -> dict[str, object]:
    return {"device": "gw", "seq": seq, "msg_id": msg_id, "ts": 1.0}


def test_in_order_messages_pass() -> None:
    c = ContractChecker()
    for i in range(1, 6):
        assert c.feed("edge/t/s/gw/heartbeat", _msg(i, f"id{i}")) is not None
    assert c.violations == []
    assert c.topics["edge/t/s/gw/heartbeat"].received == 5


def test_duplicate_is_dropped_not_a_violation() -> None:
    c = ContractChecker()
    c.feed("edge/t/s/gw/events", _msg(1, "a"))
    assert c.feed("edge/t/s/gw/events", _msg(1, "a")) is None
    assert c.violations == []
    assert c.topics["edge/t/s/gw/events"].duplicates == 1


def test_gap_regression_and_bad_envelope_are_violations() -> None:
    c = ContractChecker()
    c.feed("edge/t/s/gw/summary", _msg(1, "a"))
    c.feed("edge/t/s/gw/summary", _msg(4, "b"))
    c.feed("edge/t/s/gw/summary", _msg(2, "c"))
    c.feed("edge/t/s/gw/summary", b"{not json")
    c.feed("edge/t/s/gw/summary", {"seq": 5})
    c.feed("edge/t/s/gw/bogus", _msg(1, "z"))
    assert c.topics["edge/t/s/gw/summary"].gaps == [(2, 3)]
    assert len(c.violations) == 5


def test_status_seq_numbers_connections() -> None:
    c = ContractChecker()
    for seq, mid in ((1, "a"), (1, "b"), (3, "c"), (3, "d")):
        c.feed("edge/t/s/gw/status", _msg(seq, mid))
    assert c.violations == []
    c.feed("edge/t/s/gw/status", _msg(2, "e"))
    assert len(c.violations) == 1


def test_announced_eviction_explains_a_gap_and_commands_are_ignored() -> None:
    """A gap covered by an `outbox.evicted` notice is a policy drop, not a violation; with a
    prefix, command and reply topics are not telemetry."""
    c = ContractChecker(prefix="edge")
    c.feed("edge/t/s/gw/results", _msg(1, "a"))
    notice = {
        **_msg(1, "n"),
        "event": "outbox.evicted",
        "severity": "warning",
        "sensor": None,
        "event_ts": 1.0,
        "topic": "results",
        "seq_from": 2,
        "seq_to": 4,
        "messages": 3,
        "reason": "disk cap",
    }
    c.feed("edge/t/s/gw/events", notice)
    c.feed("edge/t/s/gw/results", _msg(5, "b"))
    c.feed("edge/t/s/gw/cmd/ping", b"{}")
    assert c.violations == []
    assert c.topics["edge/t/s/gw/results"].evicted_gaps == [(2, 4)]
    assert c.ignored == 1


def _heartbeat(seq: int, msg_id: str, device: str = "gw") -> bytes:
    body = {
        "device": device,
        "seq": seq,
        "msg_id": msg_id * 32,
        "ts": 1.0,
        "version": "0.1.0",
        "uptime_s": 1.0,
        "cpu_s": 0.1,
        "rss_mb": 10.0,
        "sensors": {},
        "windows_committed": 0,
        "outbox_depth": 0,
        "store": {
            "commits": 0,
            "failed_commits": 0,
            "last_error": None,
            "disk_full": False,
            "dropped": {},
        },
        "mqtt": {"connected": True, "published": 0, "acked": 0, "last_error": None},
    }
    return json.dumps(body).encode()


def _status(seq: int, msg_id: str, state: str) -> bytes:
    body = {"device": "gw", "seq": seq, "msg_id": msg_id * 32, "ts": 1.0, "state": state}
    return json.dumps({**body, "tenant": "t", "site": "s"}).encode()


def test_ledger_report_from_a_real_sqlite_file(tmp_path: Path) -> None:
    """The SQLite ledger: duplicates and how far back they reach, gaps counted from seq 1,
    conflicts, status seq shared by online and offline, and the report survives a reopen."""
    db = tmp_path / "ledger.db"
    topic = "edge/t/s/gw/heartbeat"
    with Ledger(db) as ledger:
        outcomes = [
            ledger.record(topic, _heartbeat(2, "b"), received=2.0),
            ledger.record(topic, _heartbeat(3, "c"), received=3.0),
            ledger.record(topic, _heartbeat(4, "d"), received=4.0),
            ledger.record(topic, _heartbeat(2, "b"), received=5.0),
            ledger.record(topic, _heartbeat(3, "e"), received=6.0),
            ledger.record("edge/t/s/other/heartbeat", _heartbeat(1, "f"), received=7.0),
            ledger.record("edge/t/s/gw/status", _status(1, "1", "online")),
            ledger.record("edge/t/s/gw/status", _status(1, "2", "offline")),
            ledger.record("edge/t/s/gw/status", _status(3, "3", "online")),
        ]
    assert outcomes == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "conflict",
        "rejected",  # payload device "gw" on the topic of gateway "other"
        "accepted",
        "accepted",
        "accepted",
    ]
    with Ledger(db) as ledger:
        report = ledger.report(expect_from_first=True, inflight_window=2)
        ledger.record("edge/t/s/gw/status", _status(2, "4", "offline"))
        went_back = ledger.report()
    hb = report["gateways"]["t/s/gw"]["topics"]["heartbeat"]
    assert (hb["gaps"], hb["missing"], hb["duplicates"], hb["max_duplicate_lag"]) == (
        [[1, 1]],
        1,
        1,
        2,
    )
    status = report["gateways"]["t/s/gw"]["topics"]["status"]
    assert (status["received"], status["missing"], status["conflicts"]) == (3, 0, 0)
    assert report["gateways"]["t/s/gw"]["state"] == "online"
    assert report["totals"]["rejected"] == 1
    assert not report["ok"]
    assert set(report["violations"]) == {
        "edge/t/s/other/heartbeat: rejected: heartbeat payload: device: 'gw' does not match "
        "the topic's 'other'",
        "t/s/gw heartbeat: seq reused with a new msg_id (1 messages)",
        "t/s/gw heartbeat: a duplicate reached 2 messages back, beyond the in-flight window of 2",
        "t/s/gw heartbeat: seq gap 1..1",
    }
    assert "t/s/gw status: status seq went back (1 messages)" in went_back["violations"]
