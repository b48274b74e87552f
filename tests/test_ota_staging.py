"""Staging self-tests and probation judged on real ONNX Runtime sessions and real recordings.

Test models are generated with onnx.helper: a copy of the shipped activity model, one that
outputs NaN, one that outputs NaN only on real motion, one with the wrong input shape, one
that always says the same label.

Latency is judged on real runs timed by a stepping timer, not the wall clock: a model slow on
one processor is fast on the next, and this file must pass on any of them.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference.bundle import Bundle, load_bundle, write_manifest
from edge_agent.inference.runtime import open_runtime
from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.ota.probation import ProbationLimits, ProbationWatch, Verdict
from edge_agent.ota.staging import stage_bundle, write_golden
from tests.ota_support import (
    RECORDING,
    constant_model,
    make_bundle,
    nan_model,
    nan_on_live_data_model,
    untrained_model,
    wrong_shape_model,
)


def _golden(d: Path) -> Bundle:
    raw = json.loads((d / "manifest.json").read_text())
    raw.pop("files")
    raw["golden"] = write_golden(load_bundle(d), atol=1e-4, rtol=1e-3)
    return write_manifest(d, raw)


class SteppingTimer:
    """A timer that moves `step` on every reading: each timed call then takes exactly `step`."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


def _stage(
    bundle: Bundle,
    running: Bundle | None = None,
    budget_ms: float = 50.0,
    timer: SteppingTimer | None = None,
) -> None:
    runtime, report = stage_bundle(
        bundle,
        running=running.manifest if running else None,
        budget_ms=budget_ms,
        require_golden=True,
        **({"timer": timer} if timer else {}),
    )
    runtime.close()
    assert report.golden_windows == 8


def _refused(
    bundle: Bundle,
    running: Bundle | None = None,
    budget_ms: float = 50.0,
    timer: SteppingTimer | None = None,
) -> str:
    with pytest.raises(UpdateRejectedError) as err:
        _stage(bundle, running, budget_ms, timer)
    assert err.value.stage == "stage"
    return f"{err.value.check}: {err.value.reason}"


@pytest.fixture
def running(tmp_path: Path) -> Bundle:
    return _golden(make_bundle(tmp_path, "1.0.0"))


def test_a_copy_of_the_shipped_model_passes(tmp_path: Path, running: Bundle) -> None:
    bundle = _golden(make_bundle(tmp_path, "1.1.0"))
    runtime, report = stage_bundle(
        bundle, running=running.manifest, budget_ms=50.0, require_golden=True
    )
    runtime.close()
    assert report.golden_max_error == 0.0
    assert 0 < report.latency_ms_p50 <= report.latency_ms_max
    assert report.latency_runs == 15


def test_nan_output_is_refused(tmp_path: Path, running: Bundle) -> None:
    bundle = load_bundle(make_bundle(tmp_path, "1.1.0", model=nan_model))
    assert _refused(bundle, running).startswith("non_finite: ")


def test_wrong_input_shape_is_refused_with_both_shapes(tmp_path: Path, running: Bundle) -> None:
    bundle = load_bundle(make_bundle(tmp_path, "1.1.0", model=wrong_shape_model))
    reason = _refused(bundle, running)
    assert reason.startswith("input_shape: ")
    assert "[N, 20, 3]" in reason
    assert "[N, 20, 6]" in reason


def test_over_latency_budget_is_refused(tmp_path: Path, running: Bundle) -> None:
    bundle = _golden(make_bundle(tmp_path, "1.1.0"))
    timer = SteppingTimer(0.002)  # every single-window run takes 2 ms
    reason = _refused(bundle, running, budget_ms=0.5, timer=timer)
    assert reason.startswith("latency: one window takes 2.0 ms (median of 8 runs)")
    assert "ota.latency_budget_ms (0.5 ms)" in reason
    assert timer.readings == 16  # stopped once the median could no longer fit


def test_within_latency_budget_is_staged(tmp_path: Path, running: Bundle) -> None:
    bundle = _golden(make_bundle(tmp_path, "1.1.0"))
    timer = SteppingTimer(0.0004)  # 0.4 ms a run, under the 0.5 ms budget
    _stage(bundle, running, budget_ms=0.5, timer=timer)
    assert timer.readings == 30  # all 15 runs timed


def test_golden_vectors_not_reproduced_are_refused(tmp_path: Path, running: Bundle) -> None:
    d = make_bundle(tmp_path, "1.1.0")
    _golden(d)
    body = json.loads((d / "golden.json").read_text())
    body["outputs"][3][0] += 0.5
    (d / "golden.json").write_text(json.dumps(body))
    raw = json.loads((d / "manifest.json").read_text())
    raw.pop("files")
    assert _refused(write_manifest(d, raw), running).startswith("golden: ")


def test_missing_golden_vectors_are_refused_when_required(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, "1.1.0"))
    assert "no golden vectors" in _refused(bundle)


def test_other_input_contract_than_the_streams_cut_is_refused(
    tmp_path: Path, running: Bundle
) -> None:
    bundle = _golden(make_bundle(tmp_path, "2.0.0", rate_hz=50.0))
    reason = _refused(bundle, running)
    assert reason.startswith("input_contract: ")
    assert "rate_hz 100.0 -> 50.0" in reason


# -- probation ---------------------------------------------------------------------------------


def _live_windows() -> np.ndarray:
    """Windows of the real held-out recording, 20 samples every 10, all four activities."""
    with RECORDING.open() as fh:
        rows = [
            [float(r[c]) for c in ("ax", "ay", "az", "gx", "gy", "gz")] for r in csv.DictReader(fh)
        ]
    data = np.asarray(rows, dtype=np.float32)
    starts = range(0, len(data) - 20 + 1, 10)
    return np.stack([data[s : s + 20] for s in starts])


LIMITS = ProbationLimits(
    windows=60, seconds=0.0, max_error_rate=0.0, max_label_drift=0.5,
    collapse_share=0.98, latency_budget_ms=50.0,
)  # fmt: skip


def _probation(
    tmp_path: Path,
    running: Bundle,
    model: object,
    limits: ProbationLimits = LIMITS,
    timer_ns: int | None = None,
) -> tuple[list[Verdict], list[str]]:
    """Run the live windows in batches of 6 through a watch; returns verdicts and producers.

    `timer_ns`: each inference call is timed as taking exactly this long (else the clock)."""
    d = make_bundle(tmp_path, "1.1.0", model=model)  # type: ignore[arg-type]
    candidate = open_runtime(load_bundle(d))
    previous = open_runtime(running)
    verdicts: list[Verdict] = []
    timer = time.perf_counter_ns if timer_ns is None else itertools.count(0, timer_ns).__next__
    watch = ProbationWatch(load_bundle(d), running, previous, limits, verdicts.append, timer=timer)
    producers = []
    windows = _live_windows()
    try:
        for i in range(0, len(windows), 6):
            batch = np.ascontiguousarray(windows[i : i + 6])
            out, producer = watch.infer(candidate, batch, [("imu-0", len(batch))])
            assert out.shape == (len(batch), 4)
            assert np.all(np.isfinite(out)), "a non-finite output reached the results"
            producers.append(producer.manifest.version)
    finally:
        candidate.close()
        previous.close()
    return verdicts, producers


def test_probation_passes_a_good_version(tmp_path: Path, running: Bundle) -> None:
    verdicts, producers = _probation(tmp_path, running, None)
    assert [v.signal for v in verdicts] == ["passed"]
    assert verdicts[0].stats["label_drift"] == 0.0
    assert set(producers) == {"1.1.0"}


def test_nan_on_live_data_fails_probation_and_the_previous_version_answers(
    tmp_path: Path, running: Bundle
) -> None:
    verdicts, producers = _probation(tmp_path, running, nan_on_live_data_model)
    assert [v.signal for v in verdicts] == ["non_finite"]
    assert "NaN/inf" in verdicts[0].reason
    # Every batch from the first failing one on was answered by the previous version.
    first = producers.index("1.0.0")
    assert set(producers[first:]) == {"1.0.0"}


def test_a_collapsed_label_distribution_fails_probation(tmp_path: Path, running: Bundle) -> None:
    verdicts, _ = _probation(tmp_path, running, constant_model)
    assert [v.signal for v in verdicts] == ["label_collapse"]
    assert "'standing'" in verdicts[0].reason


def test_a_drifted_label_distribution_fails_probation(tmp_path: Path, running: Bundle) -> None:
    limits = ProbationLimits(
        windows=60, seconds=0.0, max_error_rate=0.0, max_label_drift=0.3,
        collapse_share=1.0, latency_budget_ms=50.0,
    )  # fmt: skip
    verdicts, _ = _probation(tmp_path, running, untrained_model, limits)
    assert [v.signal for v in verdicts] == ["label_drift"], verdicts[0].stats


def test_errors_and_latency_fail_probation(tmp_path: Path, running: Bundle) -> None:
    slow = ProbationLimits(
        windows=1000, seconds=0.0, max_error_rate=0.0, max_label_drift=1.0,
        collapse_share=1.0, latency_budget_ms=0.5,
    )  # fmt: skip
    # Every batch of 6 windows takes 6 ms: 1 ms a window.
    verdicts, _ = _probation(tmp_path / "slow", running, None, slow, timer_ns=6_000_000)
    assert [v.signal for v in verdicts] == ["latency"]
    assert "takes 1.0 ms per live window (median of 5 calls)" in verdicts[0].reason
    # A session that fails at run time (closed under it) is an error at once.
    d = make_bundle(tmp_path / "err", "1.1.0")
    candidate, previous = open_runtime(load_bundle(d)), open_runtime(running)
    candidate.close()
    verdicts = []
    watch = ProbationWatch(load_bundle(d), running, previous, LIMITS, verdicts.append)
    out, producer = watch.infer(candidate, _live_windows()[:4], [("imu-0", 4)])
    previous.close()
    assert producer is running
    assert out.shape == (4, 4)
    assert [v.signal for v in verdicts] == ["errors"]
    assert "session is closed" in verdicts[0].reason
