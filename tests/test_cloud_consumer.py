"""The reference consumer (`scripts/cloud_consumer.py`, a real process) against a real
mosquitto and a real daemon reading emulators on real pseudo-terminals.

The daemon's stream must come out clean. Gaps, duplicates, conflicts, out-of-order arrivals,
announced evictions and malformed payloads are injected by publishing crafted messages
for a second, made-up gateway (and one re-sent copy of a real message), since a healthy
daemon never produces them.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from firmware_bridge.emulator import DeviceEmulator
from tests.broker import Mosquitto, wait_for
from tests.cloud_messages import evicted, heartbeat, results, summary
from tests.daemon_proc import emulators_config, start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / "scripts" / "cloud_consumer.py"
GW = "gw-fake"
FAKE = f"edge/t1/s1/{GW}"


def _consumer(port: int, db: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    err = out.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CONSUMER), "--port", str(port), "--db", str(db), *extra],
            stdout=stdout,
            stderr=stderr,
        )

    def ready() -> bool:
        return proc.poll() is not None or b"subscribed" in err.read_bytes()

    wait_for(ready, 15, "the consumer to subscribe")
    assert proc.poll() is None, err.read_text()
    return proc


def _finish(proc: subprocess.Popen[bytes], out: Path) -> tuple[int, dict[str, Any]]:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(20)
    return code, json.loads(out.read_text())


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # the consumer has not created its tables yet
    finally:
        conn.close()


def _stored(db: Path, gateway: str, kind: str) -> list[dict[str, Any]]:
    rows = _query(
        db,
        "SELECT payload FROM messages WHERE gateway = ? AND kind = ? ORDER BY seq",
        gateway,
        kind,
    )
    return [json.loads(r[0]) for r in rows]


def _windows(db: Path, gateway: str) -> int:
    return sum(m["count"] for m in _stored(db, gateway, "results"))


def _rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


class Publisher:
    """Publishes crafted messages, QoS 1, waiting for each PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"crafter-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _inject(pub: Publisher, db: Path) -> None:
    """Everything a consumer must tell apart, for the made-up gateway `gw-fake`."""
    # A duplicate of a real message: the same bytes the daemon published.
    real = _stored(db, "t1/s1/gw-cons", "heartbeat")[0]
    pub.send("edge/t1/s1/gw-cons/heartbeat", real)
    # Heartbeat seq 1, 4: a gap of 2..3. Then seq 1 again with a new msg_id: a conflict.
    pub.send(f"{FAKE}/heartbeat", heartbeat(GW, 1))
    pub.send(f"{FAKE}/heartbeat", heartbeat(GW, 4))
    pub.send(f"{FAKE}/heartbeat", heartbeat(GW, 1))
    # Results 1, an announced eviction of 2..3, then 4: no gap.
    pub.send(f"{FAKE}/results", results(GW, 1))
    pub.send(f"{FAKE}/events", evicted(GW, 1, "results", 2, 3))
    pub.send(f"{FAKE}/results", results(GW, 4))
    # Summary 2 before 1: out of order, but nothing missing.
    pub.send(f"{FAKE}/summary", summary(GW, 2))
    pub.send(f"{FAKE}/summary", summary(GW, 1))
    # A results message whose columns do not match its count: rejected with the reason.
    bad = results(GW, 5)
    bad["count"] = 2
    pub.send(f"{FAKE}/results", bad)
    # A remote command request: not telemetry, ignored.
    pub.send(f"{FAKE}/cmd/ping", {"id": "r1"})


def test_consumer_reports_a_clean_daemon_stream_and_every_injected_fault(
    tmp_path: Path, emulators: list[DeviceEmulator]
) -> None:
    """A real daemon's stream is gap-free with every committed result; the crafted faults
    appear exactly where they were injected; the exit status says the report is not clean."""
    db, out = tmp_path / "consumer.db", tmp_path / "report.json"
    with Mosquitto(tmp_path) as broker:
        consumer = _consumer(broker.port, db, out, "--expect-from-first", "--inflight-window", "64")
        try:
            config = emulators_config(tmp_path, broker.port, emulators, "gw-cons")
            log = tmp_path / "daemon.log"
            daemon = start_daemon(config, log)
            try:
                wait_for(
                    lambda: len(_stored(db, "t1/s1/gw-cons", "results")) >= 3,
                    30,
                    "results at the consumer",
                )
                pub = Publisher(broker.port)
                try:
                    _inject(pub, db)
                finally:
                    pub.close()
            finally:
                assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
            wait_for(
                lambda: any(
                    m["state"] == "offline" for m in _stored(db, "t1/s1/gw-cons", "status")
                ),
                10,
                "the daemon's offline status",
            )
            committed = _rows(tmp_path / "gw-cons.db", "results")
            wait_for(
                lambda: _windows(db, "t1/s1/gw-cons") == committed, 10, "every committed result"
            )
            wait_for(lambda: _query(db, "SELECT 1 FROM ignored"), 10, "the injected command")
        finally:
            code, report = _finish(consumer, out)
    assert code == 1, "violations make the exit status 1"
    real = report["gateways"]["t1/s1/gw-cons"]
    assert real["state"] == "offline"
    for kind, topic in real["topics"].items():
        assert topic["first_seq"] == 1, kind
        assert (topic["missing"], topic["conflicts"], topic["out_of_order"]) == (0, 0, 0), kind
        assert topic["undocumented_keys"] == [], kind
        assert topic["latency_ms"]["p50"] is not None, kind
    assert real["topics"]["heartbeat"]["duplicates"] == 1
    assert real["topics"]["results"]["windows"] == _rows(tmp_path / "gw-cons.db", "results")

    fake = report["gateways"]["t1/s1/gw-fake"]["topics"]
    assert fake["heartbeat"]["gaps"] == [[2, 3]]
    assert fake["heartbeat"]["missing"] == 2
    assert fake["heartbeat"]["conflicts"] == 1
    assert (fake["results"]["gaps"], fake["results"]["evicted_by_policy"]) == ([], 2)
    assert (fake["summary"]["missing"], fake["summary"]["out_of_order"]) == (0, 1)
    assert report["totals"]["rejected"] == 1
    assert "do not have count=2 entries" in report["rejected"][0]["reason"]
    assert report["totals"]["ignored"] == 1
    assert sorted(report["violations"]) == sorted(
        [
            "t1/s1/gw-fake heartbeat: seq gap 2..3",
            "t1/s1/gw-fake heartbeat: seq reused with a new msg_id (1 messages)",
            f"{FAKE}/results: rejected: {report['rejected'][0]['reason']}",
        ]
    )


def test_two_members_of_a_shared_subscription_together_miss_nothing(
    tmp_path: Path, emulators: list[DeviceEmulator]
) -> None:
    """Two consumers in one `$share` group split the stream and store it in one SQLite
    file; the report over the file (`--report-only`) is gap-free and has every result."""
    db = tmp_path / "shared.db"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    with Mosquitto(tmp_path) as broker:
        members = [_consumer(broker.port, db, o, "--share", "cloud") for o in outs]
        try:
            config = emulators_config(tmp_path, broker.port, emulators, "gw-shared")
            log = tmp_path / "daemon.log"
            daemon = start_daemon(config, log)
            try:
                wait_for(
                    lambda: len(_stored(db, "t1/s1/gw-shared", "results")) >= 6,
                    30,
                    "results at the consumers",
                )
            finally:
                assert stop_daemon(daemon, log) == 0, log.read_text()[-4000:]
            wait_for(
                lambda: any(
                    m["state"] == "offline" for m in _stored(db, "t1/s1/gw-shared", "status")
                ),
                10,
                "the daemon's offline status",
            )
            committed = _rows(tmp_path / "gw-shared.db", "results")
            wait_for(
                lambda: _windows(db, "t1/s1/gw-shared") == committed,
                10,
                "every committed result",
            )
        finally:
            finished = [_finish(p, o) for p, o in zip(members, outs, strict=True)]
    for code, _ in finished:
        assert code == 0
    shares = [r["session"]["outcomes"].get("accepted", 0) for _, r in finished]
    assert all(n > 0 for n in shares), f"each member got part of the stream: {shares}"
    done = subprocess.run(
        [sys.executable, str(CONSUMER), "--db", str(db), "--report-only", "--expect-from-first"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    report = json.loads(done.stdout)
    topics = report["gateways"]["t1/s1/gw-shared"]["topics"]
    assert set(topics) == {"status", "events", "heartbeat", "summary", "results"}
    assert all(t["missing"] == 0 and t["duplicates"] == 0 for t in topics.values())
    assert sum(shares) == report["totals"]["accepted"]
    assert topics["results"]["windows"] == _rows(tmp_path / "gw-shared.db", "results")
