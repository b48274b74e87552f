"""Delivered messages kept for resend requests, on a real SQLite file (no broker needed)."""

from __future__ import annotations

import sqlite3
import time
import zlib
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.store.db import Store, Txn, fetch_outbox
from edge_agent.store.delivered import ack_outbox, delivered_rows, ranges, resend_range
from edge_agent.store.retention import dropped_counters, enforce_limits, used_bytes
from edge_agent.store.schema import MIGRATIONS, SCHEMA_VERSION

ROOT = "edge/t/s/gw"
BLOB = "x" * 2000


def _store(path: Path) -> Store:
    store = Store(path, device_id="gw", topic_root=ROOT)
    store.open()
    return store


def _outbox(store: Store) -> list[tuple[int, str, int, str, bytes]]:
    return store.submit(
        lambda txn: txn.conn.execute(
            "SELECT id, topic, seq, msg_id, payload FROM outbox ORDER BY id"
        ).fetchall()
    ).result(5)


def _delivered(store: Store) -> list[tuple[str, int, str, bytes, str | None, int | None]]:
    return store.submit(
        lambda txn: txn.conn.execute(
            "SELECT topic, seq, msg_id, payload, encoding, crc FROM delivered ORDER BY topic, seq"
        ).fetchall()
    ).result(5)


def _queue(store: Store, kind: str, n: int, body: dict[str, object]) -> None:
    store.submit(lambda txn: [txn.enqueue(kind, body) for _ in range(n)]).result(10)


def _ack_all(store: Store, *, keep: bool = True) -> None:
    ids = [row[0] for row in _outbox(store)]
    store.submit(ack_outbox(ids, keep=keep)).result(5)


def test_migration_from_v5_keeps_the_data_and_adds_delivered(tmp_path: Path) -> None:
    """A database written by the previous schema (with queued messages) opens, migrates
    to 6 in place, and its rows can be delivered, kept and resent."""
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for version, migration in enumerate(MIGRATIONS[:5]):
        conn.execute("BEGIN")
        migration(db)
        conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    payload = b'{"device":"gw","seq":7,"msg_id":"m7","ts":1.0,"event":"x"}'
    conn.execute(
        "INSERT INTO outbox(topic, kind, priority, seq, msg_id, payload, created, retain, "
        "encoding, crc) VALUES (?, 'events', 1, 7, 'm7', ?, ?, 0, NULL, ?)",
        (f"{ROOT}/events", payload, time.time(), zlib.crc32(payload)),
    )
    conn.execute("INSERT INTO topic_seq(topic, seq) VALUES ('events', 7)")
    conn.close()

    store = _store(path)
    try:
        assert store.schema_before == 5
        assert SCHEMA_VERSION == 6
        assert [r[2:] for r in _outbox(store)] == [(7, "m7", payload)]
        _ack_all(store)
        assert _outbox(store) == []
        assert _delivered(store) == [
            (f"{ROOT}/events", 7, "m7", payload, None, zlib.crc32(payload))
        ]
        out = store.submit(resend_range(f"{ROOT}/events", "events", 5, 9)).result(5)
        assert (out.resent, out.pending, out.evicted, out.unissued) == (
            [[7, 7]],
            [],
            [[5, 6]],
            [[8, 9]],
        )
        assert [r[1:] for r in _outbox(store)] == [(f"{ROOT}/events", 7, "m7", payload)]
    finally:
        store.close()


def test_ack_moves_rows_unchanged_and_never_keeps_state_or_unusable_rows(tmp_path: Path) -> None:
    store = _store(tmp_path / "a.db")
    try:

        def fill(txn: Txn) -> None:
            txn.enqueue("events", {"event": "one"})
            txn.enqueue("results", {"count": 1}, compress=True)
            txn.enqueue("status", {"state": "online"}, retain=True)
            txn.enqueue("heartbeat", {"n": 1})
            # A row whose msg_id is not text: delivered, deleted, not kept.
            txn.conn.execute("UPDATE outbox SET msg_id = x'35' WHERE kind = 'heartbeat'")

        store.submit(fill).result(5)
        before = {row[1]: row for row in _outbox(store)}
        _ack_all(store)
        assert _outbox(store) == []
        kept = _delivered(store)
        assert [(t, s) for t, s, *_ in kept] == [(f"{ROOT}/events", 1), (f"{ROOT}/results", 1)]
        for topic, seq, msg_id, payload, _, crc in kept:
            assert (seq, msg_id, payload) == before[topic][2:]
            assert crc == zlib.crc32(payload)
        assert kept[1][4] == "zlib"
        assert store.submit(delivered_rows()).result(5) == 2

        store.submit(lambda txn: txn.enqueue("events", {"event": "two"})).result(5)
        _ack_all(store, keep=False)  # keeping off: deleted, as before this feature
        assert _outbox(store) == []
        assert store.submit(delivered_rows()).result(5) == 2
    finally:
        store.close()


def test_resend_queues_the_same_bytes_and_a_second_ack_keeps_one_copy(tmp_path: Path) -> None:
    store = _store(tmp_path / "r.db")
    topic = f"{ROOT}/summary"
    try:
        store.submit(lambda txn: [txn.enqueue("summary", {"i": i}) for i in range(10)]).result(5)
        original = {row[2]: row[3:] for row in _outbox(store)}
        _ack_all(store)
        # seq 4 was evicted meanwhile; 9..10 are queued again by hand (pending).
        store.submit(
            lambda txn: txn.conn.execute("DELETE FROM delivered WHERE seq IN (4, 9, 10)")
        ).result(5)
        store.submit(lambda txn: [txn.enqueue("summary", {"i": i}) for i in range(2)]).result(5)
        out = store.submit(resend_range(topic, "summary", 2, 15)).result(5)
        assert out.resent == [[2, 3], [5, 8]]
        assert out.pending == [[11, 12]]
        assert out.evicted == [[4, 4], [9, 10]]
        assert out.unissued == [[13, 15]]
        rows = store.submit(fetch_outbox(100, set())).result(5)
        resent = {r.seq: r for r in rows if r.seq <= 8}
        assert sorted(resent) == [2, 3, 5, 6, 7, 8]
        for seq, row in resent.items():
            assert (row.topic, row.payload, row.retain) == (topic, original[seq][1], False)
        # Asked again before it went: the rows are pending, not queued twice.
        again = store.submit(resend_range(topic, "summary", 2, 3)).result(5)
        assert (again.resent, again.pending) == ([], [[2, 3]])
        _ack_all(store)
        kept = _delivered(store)
        assert [s for _, s, *_ in kept] == [1, 2, 3, 5, 6, 7, 8, 11, 12]
        assert {s: (m, p) for _, s, m, p, *_ in kept if s <= 8} == {
            s: original[s] for s in (1, 2, 3, 5, 6, 7, 8)
        }
    finally:
        store.close()


def test_a_poisoned_delivered_row_is_quarantined_and_reported_evicted(tmp_path: Path) -> None:
    store = _store(tmp_path / "p.db")
    topic = f"{ROOT}/events"
    try:
        store.submit(lambda txn: [txn.enqueue("events", {"i": i}) for i in range(3)]).result(5)
        _ack_all(store)

        def poison(txn: Txn) -> None:
            txn.conn.execute("UPDATE delivered SET payload = 'not json', crc = NULL WHERE seq = 2")

        store.submit(poison).result(5)
        out = store.submit(resend_range(topic, "events", 1, 3)).result(5)
        assert (out.resent, out.evicted) == ([[1, 1], [3, 3]], [[2, 2]])
        assert store.stats.quarantined == 1
        assert [r.seq for r in store.submit(fetch_outbox(10, set())).result(5)] == [1, 3]
        # A stamp that is text (or far ahead) cannot be judged: the age pass removes it.
        _ack_all(store)
        store.submit(
            lambda txn: txn.conn.execute("UPDATE delivered SET delivered_at = 'soon' WHERE seq = 3")
        ).result(5)
        store.submit(enforce_limits(1 << 40, 1e9, keep_delivered_s=3600.0)).result(5)
        assert [r[1] for r in _delivered(store)] == [1]
    finally:
        store.close()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = _store(tmp_path_factory.mktemp("prop") / "prop.db")
    yield store  # type: ignore[misc]
    store.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    issued=st.integers(0, 60),
    states=st.lists(st.sampled_from(["kept", "queued", "gone"]), min_size=60, max_size=60),
    first=st.integers(1, 70),
    length=st.integers(1, 30),
)
def test_every_seq_of_the_range_lands_in_exactly_one_list(
    shared_store: Store, issued: int, states: list[str], first: int, length: int
) -> None:
    topic, last = f"{ROOT}/heartbeat", first + length - 1

    def setup(txn: Txn) -> None:
        for table in ("outbox", "delivered", "topic_seq"):
            txn.conn.execute(f"DELETE FROM {table}")
        txn.conn.execute("INSERT INTO topic_seq(topic, seq) VALUES ('heartbeat', ?)", (issued,))
        for seq in range(1, issued + 1):
            table = {"kept": "delivered", "queued": "outbox", "gone": None}[states[seq - 1]]
            if table is None:
                continue
            extra = ", delivered_at" if table == "delivered" else ", priority, retain"
            txn.conn.execute(
                f"INSERT INTO {table}(topic, kind, seq, msg_id, payload, created{extra}) "
                "VALUES (?, 'heartbeat', ?, ?, ?, 0, 1" + (")" if table == "delivered" else ", 0)"),
                (topic, seq, f"m{seq}", b'{"n":1}'),
            )

    shared_store.submit(setup).result(5)
    shared_store.seq_cache["heartbeat"] = issued
    out = shared_store.submit(resend_range(topic, "heartbeat", first, last)).result(5)
    lists = {
        "resent": out.resent,
        "pending": out.pending,
        "evicted": out.evicted,
        "unissued": out.unissued,
    }
    seen: dict[int, str] = {}
    for name, parts in lists.items():
        assert parts == ranges(s for a, b in parts for s in range(a, b + 1))  # merged, ascending
        for a, b in parts:
            for seq in range(a, b + 1):
                assert seq not in seen, (seq, name, seen.get(seq))
                seen[seq] = name
    assert sorted(seen) == list(range(first, last + 1))
    for seq, name in seen.items():
        expected = (
            "unissued"
            if seq > issued
            else {"kept": "resent", "queued": "pending", "gone": "evicted"}[states[seq - 1]]
        )
        assert name == expected, seq


def test_disk_cap_evicts_delivered_copies_first_and_age_ends_them(tmp_path: Path) -> None:
    store = _store(tmp_path / "c.db")
    try:
        _queue(store, "events", 300, {"pad": BLOB})
        _ack_all(store)
        _queue(store, "heartbeat", 50, {"pad": BLOB})
        before = store.submit(used_bytes).result(5)
        report = store.submit(enforce_limits(int(before * 0.6), 1e9, chunk=50)).result(10)
        assert report.dropped.get("delivered.history", 0) > 0
        assert set(report.dropped) == {"delivered.history"}  # nothing unsent was touched
        assert len(_outbox(store)) == 50
        kept = store.submit(delivered_rows()).result(5)
        assert 0 < kept < 300
        # Age: past sync.keep_delivered_s they go, without counting as a drop.
        report = store.submit(
            enforce_limits(1 << 40, 1e9, now=time.time() + 3600, keep_delivered_s=60.0)
        ).result(5)
        assert store.submit(delivered_rows()).result(5) == 0
        assert "delivered.history" not in report.dropped
        assert store.submit(dropped_counters()).result(5)["delivered.history"] == 300 - kept
        assert len(_outbox(store)) == 50
    finally:
        store.close()
