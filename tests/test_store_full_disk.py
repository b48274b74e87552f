"""A full disk: eviction frees space without needing any, the store says so once, recovers.

Against a real tmpfs with `size=` where this process may mount one (root): the filesystem
is genuinely full (ENOSPC → SQLITE_FULL). Elsewhere against SQLite's own page cap, which
returns the same `SQLITE_FULL` code while the filesystem has room. Each test records the
boundary it ran against in its `boundary` user property.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import ContractChecker
from edge_agent.health import HealthBoard
from edge_agent.metrics import Counters
from edge_agent.store.db import Store, enqueue, fetch_outbox, record_event
from edge_agent.store.retention import dropped_counters
from edge_agent.store.space import DISK_FULL, is_full
from tests.broker import Mosquitto, collector, wait_for
from tests.daemon_proc import cli, start_daemon, stop_daemon, write_config
from tests.fullfs import fill, small_filesystem

RESERVE = 1024 * 1024
PAD = "x" * 4000


class Recorder:
    """The `emit` port: keeps each event with the health board's reasons at that moment."""

    def __init__(self, board: HealthBoard) -> None:
        self.board = board
        self.events: list[tuple[str, dict[str, Any], list[str]]] = []

    def __call__(
        self, kind: str, severity: str = "info", sensor: str | None = None, **body: Any
    ) -> None:
        self.events.append((kind, body, self.board.degraded))

    def of(self, kind: str) -> list[tuple[dict[str, Any], list[str]]]:
        return [(b, d) for k, b, d in self.events if k == kind]


def test_is_full_reads_the_result_code_not_the_message(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as caught:
        conn.executemany("INSERT INTO t VALUES (?)", [("y" * 4000,)] * 20)
    conn.close()
    assert is_full(caught.value)
    assert not is_full(sqlite3.OperationalError("database or disk is full"))  # text alone


def test_full_disk_evicts_in_order_reports_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    """Write until the disk is full and well past it. Every write handed to the store is
    committed (no gap in its seqs); old bulk results are evicted (announced), the events and
    summaries committed before are all kept; the store was degraded "disk full" with one log
    line and one event per episode, then recovers with its reserve back."""
    mnt = tmp_path / "mnt"
    with small_filesystem(mnt, 12) as mounted:
        record_property("boundary", "tmpfs ENOSPC" if mounted else "PRAGMA max_page_count")
        db = mnt / "full.db"
        board, counters = HealthBoard(), Counters()
        emit = Recorder(board)
        store = Store(
            db,
            device_id="gw",
            topic_root="edge/t/s/gw",
            retry_delay_s=0.01,
            reserve_bytes=RESERVE,
            max_bytes=None if mounted else 2 * 1024 * 1024,
            emit=emit,
            inc=counters.inc,
            health=board,
        )
        caplog.set_level(logging.WARNING, logger="edge_agent.store.db")
        store.open()
        try:
            assert store.space.reserve.held
            kept = [store.submit(record_event("sensor.lost", {"i": i})).result(5) for i in range(5)]
            kept += [store.submit(enqueue("summary", {"i": i})).result(5) for i in range(3)]
            futures = []
            deadline = time.monotonic() + 60
            while len(emit.of("store.disk_full")) == 0 or len(futures) < 4000:
                futures.append(store.submit(enqueue("results", {"i": len(futures), "p": PAD})))
                assert time.monotonic() < deadline, "the disk never filled"
                if len(futures) % 200 == 0:
                    futures[-1].result(30)
            seqs = [f.result(60) for f in futures]
            assert seqs == list(range(1, len(futures) + 1))  # nothing handed over was lost
            # Writes succeed again: the episode ends once the reserve is back.
            store.submit(enqueue("heartbeat", {"after": True})).result(30)
            wait_for(lambda: not store.disk_full, 20, "the store to recover")
            store.submit(enqueue("heartbeat", {"after": 2})).result(30)
            dropped = store.submit(dropped_counters()).result(10)
            rows = store.submit(fetch_outbox(100_000, set())).result(30)
        finally:
            store.close()
        assert store.space.reserve.held
        assert os.path.getsize(store.space.reserve.path) == RESERVE
    full = emit.of("store.disk_full")
    recovered = emit.of("store.disk_recovered")
    assert full
    assert all(reasons == [DISK_FULL] for _, reasons in full)  # degraded while full
    assert len(recovered) == len(full)
    assert board.degraded == []
    # Logged once per episode, then only counted.
    lines = [r for r in caplog.records if "disk full (" in r.getMessage()]
    assert len(lines) == len(full)
    assert counters.get("store_full_retries") >= len(full)
    assert store.stats.evicted_when_full > 0
    # The documented order: bulk results went, what was committed before them is all there.
    assert dropped.get("outbox.results", 0) > 0
    assert not {k for k in dropped if k in ("outbox.events", "outbox.summary")}
    bodies = [(r.kind, json.loads(r.payload)) for r in rows]
    assert sorted(b["seq"] for k, b in bodies if k == "summary") == [1, 2, 3]
    events = [b for k, b in bodies if k == "events" and b["event"] == "sensor.lost"]
    assert sorted(b["seq"] for b in events) == kept[:5]
    assert any(k == "events" and b["event"] == "outbox.evicted" for k, b in bodies)


def test_a_burst_committed_at_once_cannot_leave_a_log_too_big_to_checkpoint(
    tmp_path: Path, record_property: Any
) -> None:
    """The writer is held while a burst of several megabytes queues up (as when the
    producer outruns it on a loaded machine), then released into a nearly full disk. One
    transaction must never add more to the file than the reserve can lend its checkpoint:
    otherwise the log holds committed pages no checkpoint can place, no delete fits, and
    the store stays full for good. Every write is committed in order and the store
    recovers. The writer is held by an operation waiting on an event (no fake)."""
    mnt = tmp_path / "mnt"
    with small_filesystem(mnt, 12) as mounted:
        record_property("boundary", "tmpfs ENOSPC" if mounted else "PRAGMA max_page_count")
        store = Store(
            mnt / "burst.db",
            device_id="gw",
            topic_root="r",
            retry_delay_s=0.01,
            reserve_bytes=RESERVE,
            max_bytes=None if mounted else 8 * 1024 * 1024,
        )
        store.open()
        try:
            for i in range(600):  # about 5 MB: the burst below cannot fit beside it
                store.submit(enqueue("results", {"i": i, "p": PAD})).result(10)
            gate = threading.Event()

            def held(txn: Any) -> int:
                gate.wait(10)
                return 0

            blocker = store.submit(held)
            futures = [
                store.submit(enqueue("results", {"i": 600 + i, "p": PAD})) for i in range(1000)
            ]
            gate.set()
            assert blocker.result(10) == 0
            futures += [
                store.submit(enqueue("results", {"i": 1600 + i, "p": PAD})) for i in range(1200)
            ]
            seqs = [f.result(30) for f in futures]
            assert seqs == list(range(601, 601 + len(futures)))
            store.submit(enqueue("heartbeat", {"after": True})).result(30)
            wait_for(lambda: not store.disk_full, 20, "the store to recover")
        finally:
            store.close()
        assert store.space.reserve.held
        assert store.stats.evicted_when_full > 0


def test_a_store_opened_on_a_full_disk_starts_degraded_and_recovers_when_space_is_back(
    tmp_path: Path, record_property: Any
) -> None:
    """On a tmpfs filled to the last byte while the daemon was stopped, the store still opens
    (on the room of its reserve), degraded "disk full", and recovers once space is back.
    Where no tmpfs can be mounted, a start on a full disk cannot be produced; the test then
    checks the start with room."""
    mnt = tmp_path / "mnt"
    with small_filesystem(mnt, 8) as mounted:
        record_property("boundary", "tmpfs ENOSPC" if mounted else "none (disk with room)")
        db = mnt / "s.db"
        first = Store(db, device_id="gw", topic_root="r", reserve_bytes=RESERVE)
        first.open()
        first.submit(enqueue("events", {"before": True})).result(5)
        first.close()
        filler = mnt / "filler"
        if mounted:
            fill(filler)  # every byte but the reserve the store held
        board = HealthBoard()
        store = Store(db, device_id="gw", topic_root="r", reserve_bytes=RESERVE, health=board)
        store.open()  # a full disk does not stop the store from starting
        try:
            assert store.disk_full is mounted
            assert board.degraded == ([DISK_FULL] if mounted else [])
            if mounted:
                filler.unlink()
            store.submit(enqueue("events", {"after": True})).result(30)
            wait_for(lambda: not store.disk_full, 20, "the reserve to be taken back")
            store.submit(enqueue("events", {"again": True})).result(30)
            rows = store.submit(fetch_outbox(10, set())).result(10)
        finally:
            store.close()
        assert board.degraded == []
        assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2, 3]


def test_a_daemon_on_a_full_disk_says_degraded_keeps_its_heartbeat_and_recovers(
    tmp_path: Path, record_property: Any
) -> None:
    """The case from the field: another file fills the data partition under a running
    daemon. Real boundary: a tmpfs filled to its last byte by a filler file (ENOSPC).
    Heartbeats keep leaving and say `degraded: disk full`, `status` says so instead of
    "pipeline healthy", the log says it once; removing the filler brings `healthy` back, and
    the consumer sees no seq gap that is not announced by an eviction notice.

    Where no tmpfs can be mounted, the daemon starts on a database filled to its page cap
    (`storage.max_bytes`, SQLITE_FULL without a full filesystem); its retention usually
    frees room before a write fails, so the test then checks that it runs healthy, says
    "disk full" at most once, and leaves no unannounced gap (the store-level tests above
    drive the page-cap path itself)."""
    mnt = tmp_path / "mnt"
    with (
        small_filesystem(mnt, 16) as mounted,
        Mosquitto(tmp_path) as broker,
        collector(broker.port, "edge/t1/s1/gw-full/#") as sub,
    ):
        record_property("boundary", "tmpfs ENOSPC" if mounted else "PRAGMA max_page_count")
        db = mnt / "agent.db"
        storage: dict[str, Any] = {"reserve_bytes": RESERVE}
        if not mounted:
            storage["max_bytes"] = 1024 * 1024
            cap = Store(
                db,
                device_id="gw-full",
                topic_root="edge/t1/s1/gw-full",
                max_bytes=1 << 20,
                retry_delay_s=0.01,
            )
            cap.open()
            for i in range(300):
                cap.submit(enqueue("results", {"i": i, "p": PAD}))
            cap.submit(enqueue("results", {"last": True})).result(60)
            cap.close()
        config = write_config(
            tmp_path / "agent.toml",
            db=db,
            mqtt_port=broker.port,
            device="gw-full",
            sensors=[{"name": "imu-0", "link": "emulated", "synthetic": True, "rate_hz": 100.0}],
            sections={
                "storage": storage,
                "service": {"control_socket": str(tmp_path / "agent.sock")},
            },
        )
        env = {"EDGE_AGENT_CONFIG": str(config)}
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        try:

            def beat(state: str) -> bool:
                return any(m.payload["health"]["state"] == state for m in sub.of("heartbeat")[-3:])

            def events(kind: str) -> list[dict[str, Any]]:
                return [m.payload for m in sub.of("events") if m.payload["event"] == kind]

            if mounted:
                wait_for(lambda: beat("healthy"), 30, "a healthy heartbeat")
                filler = mnt / "filler"
                fill(filler)
                wait_for(lambda: beat("degraded"), 30, "a degraded heartbeat")
                hb = next(
                    m.payload
                    for m in sub.of("heartbeat")
                    if m.payload["health"]["state"] == "degraded"
                )
                assert hb["health"]["degraded"] == ["disk full"]
                assert hb["store"]["disk_full"] is True
                text = cli("status", env=env)
                assert "degraded: disk full" in text.stdout, text.stdout
                assert "pipeline healthy" not in text.stdout
                filler.unlink()
                wait_for(lambda: events("store.disk_recovered"), 30, "the recovery event")
            wait_for(lambda: beat("healthy"), 30, "a healthy heartbeat (again)")
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            stop_daemon(proc, log)
        text = log.read_text()
        episodes = 1 if mounted else text.count("store: disk full (")
        assert text.count("store: disk full (") == episodes <= 1, text[-3000:]
        assert text.count("store: disk space is back") == episodes
        assert len(events("store.disk_full")) == episodes
        checker = ContractChecker()
        for m in list(sub.messages):
            checker.feed(m.topic, m.payload)
        assert checker.violations == [], "\n".join(checker.violations)
