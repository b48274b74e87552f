"""The reference consumer flags exactly what docs/mqtt.md says a consumer must notice."""

from __future__ import annotations

from edge_agent.contract import ContractChecker


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
