"""No poison rows: whatever is read back from the store, the store opens and the rest flows.

Poison is written straight into real SQLite files with `sqlite3` (as damage, a hand edit or
another program would), then the store is opened and asked to pack and fetch. Every row
that cannot be used lands in the `quarantine` table with its reason, is announced by a
`store.quarantined` event and counted; every other row is packed or returned unchanged.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.metrics import Counters
from edge_agent.pipeline.results import ResultBatch
from edge_agent.store.checks import decode_payload, outbox_problem, parse_count, result_problem
from edge_agent.store.db import Store, enqueue, fetch_outbox, record_event
from edge_agent.store.meta import RESULTS_CURSOR
from edge_agent.store.results import insert_results, insert_summaries, pack_results
from edge_agent.store.retention import dropped_counters

ROOT = "edge/t/s/gw"


class Emitted:
    """A stand-in for the event bus's `emit` port that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(
        self, kind: str, severity: str = "info", sensor: str | None = None, **body: Any
    ) -> None:
        self.events.append((kind, severity, body))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [b for k, _, b in self.events if k == kind]


def _store(path: Path, emit: Emitted | None = None, counters: Counters | None = None) -> Store:
    store = Store(
        path,
        device_id="gw",
        topic_root=ROOT,
        emit=emit,
        inc=counters.inc if counters else None,
        reserve_bytes=0,
    )
    store.open()
    return store


def _fresh(path: Path) -> None:
    """Create the schema (then the test writes into the file directly)."""
    _store(path).close()


def _quarantine(path: Path) -> list[tuple[str, str | None, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT source, row_key, reason FROM quarantine ORDER BY id").fetchall()
    finally:
        conn.close()


T0 = float(int(time.time()))  # recent: the daemon's age cap must not take the test rows
GOOD_RESULT = ("s", "m", "1", T0, T0 + 1, "walk", 0.9)


def _insert_results(path: Path, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO results(sensor, model, model_version, t_start, t_end, label, confidence)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


def _insert_outbox(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Rows of (topic, kind, seq, payload, retain, encoding), priority 1."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO outbox(topic, kind, priority, seq, msg_id, payload, created, retain, "
            f"encoding) VALUES (?, ?, 1, ?, 'x', ?, {T0}, ?, ?)",
            rows,
        )
    conn.close()


POISON_RESULTS = [
    ("s", "m", "1", T0, T0 + 1, "walk", math.nan),  # NaN: SQLite stores NULL
    ("s", "m", "1", "abc", T0 + 1, "walk", 0.5),  # text where a time belongs
    ("s", "m", "1", T0, T0 + 1, "walk", math.inf),  # SQLite keeps infinity
    (b"\xff", "m", "1", T0, T0 + 1, "walk", 0.5),  # a blob as the sensor name
    ("s", "m", "1", T0, T0 + 1, b"\x00", 0.5),  # a blob as the label
    ("", "m", "1", T0, T0 + 1, "walk", 0.5),  # no sensor name
]

POISON_OUTBOX = [
    (f"{ROOT}/events", "events", 1, "text, not bytes", 0, None),
    (f"{ROOT}/events", "events", 2, b'{"not json', 0, None),
    (f"{ROOT}/events", "events", 3, b'{"x": NaN}', 0, None),
    (f"{ROOT}/events", "events", 4, b"\x78\x9cnot zlib", 0, "zlib"),
    (f"{ROOT}/#", "events", 5, b"{}", 0, None),
    (f"{ROOT}/events", "events", "five", b"{}", 0, None),
    (f"{ROOT}/events", "events", 6, b"{}", 7, None),
    (f"{ROOT}/events", "events", 7, b"{}", 0, "rot13"),
    (f"{ROOT}/events", "events", 8, b"[1, 2]", 0, None),
    (f"{ROOT}/events", "events", 9, 12345, 0, None),
    (f"{ROOT}/events", "events", 10, b"\xff\xfe{}", 0, None),
]


def test_results_that_cannot_be_packed_are_quarantined_and_the_rest_is_packed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "r.db"
    _fresh(db)
    _insert_results(db, [GOOD_RESULT] * 3 + POISON_RESULTS + [GOOD_RESULT] * 2)
    emit, counters = Emitted(), Counters()
    store = _store(db, emit, counters)
    try:
        moved = store.submit(pack_results(100)).result(10)
        rows = store.submit(fetch_outbox(100, set())).result(10)
    finally:
        store.close()
    assert moved == 3 + len(POISON_RESULTS) + 2
    (message,) = [json.loads(r.payload) for r in rows if r.kind == "results"]
    assert message["count"] == 5
    assert message["windows"]["confidence"] == [0.9] * 5
    quarantined = _quarantine(db)
    assert [q[0] for q in quarantined] == ["results"] * len(POISON_RESULTS)
    reasons = " | ".join(q[2] for q in quarantined)
    for needle in ("confidence is None", "t_start is 'abc'", "confidence is inf", "sensor is"):
        assert needle in reasons
    assert counters.get("store_quarantined", source="results") == len(POISON_RESULTS)
    assert sum(e["rows"] for e in emit.of("store.quarantined")) == len(POISON_RESULTS)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 5
    conn.close()


def test_outbox_rows_that_cannot_be_sent_are_quarantined_and_the_rest_is_fetched(
    tmp_path: Path,
) -> None:
    db = tmp_path / "o.db"
    store = _store(db)
    good = [store.submit(enqueue("heartbeat", {"n": i})).result(5) for i in range(3)]
    store.close()
    _insert_outbox(db, POISON_OUTBOX)
    emit = Emitted()
    store = _store(db, emit)
    try:
        rows = store.submit(fetch_outbox(2, set())).result(10)  # poison sorts first
        everything = store.submit(fetch_outbox(100, set())).result(10)
    finally:
        store.close()
    assert [json.loads(r.payload)["seq"] for r in rows] == good[:2]
    assert [r.kind for r in everything] == ["heartbeat"] * 3
    assert len(_quarantine(db)) == len(POISON_OUTBOX)
    assert sum(e["rows"] for e in emit.of("store.quarantined")) == len(POISON_OUTBOX)


def test_meta_topic_seq_and_counters_that_are_not_integers_do_not_stop_the_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "m.db"
    store = _store(db)
    for i in range(4):
        store.submit(enqueue("summary", {"n": i})).result(5)
    store.close()
    _insert_results(db, [GOOD_RESULT] * 3)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, 'garbage')", (RESULTS_CURSOR,))
        conn.execute("UPDATE topic_seq SET seq = 'x' WHERE topic = 'summary'")
        conn.execute("INSERT INTO dropped(class, count) VALUES ('outbox.results', 'many')")
        conn.execute("INSERT INTO dropped(class, count) VALUES ('results.history', 7)")
    conn.close()
    emit = Emitted()
    store = _store(db, emit)  # opens: the seq row is repaired at once
    try:
        seq = store.submit(enqueue("summary", {"n": 4})).result(5)
        moved = store.submit(pack_results(100)).result(5)
        dropped = store.submit(dropped_counters()).result(5)
    finally:
        store.close()
    assert seq == 5  # continues after the highest seq still in the outbox
    assert moved == 0  # the cursor was moved past every stored result (documented)
    assert dropped == {"results.history": 7}
    sources = sorted(q[0] for q in _quarantine(db))
    assert sources == ["dropped", "meta", "topic_seq"]
    assert {e["source"] for e in emit.of("store.quarantined")} == set(sources)


def test_nan_and_infinity_never_reach_a_row_or_a_payload_unannounced(tmp_path: Path) -> None:
    """Decided at the JSON layer (`allow_nan=False`) and at insert (finite check): the value
    is quarantined with a `store.quarantined` event, and no sequence number is used."""
    db = tmp_path / "n.db"
    emit = Emitted()
    store = _store(db, emit)
    try:
        assert store.submit(enqueue("heartbeat", {"rss_mb": math.nan})).result(5) == 0
        assert store.submit(record_event("x.y", {"v": math.inf})).result(5) == 0
        summary = {
            "sensor": "s",
            "model": "m",
            "model_version": "1",
            "interval_start": 1.0,
            "interval_end": 2.0,
            "mean_confidence": math.nan,
        }
        assert store.submit(insert_summaries([summary])).result(5) == 0
        batch = ResultBatch(
            sensor="s",
            model="m",
            version="1",
            labels=["a", "b"],
            t_start=np.array([1.0, 2.0, 3.0]),
            t_end=np.array([2.0, 3.0, math.inf]),
            label_index=np.array([0, 1, 0]),
            confidence=np.array([0.5, math.nan, 0.7], dtype=np.float32),
            recv_mono=0.0,
        )
        store.submit(insert_results([batch])).result(5)
        assert store.submit(enqueue("heartbeat", {"rss_mb": 1.0})).result(5) == 1
        rows = store.submit(fetch_outbox(100, set())).result(5)
    finally:
        store.close()
    assert [r.kind for r in rows] == ["heartbeat"]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT t_start, confidence FROM results").fetchall() == [(1.0, 0.5)]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM summaries").fetchone()[0] == 0
    conn.close()
    sources = [q[0] for q in _quarantine(db)]
    assert sources == ["outbox", "events", "summaries", "results"]
    assert len(emit.of("store.quarantined")) == 4


# -- the checks themselves, fuzzed ------------------------------------------------------------

_scalar = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_json_bytes = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
).map(lambda v: json.dumps(v).encode())
_payload = st.one_of(
    _scalar,
    _json_bytes,
    _json_bytes.map(zlib.compress),
    st.just(b'{"a": 1}'),
)


@settings(max_examples=300, deadline=None)
@given(
    row=st.tuples(
        st.integers(1, 100),
        st.one_of(_scalar, st.just(f"{ROOT}/events")),
        st.one_of(_scalar, st.just("events")),
        _scalar,
        _payload,
        st.one_of(_scalar, st.sampled_from([0, 1])),
        st.one_of(_scalar, st.sampled_from([None, "zlib"])),
    )
)
def test_outbox_check_never_raises_and_passes_only_publishable_rows(row: tuple[Any, ...]) -> None:
    problem = outbox_problem(row)
    if problem is None:
        _, topic, kind, seq, payload, _, encoding = row
        assert isinstance(topic, str)
        assert topic
        assert not set(topic) & set("+#\0")
        assert isinstance(kind, str)
        assert kind
        assert isinstance(seq, int)
        assert seq >= 0
        assert isinstance(decode_payload(payload, encoding), dict)
    else:
        assert isinstance(problem, str)
        assert problem


@settings(max_examples=300, deadline=None)
@given(
    row=st.tuples(
        st.integers(1, 100),
        st.one_of(_scalar, st.just("s")),
        st.one_of(_scalar, st.just("m")),
        st.one_of(_scalar, st.just("1")),
        _scalar,
        _scalar,
        st.one_of(_scalar, st.just("walk")),
        _scalar,
    )
)
def test_result_check_never_raises_and_passes_only_packable_rows(row: tuple[Any, ...]) -> None:
    if result_problem(row) is None:
        # What pack_results does with a row, and the JSON layer's refusal of NaN/inf.
        packed = {
            "sensor": row[1],
            "t_start": round(row[4], 3),
            "t_end": round(row[5], 3),
            "label": row[6],
            "confidence": round(row[7], 4),
        }
        json.dumps(packed, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(_scalar, st.integers(0, 10**12).map(str), st.booleans()))
def test_parse_count_accepts_only_non_negative_integers(value: object) -> None:
    try:
        number = parse_count(value)
    except ValueError:
        return
    assert isinstance(number, int)
    assert number >= 0
    assert not isinstance(value, bool | float | bytes)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.one_of(
            st.just(("good",)),
            st.tuples(
                st.one_of(_scalar, st.just(f"{ROOT}/events")),
                st.one_of(_scalar, st.just("events")),
                _scalar,
                _payload,
                st.one_of(_scalar, st.sampled_from([0, 1])),
                st.one_of(_scalar, st.sampled_from([None, "zlib"])),
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_stored_outbox_rows_open_and_flow(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[Any, ...]]
) -> None:
    """Arbitrary column values written with sqlite3 into a real file: the store opens,
    returns exactly the publishable rows and quarantines exactly the others."""
    db = tmp_path_factory.mktemp("fuzz") / "f.db"
    store = _store(db)
    written: list[tuple[Any, ...]] = []
    conn = sqlite3.connect(db)
    for row in rows:
        if row == ("good",):
            store.submit(enqueue("events", {"ok": True})).result(5)
            continue
        topic, kind, seq, payload, retain, encoding = row
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO outbox(topic, kind, priority, seq, msg_id, payload, created, "
                    "retain, encoding) VALUES (?, ?, 1, ?, 'x', ?, 0, ?, ?)",
                    (topic, kind, seq, payload, retain, encoding),
                )
        except sqlite3.IntegrityError:  # NOT NULL columns refuse NULL (and NaN) outright
            continue
        stored = conn.execute(
            "SELECT id, topic, kind, seq, payload, retain, encoding FROM outbox WHERE id = ?",
            (cur.lastrowid,),
        ).fetchone()
        written.append(stored)
    conn.close()
    store.close()
    expected_bad = {r[0] for r in written if outbox_problem(r) is not None}
    store = _store(db)
    try:
        fetched = store.submit(fetch_outbox(1000, set())).result(10)
    finally:
        store.close()
    assert all(isinstance(decode_payload(r.payload, r.encoding), dict) for r in fetched)
    assert not {r.id for r in fetched} & expected_bad
    assert {int(k) for _, k, _ in _quarantine(db) if k is not None} == expected_bad


def test_a_daemon_starts_on_a_poisoned_database_and_sends_everything_else(
    tmp_path: Path,
) -> None:
    """The whole daemon, a real mosquitto and a database poisoned with `sqlite3` in every
    table it reads back: it starts, quarantines the poison (announced by events the
    consumer receives) and the good results and messages all arrive."""
    from edge_agent.contract import ContractChecker
    from tests.broker import Mosquitto, collector, wait_for
    from tests.daemon_proc import start_daemon, stop_daemon, write_config

    db = tmp_path / "agent.db"
    root = "edge/t1/s1/gw-poison"
    store = Store(db, device_id="gw-poison", topic_root=root, reserve_bytes=0)
    store.open()
    store.submit(record_event("sensor.lost", {"detail": "before"})).result(5)
    store.close()
    _insert_results(db, [GOOD_RESULT] * 3 + POISON_RESULTS + [GOOD_RESULT] * 2)
    _insert_outbox(db, [(root + t[0].removeprefix(ROOT), *t[1:]) for t in POISON_OUTBOX])
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('status_reservation', '{broken')")
        conn.execute("INSERT INTO topic_seq(topic, seq) VALUES ('summary', 'x')")
        conn.execute("INSERT INTO dropped(class, count) VALUES ('outbox.results', 'many')")
        conn.execute(
            "INSERT INTO events(ts, kind, sensor, severity, body) "
            "VALUES (1, NULL, 5, 'x', 'not json')"
        )
    conn.close()
    with Mosquitto(tmp_path) as broker, collector(broker.port, root + "/#") as sub:
        config = write_config(
            tmp_path / "agent.toml",
            db=db,
            mqtt_port=broker.port,
            device="gw-poison",
            sensors=[{"name": "imu-0", "link": "emulated", "enabled": False}],
        )
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        try:

            def results() -> int:
                return sum(
                    m.payload["count"] for m in sub.of("results") if m.payload["sensor"] == "s"
                )

            wait_for(lambda: results() >= 5, 30, "the good results")
            wait_for(lambda: sub.of("heartbeat"), 30, "a heartbeat")
            wait_for(
                lambda: any(
                    m.payload.get("store", {}).get("quarantined") for m in sub.of("heartbeat")
                ),
                30,
                "a heartbeat counting the quarantine",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            stop_daemon(proc, log)
        assert results() == 5
        lost = [m for m in sub.of("events") if m.payload["event"] == "sensor.lost"]
        assert [m.payload["detail"] for m in lost] == ["before"]
        announced = [
            m.payload for m in sub.of("events") if m.payload["event"] == "store.quarantined"
        ]
        assert {e["source"] for e in announced} >= {"results", "outbox", "meta", "topic_seq"}
        checker = ContractChecker()
        for m in list(sub.messages):
            checker.feed(m.topic, m.payload)
        assert checker.violations == [], "\n".join(checker.violations)
    quarantined = _quarantine(db)
    assert sum(1 for q in quarantined if q[0] == "results") == len(POISON_RESULTS)
    assert sum(1 for q in quarantined if q[0] == "outbox") == len(POISON_OUTBOX)


def test_a_payload_changed_after_the_store_wrote_it_is_checked_again(tmp_path: Path) -> None:
    """Rows the store encoded carry the payload's CRC-32 and are not parsed again; a payload
    that no longer matches it (damage, a hand edit) is parsed, and quarantined if it is not
    JSON any more."""
    db = tmp_path / "c.db"
    store = _store(db)
    store.submit(enqueue("events", {"n": 1})).result(5)
    store.submit(enqueue("events", {"n": 2})).result(5)
    store.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE outbox SET payload = CAST('{\"n\": NaN}' AS BLOB) WHERE seq = 1")
    conn.close()
    store = _store(db)
    try:
        rows = store.submit(fetch_outbox(10, set())).result(5)
    finally:
        store.close()
    assert [json.loads(r.payload)["n"] for r in rows] == [2]
    assert [q[0] for q in _quarantine(db)] == ["outbox"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cursor=st.one_of(_scalar, st.integers(0, 10**9).map(str)),
    reservation=st.one_of(_scalar, _json_bytes.map(bytes.decode)),
)
def test_any_meta_value_reads_as_a_usable_one(
    tmp_path_factory: pytest.TempPathFactory, cursor: object, reservation: object
) -> None:
    """Whatever the `meta` table holds, reading it gives a usable value (or none) and a
    value that was not usable is in the quarantine, never an exception."""
    from edge_agent.store.meta import get_json, results_cursor
    from edge_agent.store.txn import Txn
    from edge_agent.sync.mqtt import _check_reservation

    db = tmp_path_factory.getbasetemp() / "meta-fuzz.db"
    if not db.exists():
        _fresh(db)
    conn = sqlite3.connect(db, isolation_level=None)
    store = Store(db, device_id="gw", topic_root=ROOT, reserve_bytes=0)
    conn.execute("BEGIN")
    try:
        conn.execute("DELETE FROM meta")
        conn.execute("INSERT INTO meta(key, value) VALUES ('results_cursor', ?)", (cursor,))
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('status_reservation', ?)", (reservation,)
        )
        txn = Txn(store, conn)
        value = results_cursor(txn)
        saved = get_json(txn, "status_reservation", _check_reservation)
        assert isinstance(value, int)
        assert value >= 0
        if saved is not None:
            assert parse_count(saved["seq"]) >= 0
            assert isinstance(saved["used"], bool)
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        assert quarantined == len(txn.quarantined)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
