"""End to end: emulator on a pty → `edge-agent run` (a real process) → mosquitto → subscriber.

Nothing is faked: the emulators write protocol-v1 bytes to real pseudo-terminals,
the daemon reads them through pyserial, runs the shipped ONNX model, commits to a
real SQLite file and publishes through a real mosquitto on a free port.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.contract import ContractChecker
from edge_agent.inference.bundle import shipped_models_dir
from firmware_bridge.emulator import CsvRecording, DeviceEmulator
from tests.broker import Mosquitto, collector, wait_for

RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


def _label_block(label: str, out: Path) -> Path:
    """The rows of one activity from the held-out recording, as its own CSV."""
    with RECORDING.open() as src, out.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(dst, reader.fieldnames)
        writer.writeheader()
        rows = [r for r in reader if r["label"] == label]
        for i, row in enumerate(rows):
            row["timestamp"] = f"{i / 10:.1f}"
            writer.writerow(row)
    return out


def _write_config(path: Path, port: int, db: Path, sensors: dict[str, str], device: str) -> None:
    lines = [
        "[device]",
        f'id = "{device}"',
        'tenant = "t1"',
        'site = "s1"',
        "[mqtt]",
        f"port = {port}",
        "[sync]",
        "heartbeat_interval_s = 1.0",
        "summary_interval_s = 1.0",
        "results_interval_s = 0.2",
        "upload_results = true",
        "[storage]",
        f'path = "{db}"',
        "[logging]",
        "show_results = false",
    ]
    for name, tty in sensors.items():
        lines += ["[[sensors]]", f'name = "{name}"', 'link = "serial"', f'port = "{tty}"']
    path.write_text("\n".join(lines) + "\n")


def _start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")},
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"daemon did not stop on SIGTERM:\n{log.read_text()}") from None


def test_recording_to_cloud_labels_match(broker: Mosquitto, tmp_path: Path) -> None:
    """Two devices play two known activities; the cloud sees status, heartbeats, summaries
    whose top labels are those activities, and results with gap-free sequence numbers."""
    plays = {"imu-walk": "walking", "imu-run": "running"}
    emulators = {
        name: DeviceEmulator(
            CsvRecording(_label_block(label, tmp_path / f"{label}.csv")),
            device_id=name,
            max_rate=True,
        )
        for name, label in plays.items()
    }
    for emu in emulators.values():
        emu.start()
    config = tmp_path / "agent.toml"
    db = tmp_path / "agent.db"
    _write_config(config, broker.port, db, {n: e.tty_path for n, e in emulators.items()}, "gw-e2e")
    log = tmp_path / "daemon.log"
    root = "edge/t1/s1/gw-e2e"
    try:
        with collector(broker.port, f"{root}/#") as sub:
            proc = _start_daemon(config, log)
            try:
                wait_for(
                    lambda: any(m.payload["state"] == "online" for m in sub.of("status")),
                    20,
                    "online status",
                )
                wait_for(lambda: len(sub.of("heartbeat")) >= 2, 20, "two heartbeats")

                def summaries_for_both() -> bool:
                    seen = {
                        m.payload["sensor"]
                        for m in sub.of("summary")
                        if m.payload["windows_processed"] > 20
                    }
                    return seen >= set(plays)

                wait_for(summaries_for_both, 30, "summaries of both sensors")
                wait_for(lambda: sub.of("results"), 20, "window results")
            except AssertionError:
                print(log.read_text())
                raise
            finally:
                code = _stop(proc, log)
            assert code == 0, log.read_text()
            wait_for(
                lambda: sub.of("status")[-1].payload["state"] == "offline",
                10,
                "offline status after SIGTERM",
            )

            for name, label in plays.items():
                summaries = [m.payload for m in sub.of("summary") if m.payload["sensor"] == name]
                counts: dict[str, int] = {}
                for s in summaries:
                    for k, v in s["label_counts"].items():
                        counts[k] = counts.get(k, 0) + v
                total = sum(counts.values())
                assert total > 0
                share = counts.get(label, 0) / total
                assert share >= 0.8, (name, counts)
                assert all(s["model"] == "imu-activity" and s["model_version"] for s in summaries)

            # Envelope and gap-free sequence per topic, as the reference consumer checks it.
            checker = ContractChecker()
            for m in list(sub.messages):
                checker.feed(m.topic, m.payload)
            assert checker.violations == []
            for kind in ("heartbeat", "summary", "results", "events"):
                assert checker.of(kind), kind
                assert checker.topics[f"{root}/{kind}"].last_seq == len(checker.of(kind))
            # One connection: online and offline share the connection's status seq.
            assert [(m["state"], m["seq"]) for m in checker.of("status")] == [
                ("online", 1),
                ("offline", 1),
            ]
            assert {m["device"] for _, m in checker.accepted} == {"gw-e2e"}
        # A consumer that subscribes later learns the gateway's state from the retained status.
        with collector(broker.port, f"{root}/status") as late:
            retained = wait_for(lambda: late.of("status"), 10, "retained status")
            assert retained[0].retain
            assert retained[0].payload["state"] == "offline"
    finally:
        for emu in emulators.values():
            emu.close()

    # Nothing committed was left behind: every result row reached the outbox and went out.
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        assert results > 0
        cursor = conn.execute("SELECT value FROM meta WHERE key='results_cursor'").fetchone()[0]
        assert int(cursor) == conn.execute("SELECT max(id) FROM results").fetchone()[0]
    finally:
        conn.close()


def test_embedded_default_shows_live_results_within_15s(broker: Mosquitto, tmp_path: Path) -> None:
    """`make run`'s path: no config file, two emulated sensors at their real 50 Hz rate.

    The default model's first window needs 5.12 s of samples; about 7 s after start on an
    idle machine, so 15 s leaves room for a loaded one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env |= {
        "EDGE_AGENT_MQTT__PORT": str(broker.port),
        "EDGE_AGENT_STORAGE__PATH": str(tmp_path / "default.db"),
        "EDGE_AGENT_DEVICE__ID": "gw-default",
    }
    log = tmp_path / "default.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(
            lambda: log.read_text().count(" result imu-") >= 2,
            15,
            "live window results on the terminal",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"no clean stop on SIGINT:\n{log.read_text()}") from None
    text = log.read_text()
    assert code == 0, text
    assert "result imu-0" in text
    assert "result imu-1" in text
    assert "Traceback" not in text
