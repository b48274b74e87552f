"""The per-stream moving-average / z-score baseline (`runtime = "baseline"`), shipped bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.baseline import BaselineRuntime
from edge_agent.inference.bundle import find_bundle, load_bundle, shipped_models_dir, write_manifest
from edge_agent.inference.runtime import open_runtime

MODELS = shipped_models_dir()


def _steady(n: int, seed: int, amplitude: float = 2.0) -> np.ndarray:
    """Windows of walking-like motion: a sine per axis plus noise, [n, 20, 6]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n * 20).reshape(n, 20, 1) / 10.0
    phase = rng.uniform(0, 2 * np.pi, 6)
    x = amplitude * np.sin(2 * np.pi * 1.8 * t + phase) + rng.normal(0, 0.2, (n, 20, 6))
    return x.astype(np.float32)


@pytest.fixture
def baseline() -> BaselineRuntime:
    rt = open_runtime(find_bundle("imu-anomaly", [MODELS]))
    assert isinstance(rt, BaselineRuntime)
    return rt


def test_steady_motion_is_normal_and_a_stuck_sensor_is_not(baseline: BaselineRuntime) -> None:
    steady = _steady(60, seed=1)
    stuck = np.repeat(steady[-1:, -1:, :], 5, axis=0).repeat(20, axis=1)
    out = baseline.infer(np.concatenate([steady, stuck]), [("imu-0", 65)])
    flags = out.argmax(axis=1)
    assert out.shape == (65, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert flags[:60].sum() == 0
    assert flags[60:].all()


def test_state_is_per_stream_whatever_the_batching(baseline: BaselineRuntime) -> None:
    """Interleaved batches mixing two streams score each stream as if it ran alone."""
    quiet = _steady(40, seed=2, amplitude=0.3)
    busy = _steady(40, seed=3, amplitude=5.0)
    alone = BaselineRuntime(baseline.bundle)
    expected_quiet = alone.run_streams(quiet, [("q", 40)])
    expected_busy = alone.run_streams(busy, [("b", 40)])
    got_quiet, got_busy = [], []
    for start in range(0, 40, 7):
        q, b = quiet[start : start + 7], busy[start : start + 7]
        out = baseline.infer(np.concatenate([q, b]), [("q", len(q)), ("b", len(b))])
        got_quiet.append(out[: len(q)])
        got_busy.append(out[len(q) :])
    np.testing.assert_allclose(np.concatenate(got_quiet), expected_quiet, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(got_busy), expected_busy, atol=1e-6)
    assert baseline.stats.mixed_calls == 6
    # Feeding the busy stream's windows into the quiet stream's baseline is an anomaly.
    assert baseline.infer(busy[:3], [("q", 3)]).argmax(axis=1).all()


def test_warm_up_windows_are_normal_and_reset_forgets(baseline: BaselineRuntime) -> None:
    warmup = baseline.params.warmup_windows
    wild = np.concatenate([_steady(3, seed=4, amplitude=0.1), _steady(3, seed=5, amplitude=9.0)])
    assert baseline.infer(wild[:warmup], [("s", len(wild[:warmup]))]).argmax(axis=1).sum() == 0
    baseline.reset("s")
    assert "s" not in baseline.state.streams
    # The warm-up run at load kept no state either.
    assert list(baseline.state.streams) == []


def test_segments_must_cover_the_batch(baseline: BaselineRuntime) -> None:
    with pytest.raises(RuntimeBackendError, match="segments cover 3 windows, the batch has 4"):
        baseline.run_streams(_steady(4, seed=6), [("s", 3)])


def _bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "imu-anomaly" / "1.0.0"
    shutil.copytree(find_bundle("imu-anomaly", [MODELS]).path, target)
    return target


def test_bad_parameters_name_the_key(tmp_path: Path) -> None:
    path = _bundle_copy(tmp_path)
    params = json.loads((path / "baseline.json").read_text())
    params["z_threshold"] = -1
    (path / "baseline.json").write_text(json.dumps(params))
    manifest = json.loads((path / "manifest.json").read_text())
    write_manifest(path, manifest)
    with pytest.raises(RuntimeBackendError, match=r"baseline.json invalid: z_threshold"):
        open_runtime(load_bundle(path))


def test_group_channels_must_exist(tmp_path: Path) -> None:
    path = _bundle_copy(tmp_path)
    params = json.loads((path / "baseline.json").read_text())
    params["groups"][0]["channels"] = ["ax", "ay", "accel_z"]
    (path / "baseline.json").write_text(json.dumps(params))
    write_manifest(path, json.loads((path / "manifest.json").read_text()))
    with pytest.raises(RuntimeBackendError, match=r"group 'accel' uses \['accel_z'\]"):
        open_runtime(load_bundle(path))
