"""The shipped demo embedding model: Fisherfaces fitted on synthetic faces, as ONNX.

Fisherfaces (Belhumeur et al., 1997) projects a face onto the directions that best
separate people relative to how much one person's captures differ. Here it is fitted on
:mod:`edge_agent.faces.synthetic` cartoons, because no real face data can be obtained:
it honours the same bundle contract as an ArcFace or MobileFaceNet model (112×112 RGB,
``(x − 127.5) / 128``, NCHW, unit-length output) so the whole data path, the gallery and
calibration can be exercised, but it has never seen a face and must not decide anything.

Graph: average-pool 7×7 → 3×16×16 features → per-image centring and L2 normalisation
(exposure invariance) → minus the mean face → projection → L2 normalisation.
Needs the ``train`` extra (the ``onnx`` package); the daemon never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.faces.calibrate import calibrate, pair_scores
from edge_agent.faces.synthetic import SIZE, synthetic_face
from edge_agent.inference.bundle import write_manifest

F32 = npt.NDArray[np.float32]

POOL = 7
GRID = SIZE // POOL
FEATURES = 3 * GRID * GRID
TRAIN_IDENTITIES = range(100_000, 100_300)
"""Synthetic people the projection is fitted on (tests and demos use other numbers)."""
CALIBRATION_IDENTITIES = range(200_000, 200_200)
"""Held-out synthetic people the suggested threshold is calibrated on."""
CAPTURES = 4
TARGET_FAR = 1e-4


def pooled_features(images: npt.NDArray[np.uint8]) -> F32:
    """What the graph computes before the projection, in numpy: ``(n, 768)`` unit vectors."""
    x = (images.astype(np.float32) - 127.5) / 128.0
    n = len(x)
    pooled = x.reshape(n, GRID, POOL, GRID, POOL, 3).mean(axis=(2, 4))
    flat = pooled.transpose(0, 3, 1, 2).reshape(n, FEATURES)  # NCHW order, as Flatten does
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    out: F32 = flat.astype(np.float32)
    return out


def fit_fisherfaces(features: F32, dim: int) -> tuple[F32, F32]:
    """Mean face and projection ``(768, dim)`` from ``(people, captures, 768)`` features.

    Whitens the within-person scatter (regularised), then keeps the directions of largest
    between-person scatter in that space.
    """
    people, captures, size = features.shape
    flat = features.reshape(-1, size).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = features - features.mean(axis=1, keepdims=True)
    within = np.einsum("pci,pcj->ij", centred, centred) / (people * captures)
    within += np.eye(size) * (1e-3 * np.trace(within) / size)
    values, vectors = np.linalg.eigh(within)
    whiten = vectors / np.sqrt(values)
    between = np.cov((features.mean(axis=1) - mean).T)
    _b_values, b_vectors = np.linalg.eigh(whiten.T @ between @ whiten)
    projection = whiten @ b_vectors[:, ::-1][:, :dim]
    return mean.astype(np.float32), projection.astype(np.float32)


def build_onnx(mean: F32, projection: F32, *, doc: str) -> Any:
    """The ONNX graph of the demo model (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim = projection.shape[1]
    nodes = [
        helper.make_node(
            "AveragePool", ["input"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["flat_mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "flat_mean"], ["centred"]),
        helper.make_node("LpNormalization", ["centred"], ["unit"], axis=1, p=2),
        helper.make_node("Sub", ["unit", "mean_face"], ["offset"]),
        helper.make_node("MatMul", ["offset", "projection"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "face-embed-demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [
            numpy_helper.from_array(mean, "mean_face"),
            numpy_helper.from_array(projection, "projection"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-agent"
    )
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class DemoReport:
    """Figures of a freshly built demo bundle, written into its card."""

    path: Path
    dim: int
    threshold: float
    tar: float
    far: float
    genuine_pairs: int
    impostor_pairs: int
    eer: float


def _faces(identities: range) -> npt.NDArray[np.uint8]:
    return np.array([[synthetic_face(i, v) for v in range(CAPTURES)] for i in identities])


def build_demo_bundle(out: Path, version: str = "1.0.0", *, dim: int = 128) -> DemoReport:
    """Fit, export, calibrate and write ``out/<version>/`` with manifest and card."""
    import onnx

    train = _faces(TRAIN_IDENTITIES)
    people = len(TRAIN_IDENTITIES)
    features = pooled_features(train.reshape(-1, SIZE, SIZE, 3)).reshape(people, CAPTURES, -1)
    mean, projection = fit_fisherfaces(features, dim)

    held = _faces(CALIBRATION_IDENTITIES).reshape(-1, SIZE, SIZE, 3)
    embedded = pooled_features(held) - mean
    embedded = embedded @ projection
    embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(CALIBRATION_IDENTITIES)), CAPTURES)
    genuine, impostor = pair_scores(embedded, labels)
    result = calibrate(genuine, impostor, target_far=TARGET_FAR)
    threshold = round(result.threshold, 4)

    directory = out / version
    directory.mkdir(parents=True, exist_ok=True)
    doc = "DEMO ONLY: Fisherfaces fitted on synthetic cartoon faces. Not for production decisions."
    onnx.save(build_onnx(mean, projection, doc=doc), str(directory / "model.onnx"))
    report = DemoReport(
        directory,
        dim,
        threshold,
        result.tar,
        result.far,
        len(genuine),
        len(impostor),
        result.eer,
    )
    (directory / "MODEL_CARD.md").write_text(_card(report, version), encoding="utf-8")
    write_manifest(
        directory,
        {
            "format": 1,
            "name": out.name,
            "version": version,
            "task": "embedding",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "input": {
                "name": "input",
                "dtype": "float32",
                "rate_hz": 1.0,
                "window": 1,
                "hop": 1,
                "channels": ["r", "g", "b"],
            },
            "output": {"name": "embedding", "labels": []},
            "face": {
                "layout": "NCHW",
                "width": SIZE,
                "height": SIZE,
                "color_order": "RGB",
                "mean": [127.5, 127.5, 127.5],
                "std": [128.0, 128.0, 128.0],
                "dim": dim,
                "l2_normalized": True,
                "threshold": threshold,
                "threshold_far": TARGET_FAR,
                "production": False,
            },
            "training": {
                "method": "Fisherfaces on 7x7 average-pooled pixels",
                "data": "synthetic cartoon faces (edge_agent/faces/synthetic.py), "
                f"{people} identities x {CAPTURES} captures",
                "script": "scripts/make_face_model.py",
            },
        },
    )
    return report


def _card(r: DemoReport, version: str) -> str:
    held = f"{CALIBRATION_IDENTITIES.start}–{CALIBRATION_IDENTITIES.stop - 1}"
    return f"""# face-embed-demo {version} — NOT FOR PRODUCTION DECISIONS

**This model has never seen a human face.** It exists so the face data path (crops, the
embedding runtime, the encrypted gallery, 1:N matching, calibration, events) can be run,
tested and demonstrated without any biometric data. Do not use it to let anyone through a
gate. For real deployments package an ArcFace or MobileFaceNet model as described in
`docs/face.md` ("Installing a production embedding model").

## What it is

- **Method:** Fisherfaces (within-person whitening, then the directions of largest
  between-person scatter) on 7×7 average-pooled pixels, with per-image centring and
  normalisation for exposure invariance; output {r.dim} values, L2-normalised.
- **Input contract:** 112×112 RGB, NCHW, `(pixel − 127.5) / 128` — the ArcFace convention,
  so a production model with the same contract replaces it by changing `faces.model`.
- **Training data:** synthetic cartoon faces drawn by `edge_agent/faces/synthetic.py`
  (identities {TRAIN_IDENTITIES.start}–{TRAIN_IDENTITIES.stop - 1}, {CAPTURES} captures each:
  exposure, a few pixels of shift, expression and sensor noise vary). Nothing downloaded.
- **Reproduce:** `.venv/bin/python scripts/make_face_model.py` (needs the `train` extra).

## Calibration

On held-out synthetic identities {held}, {CAPTURES} captures each.

| Figure | Value |
|---|---|
| Genuine pairs / impostor pairs | {r.genuine_pairs} / {r.impostor_pairs} |
| Suggested threshold (cosine, FAR ≤ {TARGET_FAR:g}) | {r.threshold:.4f} |
| FAR at that threshold | {r.far:.2e} |
| TAR at that threshold | {100 * r.tar:.2f} % |
| Equal error rate | {100 * r.eer:.3f} % |

These figures describe cartoons, not people. A real model's threshold must come from
`edge-agent faces calibrate` on labelled embeddings of the deployment's own population.
"""


def build_tflite(mean: F32, projection: F32, *, description: str) -> bytes:
    """The same model as a LiteRT flatbuffer, NHWC ``[N, 112, 112, 3]`` in, for LiteRT gateways.

    Flattening NHWC orders features (y, x, c) where the ONNX graph has (c, y, x); the mean
    face and the projection rows are permuted to match, so both files embed alike.
    """
    from ai_edge_litert import schema_py_generated as fb

    from edge_agent.inference.export import _TfliteGraph

    op, opt = fb.BuiltinOperator, fb.BuiltinOptions
    order = np.arange(FEATURES).reshape(3, GRID, GRID).transpose(1, 2, 0).reshape(-1)
    dim = projection.shape[1]
    g = _TfliteGraph(description)
    x = g.tensor("input", [SIZE, SIZE, 3])
    pool = fb.Pool2DOptionsT()
    pool.padding = fb.Padding.VALID
    pool.strideH = pool.strideW = pool.filterHeight = pool.filterWidth = POOL
    pooled = g.op(
        op.AVERAGE_POOL_2D, [x], [g.tensor("pooled", [GRID, GRID, 3])], opt.Pool2DOptions, pool
    )
    shape = g.const("flat_shape", np.array([-1, FEATURES], dtype=np.int32))
    reshape = fb.ReshapeOptionsT()
    reshape.newShape = [-1, FEATURES]
    flat = g.op(
        op.RESHAPE, [pooled, shape], [g.tensor("flat", [FEATURES])], opt.ReshapeOptions, reshape
    )
    centre = g.reduce(op.MEAN, flat, 1, True, "flat_mean", [1])
    centred = g.binary(op.SUB, flat, centre, "centred", [FEATURES])
    unit = g.op(
        op.L2_NORMALIZATION,
        [centred],
        [g.tensor("unit", [FEATURES])],
        opt.L2NormOptions,
        fb.L2NormOptionsT(),
    )
    offset = g.binary(op.SUB, unit, g.const("mean_face", mean[order]), "offset", [FEATURES])
    weights = g.const("projection", np.ascontiguousarray(projection[order].T))
    fc = fb.FullyConnectedOptionsT()
    fc.fusedActivationFunction = fb.ActivationFunctionType.NONE
    projected = g.op(
        op.FULLY_CONNECTED,
        [offset, weights, -1],
        [g.tensor("projected", [dim])],
        opt.FullyConnectedOptions,
        fc,
    )
    out = g.op(
        op.L2_NORMALIZATION,
        [projected],
        [g.tensor("embedding", [dim])],
        opt.L2NormOptions,
        fb.L2NormOptionsT(),
    )
    return g.finish([x], [out])
