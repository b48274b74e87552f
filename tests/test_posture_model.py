"""The MiniRocket-style export, the classification figures, and the shipped default model.

Exports run in real ONNX Runtime and LiteRT on small generated windows (never the shipped
model's training); the shipped `imu-posture` bundle is run on its own recording of a person
its final fit kept out.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from edge_agent.config import load_config
from edge_agent.inference import export, minirocket, report
from edge_agent.inference.bundle import Bundle, find_bundle, shipped_models_dir, shipped_recording
from edge_agent.inference.runtime import open_runtime

WINDOW = 64
CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"]


def _windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes: still with gravity on x, still with gravity on z, shaking."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    x = rng.normal(scale=0.02, size=(n, WINDOW, 6)).astype(np.float32)
    x[labels == 0, :, 0] += 1.0
    x[labels == 1, :, 2] += 1.0
    t = np.arange(WINDOW, dtype=np.float32)
    shake = np.sin(2 * np.pi * t / 8.0)[None, :] * rng.uniform(0.3, 0.6, size=(n, 1))
    x[labels == 2, :, 1] += shake[labels == 2].astype(np.float32)
    x[labels == 2, :, 3] += 2.0 * shake[labels == 2].astype(np.float32)
    return x, labels.astype(np.int64)


@pytest.fixture(scope="module")
def rocket_model() -> tuple[export.Classifier, np.ndarray, np.ndarray]:
    x, y = _windows(240, seed=1)
    layout = export.generic_layout(WINDOW, CHANNELS)
    rocket = minirocket.fit_minirocket(x, dilations=3, biases=2, seed=0)
    bare = export.Classifier(layout, ["a", "b", "c"], np.zeros(0), np.zeros(0), [], [], rocket)
    feats = export.model_features(x, bare)
    mu = feats.mean(axis=0).astype(np.float32)
    inv = (1.0 / np.maximum(feats.std(axis=0), 0.02)).astype(np.float32)
    ridge = RidgeClassifier(alpha=10.0).fit((feats - mu) * inv, y)
    model = export.Classifier(
        layout,
        ["a", "b", "c"],
        mu,
        inv,
        [ridge.coef_.T.astype(np.float32)],
        [ridge.intercept_.astype(np.float32)],
        rocket,
    )
    return model, x, y


def _numpy_probabilities(model: export.Classifier, x: np.ndarray) -> np.ndarray:
    z = (export.model_features(x, model) - model.feature_mean) * model.feature_inv_std
    logits = z @ model.weights[0] + model.biases[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _bundle(directory: Path, runtime: str, file: str, model: export.Classifier) -> Bundle:
    from edge_agent.inference.bundle import write_manifest

    (directory / "MODEL_CARD.md").write_text("test\n")
    return write_manifest(
        directory,
        {
            "format": 1,
            "name": directory.name,
            "version": "0.0.1",
            "task": "classification",
            "runtime": runtime,
            "model_file": file,
            "input": {
                "name": export.INPUT_NAME,
                "dtype": "float32",
                "rate_hz": 50.0,
                "window": WINDOW,
                "hop": WINDOW,
                "channels": CHANNELS,
            },
            "output": {"name": export.OUTPUT_NAME, "labels": model.labels},
        },
    )


def test_kernel_model_exports_match_the_numpy_twin_and_int8_agrees(
    rocket_model: tuple[export.Classifier, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """fp32 ONNX and LiteRT graphs compute what numpy computes; int8 picks the same label."""
    model, train_x, _ = rocket_model
    test_x, test_y = _windows(120, seed=2)
    reference = _numpy_probabilities(model, test_x)
    assert np.mean(reference.argmax(axis=1) == test_y) >= 0.95

    onnx_dir = tmp_path / "k-onnx"
    litert_dir = tmp_path / "k-litert"
    onnx_dir.mkdir()
    litert_dir.mkdir()
    onnx.save(export.onnx_classifier(model, "k", "test"), onnx_dir / "fp32.onnx")
    export.quantize_onnx(onnx_dir / "fp32.onnx", onnx_dir / "int8.onnx", train_x)
    (litert_dir / "fp32.tflite").write_bytes(export.tflite_classifier(model, "test"))
    ranges = export.calibrate_mlp(model, train_x)
    (litert_dir / "int8.tflite").write_bytes(export.tflite_classifier(model, "test", ranges))

    formats = (("onnx", onnx_dir, "onnx"), ("litert", litert_dir, "tflite"))
    for runtime, directory, suffix in formats:
        for precision in ("fp32", "int8"):
            bundle = _bundle(directory, runtime, f"{precision}.{suffix}", model)
            rt = open_runtime(bundle)
            try:
                probs = rt.run(np.ascontiguousarray(test_x))
            finally:
                rt.close()
            agree = np.mean(probs.argmax(axis=1) == reference.argmax(axis=1))
            if precision == "fp32":
                # A proportion can flip by one position where a kernel output sits on its
                # bias, so probabilities are compared loosely and labels strictly.
                assert agree >= 0.99, (runtime, precision, agree)
                assert np.abs(probs - reference).max() < 0.05
            else:
                assert agree >= 0.95, (runtime, precision, agree)


def test_transform_is_blind_to_a_constant_offset_only_through_its_kernels() -> None:
    """The zero-sum kernels ignore a constant per-channel offset (gravity); the hand-made
    features beside them are what see it."""
    x, _ = _windows(20, seed=3)
    rocket = minirocket.fit_minirocket(x, dilations=2, biases=1, seed=0)
    shifted = x + np.array([0.5, -0.3, 0.2, 0.0, 0.0, 0.0], dtype=np.float32)
    a = minirocket.transform(x, rocket)
    b = minirocket.transform(shifted, rocket)
    assert np.mean(np.abs(a - b) < 1e-6) > 0.99
    assert a.shape == (20, rocket.width)


def test_figures_match_an_independent_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, size=300)
    predicted = np.where(rng.random(300) < 0.8, truth, rng.integers(0, 4, size=300))
    labels = ["w", "x", "y", "z"]
    f = report.figures(truth, predicted, labels)
    assert np.array_equal(f.confusion, confusion_matrix(truth, predicted, labels=[0, 1, 2, 3]))
    assert f.accuracy == pytest.approx(np.mean(truth == predicted))
    assert f.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    p, r, f1, support = precision_recall_fscore_support(truth, predicted, labels=[0, 1, 2, 3])
    for i, c in enumerate(f.per_class):
        assert (c.precision, c.recall, c.f1) == pytest.approx((p[i], r[i], f1[i]))
        assert c.support == support[i]
    assert "**macro**" in report.class_table(f)
    png = tmp_path / "c.png"
    report.confusion_png(f, png)
    with Image.open(png) as img:
        assert img.size[0] == img.size[1] > 4 * 30
        # The diagonal cells (the largest share of each row) are shaded darker than
        # the off-diagonal ones.
        rgb = img.convert("RGB")
        cell = img.size[0] // 4
        diag = rgb.getpixel((cell // 4, cell // 4))
        off = rgb.getpixel((cell + cell // 4, cell // 4))
        assert sum(diag) < sum(off)


def _recording_windows(path: Path, window: int, hop: int, labels: list[str]) -> tuple:
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    data = np.array([[float(v) for v in row[1:7]] for row in rows[1:]], dtype=np.float32)
    names = [row[7] for row in rows[1:]]
    xs, ys = [], []
    for start in range(0, len(names) - window + 1, hop):
        span = set(names[start : start + window])
        if len(span) == 1 and names[start] in labels:
            xs.append(data[start : start + window])
            ys.append(labels.index(names[start]))
    return np.stack(xs), np.array(ys)


def test_the_default_model_labels_a_person_it_never_saw() -> None:
    """The shipped default runs on LiteRT int8 and labels its recording of user 2 (kept
    out of its final fit) as the data set's labels say, on nearly every window."""
    cfg = load_config(None, environ={})
    assert all(s.models == ["imu-posture"] for s in cfg.sensors)
    recording = shipped_recording()
    assert recording.parent.parent.name == "imu-posture"
    bundle = find_bundle("imu-posture", [shipped_models_dir()])
    m = bundle.manifest
    assert (m.runtime, m.model_file) == ("litert", "model_int8.tflite")
    card = (bundle.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "commercial use is prohibited" in card
    assert "CC BY 4.0" in card
    assert "Reyes-Ortiz" in card
    x, y = _recording_windows(recording, m.input.window, m.input.hop, m.output.labels)
    assert set(y) >= {m.output.labels.index(v) for v in ("sitting", "standing", "lying")}
    rt = open_runtime(bundle)
    try:
        predicted = rt.run(x).argmax(axis=1)
    finally:
        rt.close()
    assert np.mean(predicted == y) >= 0.9


def test_the_default_configuration_never_imports_onnx_runtime() -> None:
    """Loading the default config's models (the daemon's own loader) leaves ONNX Runtime
    unimported; loading an ONNX bundle imports it."""
    code = """
import sys
from edge_agent.config import load_config
from edge_agent.inference.bundle import find_bundle, shipped_models_dir
from edge_agent.inference.runtime import open_runtime
import edge_agent.daemon  # everything the daemon imports at start
cfg = load_config(None, environ={})
for ref in sorted({r for s in cfg.sensors for r in s.models}):
    open_runtime(find_bundle(ref, [shipped_models_dir()])).close()
print("onnxruntime" in sys.modules)
open_runtime(find_bundle("imu-posture-onnx", [shipped_models_dir()])).close()
print("onnxruntime" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
