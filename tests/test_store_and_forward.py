"""Store-and-forward against a real broker: outages and SIGKILLs lose nothing, leave no gaps."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.contract import ContractChecker
from edge_agent.inference.bundle import shipped_models_dir
from firmware_bridge.emulator import CsvRecording, DeviceEmulator
from tests.broker import Collector, Mosquitto, collector, free_port, wait_for

KILL_CYCLES = 20
RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"


@pytest.fixture
def emulators() -> Iterator[dict[str, DeviceEmulator]]:
    emus = {
        f"imu-{i}": DeviceEmulator(CsvRecording(RECORDING), device_id=f"imu-{i}", max_rate=True)
        for i in range(2)
    }
    for e in emus.values():
        e.start()
    yield emus
    for e in emus.values():
        e.close()


def _config(path: Path, port: int, db: Path, emus: dict[str, DeviceEmulator], device: str) -> Path:
    lines = [
        f'[device]\nid = "{device}"\ntenant = "t"\nsite = "s"',
        f"[mqtt]\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5",
        "[sync]\nheartbeat_interval_s = 1.0\nsummary_interval_s = 1.0\nresults_interval_s = 0.1\n"
        "upload_results = true",
        f'[storage]\npath = "{db}"',
        "[logging]\nshow_results = false",
    ]
    for name, emu in emus.items():
        lines.append(f'[[sensors]]\nname = "{name}"\nlink = "serial"\nport = "{emu.tty_path}"')
    path.write_text("\n\n".join(lines) + "\n")
    return path


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    finally:
        out.close()


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no clean stop within 20 s:\n{log.read_text()[-6000:]}") from None
    assert code == 0, log.read_text()[-6000:]


def _db_counts(db: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(db)
    try:
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        row = conn.execute("SELECT value FROM meta WHERE key = 'results_cursor'").fetchone()
        cursor = int(row[0]) if row else 0
        max_id = conn.execute("SELECT COALESCE(max(id), 0) FROM results").fetchone()[0]
        assert cursor == max_id, "every committed result was packed for upload"
        return results, outbox, cursor
    finally:
        conn.close()


def _check(sub: Collector, root: str) -> ContractChecker:
    checker = ContractChecker()
    for m in list(sub.messages):
        checker.feed(m.topic, m.payload)
    if checker.violations:
        order = [
            (
                m.topic.rsplit("/", 1)[-1],
                m.payload["seq"],
                m.payload["msg_id"][:6],
                m.payload.get("ts"),
            )
            for m in sub.messages
            if m.topic.endswith("/results")
        ]
        print("ARRIVAL", order)
    assert checker.violations == [], "\n".join(checker.violations)
    return checker


def test_everything_buffered_during_an_outage_arrives_in_order(
    tmp_path: Path, emulators: dict[str, DeviceEmulator]
) -> None:
    """No broker at start: the daemon runs, says so, buffers; when the broker appears every
    message arrives, each topic's seq starting at 1 with no gap."""
    port = free_port()
    db = tmp_path / "a.db"
    log = tmp_path / "daemon.log"
    proc = _spawn(_config(tmp_path / "a.toml", port, db, emulators, "gw-out"), log)
    try:
        wait_for(lambda: "unreachable" in log.read_text(), 20, "the outage to be reported")

        def buffered() -> bool:
            conn = sqlite3.connect(db)
            try:
                return conn.execute("SELECT count(*) FROM outbox").fetchone()[0] > 20
            finally:
                conn.close()

        wait_for(buffered, 20, "messages buffered in the outbox")
        with Mosquitto(tmp_path, port=port) as _broker, collector(port, "edge/t/s/gw-out/#") as sub:
            root = "edge/t/s/gw-out"
            wait_for(lambda: len(sub.of("heartbeat")) >= 5, 30, "buffered heartbeats")
            _stop(proc, log)
            wait_for(
                lambda: sub.of("status") and sub.of("status")[-1].payload["state"] == "offline",
                10,
                "offline status",
            )
            checker = _check(sub, root)
            for kind in ("events", "heartbeat", "summary", "results"):
                assert checker.of(kind)[0]["seq"] == 1, kind
            results, outbox, _ = _db_counts(db)
            assert outbox == 0
            uploaded = sum(m["count"] for m in checker.of("results"))
            assert uploaded == results
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_stream_loses_no_committed_result_and_leaves_no_gap(
    tmp_path: Path, emulators: dict[str, DeviceEmulator]
) -> None:
    """Kill the daemon with SIGKILL 20 times while it streams at full speed, at random moments;
    after a final clean run, every committed result reached the consumer exactly once as far
    as the consumer can tell, and no topic has a seq gap."""
    db = tmp_path / "k.db"
    log = tmp_path / "daemon.log"
    with Mosquitto(tmp_path) as broker, collector(broker.port, "edge/t/s/gw-kill/#") as sub:
        config = _config(tmp_path / "k.toml", broker.port, db, emulators, "gw-kill")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _kill_rounds(config, log, sub, procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        checker = _check(sub, "edge/t/s/gw-kill")
        results, outbox, _ = _db_counts(db)
        assert outbox == 0
        assert sum(m["count"] for m in checker.of("results")) == results
        states = [m["state"] for m in checker.of("status")]
        # Each run that got as far as a CONNACK announced itself; each ended offline.
        # A kill in the instant between CONNACK and the birth leaves a will without a birth.
        assert states.count("offline") >= states.count("online") >= 4
        assert states.count("offline") <= states.count("online") + 1
        # Re-sends after a kill are limited to what was in flight.
        dups = sum(t.duplicates for t in checker.topics.values())
        assert dups <= 64 * KILL_CYCLES


def _kill_rounds(
    config: Path, log: Path, sub: Collector, procs: list[subprocess.Popen[bytes]]
) -> None:
    rng = random.Random(20)
    # The first rounds wait for results to flow; the rest kill at random moments, including
    # during startup, store migration and the first connect.
    for round_ in range(KILL_CYCLES):
        proc = _spawn(config, log)
        procs.append(proc)
        if round_ < 3:
            target = len(sub.of("results")) + 2
            try:
                wait_for(
                    lambda t=target: len(sub.of("results")) >= t,
                    30,
                    f"results in round {round_}",
                )
            except AssertionError:
                print(log.read_text()[-6000:])
                raise
        else:
            time.sleep(rng.uniform(0.05, 1.5))  # the random moment of the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    before = len(sub.of("heartbeat"))
    proc = _spawn(config, log)
    procs.append(proc)
    wait_for(lambda: len(sub.of("heartbeat")) >= before + 3, 30, "the final run's heartbeats")
    _stop(proc, log)
    wait_for(lambda: sub.of("status")[-1].payload["state"] == "offline", 10, "offline")


def test_broker_stopped_mid_stream_and_restarted_loses_nothing(
    tmp_path: Path, emulators: dict[str, DeviceEmulator]
) -> None:
    """The broker goes down while results stream and comes back on the same port; a consumer
    with a durable session ends up with every sequence number of every topic."""
    db = tmp_path / "b.db"
    log = tmp_path / "daemon.log"
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    proc = _spawn(_config(tmp_path / "b.toml", broker.port, db, emulators, "gw-bounce"), log)
    try:
        with collector(broker.port, "edge/t/s/gw-bounce/#", persistent=True) as sub:
            wait_for(lambda: len(sub.of("results")) >= 3, 30, "results before the outage")
            broker.stop()  # SIGTERM: mosquitto saves its queues, as a managed broker would
            wait_for(lambda: "lost" in log.read_text(), 20, "the daemon to notice")
            wait_for(lambda: "unreachable" in log.read_text(), 20, "reconnect attempts")
            before = len(sub.of("results"))
            broker.start()
            wait_for(lambda: len(sub.of("results")) >= before + 5, 30, "results after the outage")
            _stop(proc, log)
            wait_for(
                lambda: sub.of("status")[-1].payload["state"] == "offline", 10, "offline status"
            )
            checker = _check(sub, "edge/t/s/gw-bounce")
            for kind in ("events", "heartbeat", "summary", "results"):
                assert checker.of(kind)[0]["seq"] == 1, kind
            results, outbox, _ = _db_counts(db)
            assert outbox == 0
            assert sum(m["count"] for m in checker.of("results")) == results
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()
