"""Several models per stream and cross-stream batching, end to end.

Two emulated devices write protocol v1 to real pseudo-terminals; the daemon runs in this
process (so its runtimes' counters can be read) with a real mosquitto, real ONNX Runtime and
LiteRT sessions and a real SQLite file. One device plays walking then a stuck sensor at
10 Hz; the other is the synthetic 100 Hz IMU, decimated by the pipeline to the models' 10 Hz.
Each runs the ONNX classifier, the LiteRT classifier and the anomaly baseline.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.daemon import Daemon
from edge_agent.inference.bundle import shipped_models_dir
from edge_agent.pipeline.results import ResultBatch
from firmware_bridge.emulator import CsvRecording, DeviceEmulator, SyntheticMotion
from tests.broker import Mosquitto, wait_for

RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"
MODELS = ["imu-activity", "imu-activity-litert", "imu-anomaly"]
STUCK_SAMPLES = 150


def _walking_then_stuck(out: Path) -> Path:
    """Walking (the held-out block, twice) then the last sample repeated: a stuck sensor."""
    with RECORDING.open() as src:
        rows = [r for r in csv.DictReader(src) if r["label"] == "walking"]
    rows = rows + rows + [dict(rows[-1], label="stuck")] * STUCK_SAMPLES
    with out.open("w", newline="") as dst:
        writer = csv.DictWriter(dst, list(rows[0]))
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "timestamp": f"{i / 10:.1f}"})
    return out


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def test_three_models_two_streams_batched(broker: Mosquitto, tmp_path: Path) -> None:
    walk = DeviceEmulator(
        CsvRecording(_walking_then_stuck(tmp_path / "walk.csv")),
        device_id="wrist",
        max_rate=True,
    )
    synth = DeviceEmulator(SyntheticMotion(100.0, seed=3), device_id="waist", max_rate=True)
    emulators = {"wrist": walk, "waist": synth}
    db = tmp_path / "agent.db"
    batches: list[ResultBatch] = []
    with walk, synth:
        config = parse_config(
            {
                "device": {"id": "gw-mm"},
                "mqtt": {"port": broker.port},
                "storage": {"path": str(db)},
                "logging": {"show_results": False},
                "sync": {"summary_interval_s": 3600.0},
                "sensors": [
                    {"name": name, "link": "serial", "port": emu.tty_path, "models": MODELS}
                    for name, emu in emulators.items()
                ],
            },
            source="test",
            environ={},
        )
        daemon = Daemon(config, on_result=batches.append, handle_signals=False)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(daemon.run())
            except BaseException as err:  # surfaced below
                failure.append(err)

        thread = threading.Thread(target=serve, name="daemon")
        thread.start()
        try:
            # One full pass of the wrist recording (walking x2 + stuck) is ~89 windows.
            wait_for(
                lambda: failure or daemon.windows_committed >= 3 * 2 * 100,
                30,
                "windows of every model committed",
            )
        finally:
            daemon.request_stop()
            thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"
        assert not failure, failure

    # Every model ran, on both streams, in batches that mixed the two streams.
    assert set(daemon.slots) == set(MODELS)
    for ref, slot in daemon.slots.items():
        stats = slot.runtime.stats
        assert stats.windows >= 200, ref
        assert stats.mixed_calls > 0, ref
        assert stats.largest_batch > 1, ref
    assert {(b.model, b.version) for b in batches} == {(m, "1.0.0") for m in MODELS}

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT sensor, model, model_version, count(*) FROM results GROUP BY 1, 2, 3"
        ).fetchall()
        assert {(r[0], r[1], r[2]) for r in rows} == {
            (s, m, "1.0.0") for s in emulators for m in MODELS
        }
        # The three models see the same windows of a stream (same rate, window and hop).
        for sensor in emulators:
            ends = [
                conn.execute(
                    "SELECT t_end FROM results WHERE sensor = ? AND model = ? ORDER BY id",
                    (sensor, model),
                ).fetchall()
                for model in MODELS
            ]
            assert ends[0] == ends[1] == ends[2], sensor
        # ONNX fp32 and LiteRT int8 pick the same activity almost everywhere. (The ≥ 99 % bar
        # is on held-out data, checked by the training script; the synthetic waist IMU and
        # the stuck stretch are far from the training data and nearer decision boundaries.)
        pairs = conn.execute(
            "SELECT a.label, b.label FROM results a JOIN results b "
            "ON a.sensor = b.sensor AND a.t_end = b.t_end "
            "WHERE a.model = 'imu-activity' AND b.model = 'imu-activity-litert'"
        ).fetchall()
        assert sum(a == b for a, b in pairs) / len(pairs) >= 0.9
        # The stuck stretch of the wrist recording is flagged; steady motion mostly is not.
        anomalies = dict(
            conn.execute(
                "SELECT sensor, sum(label = 'anomaly') FROM results "
                "WHERE model = 'imu-anomaly' GROUP BY sensor"
            ).fetchall()
        )
        wrist_windows = {r[0]: r[3] for r in rows if r[1] == "imu-anomaly"}["wrist"]
        assert 5 <= anomalies["wrist"] < 0.4 * wrist_windows
        # Summaries carry the anomaly count for the detector and null for classifiers.
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM summaries")]
    finally:
        conn.close()
    by_model: dict[str, list[dict[str, object]]] = {}
    for body in bodies:
        by_model.setdefault(str(body["model"]), []).append(body)
    assert set(by_model) == set(MODELS)
    assert all(b["anomaly_count"] is None for m in MODELS[:2] for b in by_model[m])
    wrist = [b for b in by_model["imu-anomaly"] if b["sensor"] == "wrist"]
    assert sum(int(b["anomaly_count"]) for b in wrist) == anomalies["wrist"]  # type: ignore[call-overload]
