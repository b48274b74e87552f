"""`edge-agent models train`: labelled CSV recordings in, a bundle the daemon loads out.

The recordings are generated here by the emulator's synthetic IMU (a small physical model
of a waist-worn sensor, labelled by activity) and written in the documented CSV format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference.bundle import find_bundle
from edge_agent.inference.runtime import open_runtime
from edge_agent.inference.training import TrainingError, train_bundle
from firmware_bridge.emulator import CsvRecording, SyntheticMotion

RATE_HZ = 25.0


def _write_recording(path: Path, seconds: float, seed: int) -> Path:
    motion = SyntheticMotion(
        RATE_HZ, seed=seed, activities=("lying", "walking", "running"), segment_s=20.0
    )
    samples, labels = motion.read(int(seconds * RATE_HZ))
    header = "timestamp,ax[m/s^2],ay[m/s^2],az[m/s^2],gx[rad/s],gy[rad/s],gz[rad/s],label"
    rows = [header]
    for i, (row, label) in enumerate(zip(samples, labels, strict=True)):
        rows.append(f"{i / RATE_HZ:.3f}," + ",".join(f"{v:.5f}" for v in row) + f",{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recordings")
    for seed in (1, 2):
        _write_recording(folder / f"session-{seed}.csv", 240.0, seed)
    return folder


def test_cli_trains_a_bundle_the_runtime_loads(recordings: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "waist-activity"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.run(
        [
            sys.executable, "-m", "edge_agent", "models", "train",
            "--csv", str(recordings), "--out", str(out), "--version", "0.1.0", "--json",
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["labels"] == ["lying", "running", "walking"]
    assert report["heldout_accuracy"] >= 0.8

    bundle = find_bundle("waist-activity", [tmp_path / "models"])  # digests verified
    manifest = bundle.manifest
    assert (manifest.version, manifest.runtime, manifest.task) == (
        "0.1.0",
        "onnx",
        "classification",
    )
    assert manifest.input.rate_hz == pytest.approx(RATE_HZ)
    assert (manifest.input.window, manifest.input.hop) == (50, 25)
    assert manifest.input.units["gx"] == "rad/s"
    assert "held-out" in (bundle.path / "MODEL_CARD.md").read_text().lower()

    # The runtime classifies a fresh recording it never saw.
    fresh = CsvRecording(_write_recording(tmp_path / "fresh.csv", 120.0, seed=9))
    runtime = open_runtime(bundle)
    starts = range(0, len(fresh) - 50 + 1, 25)
    uniform = [s for s in starts if len(set(fresh.labels[s : s + 50])) == 1]
    windows = np.stack([fresh.data[s : s + 50] for s in uniform])
    predicted = [manifest.output.labels[i] for i in runtime.run(windows).argmax(axis=1)]
    accuracy = np.mean([p == fresh.labels[s] for p, s in zip(predicted, uniform, strict=True)])
    assert accuracy >= 0.7
    runtime.close()


def test_unlabelled_or_mixed_recordings_are_refused(recordings: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "raw.csv"
    unlabelled.write_text("timestamp,ax,ay\n0.0,1,2\n0.1,1,2\n0.2,1,2\n")
    with pytest.raises(TrainingError, match="no 'label' column"):
        train_bundle([unlabelled], tmp_path / "m" / "x", "1")
    other = tmp_path / "other.csv"
    other.write_text("timestamp,ax,ay,label\n0.0,1,2,a\n0.1,1,2,a\n")
    with pytest.raises(TrainingError, match="differ from the first file"):
        train_bundle([recordings / "session-1.csv", other], tmp_path / "m" / "x", "1")
    with pytest.raises(TrainingError, match="need at least 2 labels"):
        train_bundle([other], tmp_path / "m" / "x", "1")
