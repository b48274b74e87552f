"""Train a classifier bundle for a new sensor from labelled CSV recordings.

`edge-agent models train --csv DIR_OR_FILES --out models/NAME --version V` lands here. The
recordings use the emulator's CSV format (docs/protocol.md): `timestamp` in seconds, one
column per channel (optionally `name[unit]`), and a `label` column. The result is a bundle
the daemon loads like the shipped ones: features in the graph, an fp32 ONNX model (and its
int8 QDQ twin), a card with held-out accuracy, and a manifest with every file's digest.

The split is by time inside each labelled stretch: the first part trains, the last part is
held out, and windows overlapping the boundary are dropped, so no held-out sample was ever
seen in training. Needs the `train` extra (scikit-learn, onnx).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.bundle import Bundle, is_safe_name, load_bundle, write_manifest

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class TrainingError(EdgeAgentError, ValueError):
    """The recordings cannot train a model; the message says what to fix."""


@dataclass
class TrainReport:
    """What `train_bundle` did."""

    bundle: Path
    labels: list[str]
    train_windows: int
    heldout_windows: int
    heldout_accuracy: float
    heldout_accuracy_int8: float
    per_label: dict[str, tuple[int, int]] = field(default_factory=dict)
    """label -> (train windows, held-out windows)."""


@dataclass
class _Stretch:
    label: str
    samples: F32
    source: str


def _recording_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv")
        elif path.is_file():
            files.append(path)
        else:
            raise TrainingError(f"{path}: no such file or directory")
    if not files:
        raise TrainingError(f"no .csv recordings in {', '.join(map(str, paths))}")
    return files


def load_stretches(
    paths: Sequence[Path],
) -> tuple[list[_Stretch], tuple[str, ...], tuple[str, ...], float]:
    """Labelled stretches of all recordings, with the channels, units and sample rate."""
    from firmware_bridge.emulator import CsvRecording, RecordingError

    stretches: list[_Stretch] = []
    layout: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    rate: float | None = None
    for file in _recording_files(paths):
        try:
            rec = CsvRecording(file)
        except (RecordingError, OSError) as err:
            raise TrainingError(str(err)) from err
        if not rec.has_labels:
            raise TrainingError(f"{file}: no 'label' column; every sample needs its label")
        if layout is None:
            layout, rate = (rec.channels, rec.units), rec.rate_hz
        elif (rec.channels, rec.units) != layout:
            raise TrainingError(
                f"{file}: channels {list(rec.channels)} differ from the first recording's "
                f"{list(layout[0])}; all recordings must have the same columns"
            )
        elif rate is not None and abs(rec.rate_hz - rate) > 0.01 * rate:
            raise TrainingError(
                f"{file}: sampled at {rec.rate_hz:g} Hz, the first recording at {rate:g} Hz"
            )
        labels = rec.labels
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                label = labels[start]
                if label is not None:
                    stretches.append(_Stretch(label, rec.data[start:i], file.name))
                start = i
    if layout is None or rate is None:  # _recording_files never returns an empty list
        raise TrainingError("no recordings")
    return stretches, layout[0], layout[1], rate


def _split(
    stretches: list[_Stretch], window: int, hop: int, heldout: float
) -> tuple[F32, list[str], F32, list[str]]:
    """Windows of each stretch; the last `heldout` share of each stretch is held out."""
    train: list[F32] = []
    test: list[F32] = []
    train_y: list[str] = []
    test_y: list[str] = []
    for s in stretches:
        n = (len(s.samples) - window) // hop + 1 if len(s.samples) >= window else 0
        if n == 0:
            continue
        starts = np.arange(n) * hop
        # Held-out windows start after the boundary; training windows end before it.
        boundary = round(len(s.samples) * (1.0 - heldout))
        offsets = np.arange(window)
        tr = starts[starts + window <= boundary]
        te = starts[starts >= boundary]
        if len(tr):
            train.append(s.samples[tr[:, None] + offsets])
            train_y += [s.label] * len(tr)
        if len(te):
            test.append(s.samples[te[:, None] + offsets])
            test_y += [s.label] * len(te)
    empty = np.empty((0, window, stretches[0].samples.shape[1]), dtype=np.float32)
    return (
        np.concatenate(train) if train else empty,
        train_y,
        np.concatenate(test) if test else empty,
        test_y,
    )


def train_bundle(
    paths: Sequence[Path],
    out: Path,
    version: str,
    *,
    window_s: float = 2.0,
    hop_s: float = 1.0,
    heldout: float = 0.25,
    hidden: int = 32,
    seed: int = 0,
) -> TrainReport:
    """Train on the recordings and write `out/<version>/` as a loadable bundle.

    Raises:
        TrainingError: the recordings are unusable (missing labels, mixed layouts, too few
            windows of a label) or the output directory already holds a bundle version.
    """
    name = out.name
    if not is_safe_name(name) or not is_safe_name(version):
        raise TrainingError(
            f"model name {name!r} and version {version!r} may hold letters, digits, '.', '_', "
            "'-' only (the name is the last part of --out)"
        )
    target = out / version
    if target.exists() and any(target.iterdir()):
        raise TrainingError(f"{target} exists and is not empty; pick a new --version")
    stretches, channels, units, rate = load_stretches(paths)
    window = max(2, round(window_s * rate))
    hop = max(1, round(hop_s * rate))
    train_x, train_names, test_x, test_names = _split(stretches, window, hop, heldout)
    labels = sorted(set(train_names) | set(test_names))
    counts = {label: (train_names.count(label), test_names.count(label)) for label in labels}
    thin = [label for label, (tr, te) in counts.items() if tr < 5 or te < 1]
    if len(labels) < 2 or thin:
        raise TrainingError(
            f"need at least 2 labels with 5 training and 1 held-out window of {window_s:g} s "
            f"each; per label (train, held-out): {counts}. Record longer stretches."
        )
    try:
        import onnx
        from sklearn.neural_network import MLPClassifier
    except ImportError as err:
        raise TrainingError(
            f"training needs the `train` extra ({err.name} missing): "
            "pip install 'edge-agent[train]'"
        ) from err
    from edge_agent.inference import export
    from edge_agent.inference.runtime import open_runtime

    index = {label: i for i, label in enumerate(labels)}
    train_y = np.array([index[v] for v in train_names], dtype=np.int64)
    test_y = np.array([index[v] for v in test_names], dtype=np.int64)

    layout = export.generic_layout(window, channels)
    feats = export.features_numpy(train_x, layout)
    mu = feats.mean(axis=0).astype(np.float32)
    std = feats.std(axis=0)
    inv_std = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=2000, random_state=seed)
    clf.fit((feats - mu) * inv_std, train_y)
    model = export.Classifier(
        layout=layout,
        labels=labels,
        feature_mean=mu,
        feature_inv_std=inv_std,
        weights=[w.astype(np.float32) for w in clf.coefs_],
        biases=[b.astype(np.float32) for b in clf.intercepts_],
    )

    target.mkdir(parents=True, exist_ok=True)
    doc = f"{name} {version}: windows [N,{window},{len(channels)}] -> probabilities"
    fp32_path = target / "model_fp32.onnx"
    int8_path = target / "model_int8.onnx"
    onnx.save(export.onnx_classifier(model, name, doc), fp32_path)
    export.quantize_onnx(fp32_path, int8_path, train_x)
    unit_map = {c: u for c, u in zip(channels, units, strict=True) if u}
    manifest: dict[str, object] = {
        "format": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": "onnx",
        "model_file": fp32_path.name,
        "input": {
            "name": export.INPUT_NAME,
            "dtype": "float32",
            "rate_hz": round(rate, 6),
            "window": window,
            "hop": hop,
            "channels": list(channels),
            "units": unit_map,
        },
        "output": {"name": export.OUTPUT_NAME, "labels": labels},
        "preprocessing": {"features": "in-graph", "description": layout.describe()},
    }
    (target / "MODEL_CARD.md").write_text("provisional\n", encoding="utf-8")
    bundle = write_manifest(target, manifest)
    accuracy: dict[str, float] = {}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for precision, file in (("fp32", fp32_path.name), ("int8", int8_path.name)):
        variant = bundle.manifest.model_copy(update={"model_file": file})
        runtime = open_runtime(Bundle(bundle.path, variant))
        predicted = runtime.run(test_x).argmax(axis=1)
        runtime.close()
        accuracy[precision] = float(np.mean(predicted == test_y))
        if precision == "fp32":
            np.add.at(confusion, (test_y, predicted), 1)
    card = _card(
        name,
        version,
        paths,
        stretches,
        counts,
        accuracy,
        confusion,
        labels,
        rate,
        window,
        hop,
        channels,
        unit_map,
        layout.describe(),
        hidden,
        seed,
        heldout,
    )
    (target / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    manifest["metrics"] = {
        "heldout_accuracy": round(accuracy["fp32"], 6),
        "heldout_accuracy_int8": round(accuracy["int8"], 6),
        "heldout_windows": len(test_y),
        "precision": "fp32",
        "alternatives": {"fp32": fp32_path.name, "int8": int8_path.name},
    }
    manifest["provenance"] = {
        "recordings": sorted({s.source for s in stretches}),
        "tool": "edge-agent models train",
        "seed": seed,
        "split": f"last {heldout:.0%} of every labelled stretch held out, by time",
    }
    write_manifest(target, manifest)
    load_bundle(target)
    return TrainReport(
        bundle=target,
        labels=labels,
        train_windows=len(train_y),
        heldout_windows=len(test_y),
        heldout_accuracy=accuracy["fp32"],
        heldout_accuracy_int8=accuracy["int8"],
        per_label=counts,
    )


def _card(
    name: str,
    version: str,
    paths: Sequence[Path],
    stretches: list[_Stretch],
    counts: dict[str, tuple[int, int]],
    accuracy: dict[str, float],
    confusion: npt.NDArray[np.int64],
    labels: list[str],
    rate: float,
    window: int,
    hop: int,
    channels: Sequence[str],
    units: dict[str, str],
    features: str,
    hidden: int,
    seed: int,
    heldout: float,
) -> str:
    rows = "\n".join(f"| `{label}` | {tr} | {te} |" for label, (tr, te) in counts.items())
    matrix = ["| true \\ predicted | " + " | ".join(labels) + " |"]
    matrix.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, confusion, strict=True):
        matrix.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    sources = sorted({s.source for s in stretches})
    chan = ", ".join(f"`{c}`" + (f" ({units[c]})" if c in units else "") for c in channels)
    return f"""# Model card: {name} {version}

## What it does
Classifies windows of {window} samples ({window / rate:g} s at {rate:g} Hz, a new window every
{hop} samples) of channels {chan} into: {", ".join(f"`{v}`" for v in labels)}.
Features are computed inside the graph ({features}), then standardised and
classified by a {hidden}-unit ReLU MLP. `model_fp32.onnx` runs; `model_int8.onnx` (QDQ) is
its int8 twin.

## Data
Recordings: {", ".join(f"`{s}`" for s in sources)} ({len(stretches)} labelled stretches),
given as `{" ".join(str(p) for p in paths)}`. The last {heldout:.0%} of every stretch is held
out by time; windows that would overlap the boundary are dropped.

| label | training windows | held-out windows |
|---|---|---|
{rows}

## Held-out accuracy
fp32 {100 * accuracy["fp32"]:.2f} %, int8 {100 * accuracy["int8"]:.2f} %.

{chr(10).join(matrix)}

## Limitations
- Only as good as the recordings: same device, mounting and people as in the field, or the
  accuracy above does not carry over. Held-out windows come from the same stretches as the
  training windows (later in time), so this is an optimistic estimate.
- Anything that is none of the labels is forced into one of them.

## How to reproduce
`edge-agent models train --csv {" --csv ".join(str(p) for p in paths)} --out <dir>/{name}
--version {version}`
(seed {seed}; scikit-learn `MLPClassifier(hidden_layer_sizes=({hidden},), random_state={seed})`).
"""


def summary_json(report: TrainReport) -> str:
    """The report as one JSON line, for scripts."""
    return json.dumps(
        {
            "bundle": str(report.bundle),
            "labels": report.labels,
            "train_windows": report.train_windows,
            "heldout_windows": report.heldout_windows,
            "heldout_accuracy": round(report.heldout_accuracy, 4),
            "heldout_accuracy_int8": round(report.heldout_accuracy_int8, 4),
        }
    )
