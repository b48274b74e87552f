"""The SQLite store: one writer, batched commits, gap-free sequence numbers, failures isolated."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.errors import StoreError
from edge_agent.store.db import (
    Store,
    Txn,
    delete_outbox,
    enqueue,
    fetch_outbox,
    outbox_depth,
    record_event,
)
from edge_agent.store.schema import SCHEMA_VERSION


def _store(path: Path) -> Store:
    store = Store(path, device_id="gw-1", topic_root="edge/t/s/gw-1")
    store.open()
    return store


def test_outbox_sequence_is_gap_free_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    store = _store(db)
    seqs = [store.submit(enqueue("heartbeat", {"n": i})).result(5) for i in range(5)]
    store.close()
    store.close()  # twice is fine
    store = _store(db)
    seqs += [store.submit(enqueue("heartbeat", {"n": i})).result(5) for i in range(5, 8)]
    rows = store.submit(fetch_outbox(100, set())).result(5)
    store.close()
    assert seqs == list(range(1, 9))
    payloads = [json.loads(r.payload) for r in rows]
    assert [p["seq"] for p in payloads] == list(range(1, 9))
    assert [p["n"] for p in payloads] == list(range(8))
    assert all(p["device"] == "gw-1" and len(p["msg_id"]) == 32 for p in payloads)
    assert {r.topic for r in rows} == {"edge/t/s/gw-1/heartbeat"}


def test_outbox_orders_by_priority_then_age_and_deletes_acked(tmp_path: Path) -> None:
    store = _store(tmp_path / "b.db")
    store.submit(enqueue("results", {"r": 1}))
    store.submit(record_event("sensor.lost", {"detail": "x"}, sensor="imu-0"))
    store.submit(enqueue("results", {"r": 2})).result(5)
    rows = store.submit(fetch_outbox(10, set())).result(5)
    assert [r.kind for r in rows] == ["events", "results", "results"]
    skipped = store.submit(fetch_outbox(10, {rows[0].id})).result(5)
    assert [r.id for r in skipped] == [rows[1].id, rows[2].id]
    store.submit(delete_outbox([rows[0].id, rows[1].id])).result(5)
    assert store.submit(outbox_depth()).result(5) == 1
    store.close()


def test_failing_operation_fails_alone_and_rolls_back_its_seq(tmp_path: Path) -> None:
    store = _store(tmp_path / "c.db")

    def bad(txn: Txn) -> None:
        txn.enqueue("events", {"will": "vanish"})
        raise ValueError("boom")

    gate = threading.Event()
    store.submit(lambda txn: gate.wait(5))  # hold the writer so the next three share a batch
    f1 = store.submit(enqueue("events", {"a": 1}))
    f2 = store.submit(bad)
    f3 = store.submit(enqueue("events", {"b": 2}))
    gate.set()
    assert f1.result(5) == 1
    with pytest.raises(ValueError, match="boom"):
        f2.result(5)
    assert f3.result(5) == 2  # no gap left by the rolled-back operation
    rows = store.submit(fetch_outbox(10, set())).result(5)
    assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2]
    assert store.stats.failed_ops == 1
    store.close()


def test_close_drains_everything_queued(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    store = _store(db)
    for i in range(500):
        store.submit(enqueue("results", {"i": i}))
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 500
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = Store(db, device_id="x", topic_root="edge/x")
    with pytest.raises(StoreError, match="newer than this edge-agent"):
        store.open()
    store.close()


def test_submit_after_close_fails_fast(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.submit(outbox_depth()).result(1)


def test_a_cancelled_caller_does_not_kill_the_writer(tmp_path: Path) -> None:
    """An await on `Store.call` that is cancelled (timeouts, shutdown) must not break the
    writer thread for everyone else."""
    import asyncio

    store = _store(tmp_path / "g.db")
    gate = threading.Event()

    async def scenario() -> int:
        store.submit(lambda txn: gate.wait(5))
        task = asyncio.ensure_future(store.call(enqueue("events", {"x": 1})))
        await asyncio.sleep(0)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(store.call(outbox_depth()), timeout=5)

    assert asyncio.run(scenario()) in (0, 1)
    assert store.submit(enqueue("events", {"y": 2})).result(5) >= 1
    store.close()
