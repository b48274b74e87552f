"""What the training scripts share: predictors set up like the daemon's backends (one thread,
no spinning), per-window latency measured fairly, and fresh bundle directories.

Imported by `train_imu_model.py` and `train_posture_model.py`, which run from this directory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from numpy.typing import NDArray

from edge_agent.inference import export

F32 = NDArray[np.float32]
Predict = Callable[[F32], F32]

LATENCY_WARMUP = 200
LATENCY_RUNS = 2000
LATENCY_BATCH = 64


def onnx_predictor(path: Path) -> Predict:
    """A function running an ONNX model the way the daemon's ONNX backend does."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(windows: F32) -> F32:
        return np.asarray(sess.run(None, {export.INPUT_NAME: windows})[0], dtype=np.float32)

    return predict


def litert_predictor(path: Path) -> Predict:
    """A function running a TFLite model with LiteRT (1 thread), resizing the batch as needed."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    current = [1]

    def predict(windows: F32) -> F32:
        if len(windows) != current[0]:
            interpreter.resize_tensor_input(inp, list(windows.shape), strict=True)
            interpreter.allocate_tensors()
            current[0] = len(windows)
        interpreter.set_tensor(inp, np.ascontiguousarray(windows))
        interpreter.invoke()
        return np.asarray(interpreter.get_tensor(out), dtype=np.float32)

    return predict


@dataclass(frozen=True)
class Latency:
    """Per-window latency of one model, in microseconds."""

    median_us: float
    p99_us: float
    batched_us: float


def measure_latency(predictors: list[Predict], windows: F32) -> list[Latency]:
    """Time single-window calls (how the daemon runs as windows close) and batched calls.

    The models take turns call by call, so background load on the machine hits all of them
    alike and the comparison stays fair even when the absolute figures wobble. Batched calls
    are timed one by one too and their median taken, for the same reason.
    """
    single = windows[:1]
    batch = np.ascontiguousarray(np.resize(windows, (LATENCY_BATCH, *windows.shape[1:])))
    # Single calls first, then batches: a LiteRT predictor resizes once between the phases.
    for _ in range(LATENCY_WARMUP):
        for predict in predictors:
            predict(single)
    samples = np.empty((len(predictors), LATENCY_RUNS), dtype=np.float64)
    for i in range(LATENCY_RUNS):
        for m, predict in enumerate(predictors):
            start = time.perf_counter_ns()
            predict(single)
            samples[m, i] = time.perf_counter_ns() - start
    batch_runs = LATENCY_RUNS // 4
    batched = np.empty((len(predictors), batch_runs), dtype=np.float64)
    for _ in range(LATENCY_WARMUP // 4):
        for predict in predictors:
            predict(batch)
    for i in range(batch_runs):
        for m, predict in enumerate(predictors):
            start = time.perf_counter_ns()
            predict(batch)
            batched[m, i] = time.perf_counter_ns() - start
    return [
        Latency(
            median_us=float(np.median(samples[m])) / 1e3,
            p99_us=float(np.percentile(samples[m], 99)) / 1e3,
            batched_us=float(np.median(batched[m])) / LATENCY_BATCH / 1e3,
        )
        for m in range(len(predictors))
    ]


def fresh_dir(path: Path, allowed: set[str], parser: argparse.ArgumentParser) -> None:
    """Create a version directory, refusing to adopt files that would not be in the bundle."""
    if path.is_dir():
        strays = sorted(p.name for p in path.iterdir() if p.name not in allowed)
        if strays:
            parser.error(f"{path} holds files that are not part of the bundle: {strays}")
    path.mkdir(parents=True, exist_ok=True)
