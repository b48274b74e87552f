"""Bounded disk on a real SQLite file: the eviction order, announcements, counters, full disk."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from edge_agent.store.db import Store, Txn, enqueue, fetch_outbox, record_event
from edge_agent.store.retention import dropped_counters, enforce_limits, used_bytes

BLOB = "x" * 2000


def _store(path: Path, **kw: object) -> Store:
    store = Store(path, device_id="gw", topic_root="edge/t/s/gw", **kw)  # type: ignore[arg-type]
    store.open()
    return store


def _fill(store: Store, n: int) -> None:
    def op(txn: Txn) -> None:
        now = time.time()
        txn.conn.executemany(
            "INSERT INTO results(sensor, model, model_version, t_start, t_end, label, confidence)"
            " VALUES ('s', 'm', '1', ?, ?, ?, 0.9)",
            [(now, now, BLOB) for _ in range(n)],
        )
        txn.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('results_cursor', ?)", (str(n // 2),)
        )
        for i in range(n // 4):
            txn.enqueue("results", {"i": i, "pad": BLOB})
            txn.enqueue("heartbeat", {"i": i, "pad": BLOB})
        for i in range(5):
            txn.enqueue("summary", {"i": i})
            txn.enqueue("events", {"event": "x", "i": i})

    store.submit(op).result(10)


def _kinds(store: Store) -> dict[str, int]:
    rows = store.submit(fetch_outbox(100_000, set())).result(10)
    out: dict[str, int] = {}
    for r in rows:
        out[r.kind] = out.get(r.kind, 0) + 1
    return out


def test_eviction_follows_the_documented_order_and_announces_seq_ranges(tmp_path: Path) -> None:
    store = _store(tmp_path / "r.db")
    _fill(store, 400)
    before = store.submit(used_bytes).result(5)
    # A cap that the local history alone cannot satisfy, but dropping some results messages can.
    report = store.submit(enforce_limits(int(before * 0.45), 1e9)).result(10)
    kinds = _kinds(store)
    assert report.dropped["results.history"] == 200  # every packed result went first
    assert "outbox.results" in report.dropped
    assert "outbox.heartbeat" not in report.dropped  # later classes untouched
    assert kinds["summary"] == 5
    assert kinds["heartbeat"] == 100
    notice = report.announced[0]
    assert notice["topic"] == "results"
    assert notice["seq_from"] == 1
    assert notice["seq_to"] == notice["messages"]
    # The notice travels as an event with priority 0, ahead of everything else.
    first = store.submit(fetch_outbox(1, set())).result(5)[0]
    body = json.loads(first.payload)
    assert body["event"] == "outbox.evicted"
    assert body["seq_to"] == notice["seq_to"]
    counters = store.submit(dropped_counters()).result(5)
    assert counters["outbox.results"] == notice["messages"]
    store.close()


def test_notices_are_never_evicted_even_under_extreme_pressure(tmp_path: Path) -> None:
    store = _store(tmp_path / "n.db")
    _fill(store, 100)
    report = store.submit(enforce_limits(1, 1e9)).result(10)
    kinds = _kinds(store)
    assert set(kinds) == {"events"}  # only the eviction notices are left
    assert kinds["events"] == len(report.announced)
    assert {n["topic"] for n in report.announced} == {"results", "heartbeat", "summary", "events"}
    store.close()


def test_age_cap_drops_old_rows_and_counts_them(tmp_path: Path) -> None:
    store = _store(tmp_path / "a.db")
    store.submit(enqueue("heartbeat", {"old": True})).result(5)
    store.submit(record_event("sensor.lost", {}, sensor="s")).result(5)
    report = store.submit(enforce_limits(1 << 40, 60.0, now=time.time() + 3600)).result(5)
    assert report.dropped["outbox.heartbeat"] == 1
    assert report.dropped["events.history"] == 1
    store.close()


def test_full_disk_degrades_evicts_and_recovers_without_crashing(tmp_path: Path) -> None:
    """The hard page cap stands in for a full partition: SQLite returns SQLITE_FULL exactly as
    it does on ENOSPC. Writes keep being accepted; old messages are evicted and announced."""
    db = tmp_path / "f.db"
    store = _store(db, max_bytes=1024 * 1024, retry_delay_s=0.01)
    futures = [store.submit(enqueue("results", {"i": i, "pad": BLOB * 2})) for i in range(1500)]
    seqs = [f.result(30) for f in futures]
    assert seqs == list(range(1, 1501))  # nothing handed to the store was refused
    counters = store.submit(dropped_counters()).result(5)
    assert counters.get("outbox.results", 0) > 0
    kinds = _kinds(store)
    assert kinds.get("events", 0) >= 1  # the evictions were announced
    store.close()
    assert os.path.getsize(db) <= 1024 * 1024 * 1.25 + 4096
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
