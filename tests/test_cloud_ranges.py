"""The seq-range arithmetic of the cloud consumer, against plain sets (hypothesis); the
`sync.resend` reply parser and the telemetry classifier against anything a broker may hand
them."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.cloud.consumer import parse_reply
from edge_agent.cloud.ingest import Inbound, Rejected, Telemetry, classify
from edge_agent.contract.ranges import (
    complement,
    holes,
    intersect,
    merge,
    request_spans,
    size,
    subtract,
)

ranges = st.lists(
    st.tuples(st.integers(1, 300), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


def seqs(rs: list[tuple[int, int]]) -> set[int]:
    return {s for a, b in rs for s in range(a, b + 1)}


def canonical(rs: list[tuple[int, int]]) -> bool:
    return all(a <= b for a, b in rs) and all(
        b + 1 < c for (_, b), (c, _) in itertools.pairwise(rs)
    )


@settings(max_examples=200, deadline=None)
@given(ranges, ranges)
def test_merge_subtract_intersect_agree_with_sets(
    left: list[tuple[int, int]], right: list[tuple[int, int]]
) -> None:
    merged = merge(left)
    assert canonical(merged)
    assert seqs(merged) == seqs(left)
    assert size(merged) == len(seqs(left))
    cut = subtract(left, right)
    assert canonical(cut)
    assert seqs(cut) == seqs(left) - seqs(right)
    both = intersect(left, right)
    assert canonical(both)
    assert seqs(both) == seqs(left) & seqs(right)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 100)), st.lists(st.integers(1, 200), max_size=30))
def test_holes_are_the_seqs_skipped_above_the_last_stored(last: int | None, new: list[int]) -> None:
    found = holes(last, new)
    assert canonical(found)
    if not new:
        assert found == []
        return
    start = min(new) if last is None else last + 1
    expected = set(range(start, max(new) + 1)) - set(new)
    assert seqs(found) == expected
    assert seqs(complement(start, max(new), new)) == expected


@settings(max_examples=200, deadline=None)
@given(ranges, st.integers(1, 50))
def test_request_spans_cover_every_missing_seq_within_the_limit(
    missing: list[tuple[int, int]], limit: int
) -> None:
    spans = request_spans(missing, limit)
    assert canonical(spans) or all(b < c for (_, b), (c, _) in itertools.pairwise(spans))
    assert all(b - a + 1 <= limit for a, b in spans)
    assert seqs(missing) <= seqs(spans)
    wanted = seqs(missing)
    assert all(a in wanted and b in wanted for a, b in spans)  # never asks beyond a hole
    # Never more requests than one per hole plus one per `limit` seqs.
    assert len(spans) <= len(merge(missing)) + size(merge(missing)) // limit


REPLY_TOPIC = "edge/_consumers/me"


def _reply(result: object, *, device: str = "gw-1", ok: bool = True) -> Inbound:
    body = {"device": device, "id": "r1", "command": "sync.resend", "ok": ok, "result": result}
    return Inbound(REPLY_TOPIC, json.dumps(body).encode(), False, 0.0)


def test_a_well_formed_reply_is_read() -> None:
    result = {
        "topic": "edge/t1/s1/gw-1/results",
        "from_seq": 3,
        "to_seq": 9,
        "resent": [[3, 4], [5, 5]],
        "pending": [],
        "evicted": [[6, 9]],
        "unissued": [],
    }
    body = parse_reply(_reply(result), "edge", REPLY_TOPIC)
    assert isinstance(body, dict)
    assert body["result"]["resent"] == [(3, 5)]
    assert body["result"]["evicted"] == [(6, 9)]
    on_311 = Inbound("edge/t1/s1/gw-1/reply/sync.resend", _reply(result).payload, False, 0.0)
    assert isinstance(parse_reply(on_311, "edge", REPLY_TOPIC), dict)
    other = Inbound("edge/t1/s1/gw-2/reply/sync.resend", _reply(result).payload, False, 0.0)
    assert "not of the gateway that answered" in str(parse_reply(other, "edge", REPLY_TOPIC))


def test_replies_that_make_no_sense_are_refused() -> None:
    base = {"topic": "edge/t1/s1/gw-1/results", "from_seq": 3, "to_seq": 9}
    cases = [
        {**base, "evicted": [[1, 2]]},  # outside the request
        {**base, "evicted": [[5, 4]]},
        {**base, "evicted": [[5, True]]},
        {**base, "resent": "all"},
        {**base, "topic": "edge/t1/s1/gw-2/results"},  # another device's topic
        {**base, "topic": "edge/t1/s1/gw-1/status"},
        {**base, "from_seq": 0},
        {**base, "to_seq": 20_000},
        "nothing",
    ]
    for result in cases:
        assert isinstance(parse_reply(_reply(result), "edge", REPLY_TOPIC), str), result


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
REPLIES = st.fixed_dictionaries(
    {"device": st.just("gw-1"), "command": st.just("sync.resend"), "ok": st.booleans()},
    optional={
        "result": st.fixed_dictionaries(
            {},
            optional={
                "topic": st.sampled_from(["edge/t1/s1/gw-1/results", "x"]),
                "from_seq": JSON | st.integers(-2, 12),
                "to_seq": JSON | st.integers(-2, 12),
                "evicted": JSON,
                "resent": JSON,
            },
        )
        | JSON,
        "error": JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), JSON | REPLIES))
def test_the_reply_parser_never_raises(raw: bytes) -> None:
    got = parse_reply(Inbound(REPLY_TOPIC, raw, False, 0.0), "edge", REPLY_TOPIC)
    assert isinstance(got, dict | str)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["results", "status", "events", "heartbeat", "summary", "nope"]),
    st.binary(max_size=200)
    | st.builds(lambda v: json.dumps(v).encode(), JSON)
    | st.builds(
        lambda seq, extra: json.dumps(
            {"device": "gw-1", "seq": seq, "msg_id": "a" * 32, "ts": 1.0, **extra}
        ).encode(),
        st.integers(min_value=-5, max_value=2**70),
        st.dictionaries(st.text(max_size=6), JSON, max_size=4),
    ),
)
def test_classify_never_raises_and_keeps_only_storable_telemetry(kind: str, raw: bytes) -> None:
    got = classify(Inbound(f"edge/t1/s1/gw-1/{kind}", raw, False, 0.0), "edge")
    assert isinstance(got, Telemetry | Rejected)
    if isinstance(got, Telemetry):
        assert 1 <= got.payload.seq < 2**63
        assert "\x00" not in got.json()
