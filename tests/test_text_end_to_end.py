"""End to end for the `text` profile: a sketch on a pty → `edge-agent run` → window results.

Nothing is faked: the emulator prints lines of numbers to a real pseudo-terminal, bad lines
of every kind among them (a banner, NaN, inf, a cut line, binary noise, an endless line, a
value no sensor reads); the daemon, a real process, reads them through pyserial with the
`text` profile, runs the shipped ONNX model and commits its results to a real SQLite file.
The sketch prints the walking part of the model's held-out recording in m/s² and °/s, so
results labelled "walking" show the values reached the model in the right units.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

from edge_agent.inference.bundle import shipped_models_dir
from firmware_bridge.emulator import GRAVITY, CsvRecording, DeviceEmulator
from tests.broker import wait_for
from tests.daemon_proc import events, start_daemon, stop_daemon, write_config
from tests.test_sensors_cli import STILL, Still, cli_env

RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"


def _walking(out: Path) -> Path:
    with RECORDING.open() as src, out.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(dst, reader.fieldnames)
        writer.writeheader()
        for i, row in enumerate(r for r in reader if r["label"] == "walking"):
            row["timestamp"] = f"{i / 10:.1f}"
            writer.writerow(row)
    return out


def _labels(db: Path, sensor: str = "arduino") -> list[str]:
    """Labels of the window results of ``sensor`` committed so far."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT label FROM results WHERE sensor = ?", (sensor,)).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()
    return [r[0] for r in rows]


def test_sketch_lines_with_garbage_become_window_results(tmp_path: Path) -> None:
    """Three lines of config, a sketch printing CSV with junk in the middle: the daemon
    announces ax..gz in m/s² and °/s, refuses only the junk, and commits results whose
    labels are the activity played."""
    emulator = DeviceEmulator(
        CsvRecording(_walking(tmp_path / "walking.csv")),
        device_id="arduino",
        wire="text",
        garbage_every=7,
        max_rate=True,
    )
    db = tmp_path / "agent.db"
    config = write_config(tmp_path / "agent.toml", db=db, sensors=[])
    with emulator:
        config.write_text(
            config.read_text()
            + "[[sensors]]\n"
            + 'name = "arduino"\n'
            + 'link = "serial"\n'
            + f'port = "{emulator.tty_path}"\n'
            + 'profile = { protocol = "text", rate_hz = 10 }\n'
            + 'models = ["imu-activity"]\n'
        )
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        try:
            wait_for(lambda: len(_labels(db)) >= 40, 60, "40 window results")
            assert proc.poll() is None, log.read_text()
        finally:
            code = stop_daemon(proc, log)
        assert code == 0, log.read_text()
        assert emulator.samples_sent // 7 >= 20  # junk lines printed among the samples
    labels = _labels(db)
    assert labels.count("walking") / len(labels) >= 0.8, labels
    (hello,) = [body for _, _, sensor, body in events(db, "sensor.hello") if sensor == "arduino"]
    assert hello["channels"] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert hello["sample_rate_hz"] == 10.0
    assert not events(db, "component.failed")
    # Each kind of junk is reported once (event), every junk line is counted (health).
    reasons = sorted(b["reason"] for _, _, s, b in events(db, "sensor.rejected") if s == "arduino")
    assert reasons == sorted(
        [
            "text line with a field that is not a finite number",
            "text line with a value beyond its channel's full_scale",
            "text line longer than max_line_bytes",
            "text line with more or fewer fields than the layout",
        ]
    )


def test_sensors_test_shows_the_printed_values(tmp_path: Path) -> None:
    """`edge-agent sensors test PORT --profile text` as a real process against a sketch on a
    pty printing a still, tilted IMU with junk lines among the samples: the summary holds the
    printed values in m/s² and °/s, and counts the junk as bad lines."""
    still = Still(STILL)
    with DeviceEmulator(still, device_id="uno", wire="text", garbage_every=5) as emulator:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent", "sensors", "test", emulator.tty_path,
             "--profile", "text", "--seconds", "2.5", "--json"],
            capture_output=True, text=True, timeout=60, env=cli_env(tmp_path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["profile"] == "text"
    assert summary["device"]["channels"] == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert summary["device"]["declared_rate_hz"] == 10.0
    latest = summary["latest"]
    printed = [round(v, 4) for v in (*STILL[:3], *(math.degrees(w) for w in STILL[3:]))]
    for name, value, lsb in zip(
        ("ax", "ay", "az", "gx", "gy", "gz"),
        printed,
        [16 * GRAVITY / 32767] * 3 + [2000 / 32767] * 3,
        strict=True,
    ):
        assert abs(latest[name]["value"] - value) <= lsb / 2 + 1e-6, name
    assert [latest[n]["unit"] for n in ("ax", "gx")] == ["m/s^2", "deg/s"]
    assert summary["errors"]["bad_lines"] >= 2
