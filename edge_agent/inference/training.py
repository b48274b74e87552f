"""Train a classifier bundle from labelled data, judged on groups it never saw.

`edge-agent models train DATA... --out models/NAME --version V` lands here. DATA is CSV
recordings (one file per session, or one per labelled case; `edge_agent.inference.datasets`)
or a UEA/UCR `.ts` file. The result is a bundle the daemon loads like the shipped ones
(features in the graph, fp32 and int8 files, a card, a manifest with every file's digest) and
a report a customer can believe:

- Splits are by **group**, never by window: a `subject`/`session`/`group` column, else the
  file (a `.ts` case is its own group). k-fold over groups (`folds`) or leave-one-group-out
  (`folds=0`); or a separate test set (`test_paths`, e.g. a `.ts` TEST file). A held-out fold
  too small to mean anything is refused with the reason.
- Model families: `features` (window statistics + a small MLP) and `rocket` (MiniRocket-style
  random convolution kernels + the statistics + a ridge classifier); `auto` picks the one with
  the higher cross-validated macro-F1.
- The report: accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix, fp32 vs
  int8 agreement, and warnings for class imbalance and too little data.

Needs the `train` extra (scikit-learn, onnx).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import EdgeAgentError
from edge_agent.inference import report as rep
from edge_agent.inference.bundle import Bundle, is_safe_name, load_bundle, write_manifest
from edge_agent.inference.datasets import DataError, Windows, load_any

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Progress = Callable[[str, int, int], None]

FAMILIES = ("features", "rocket")
MIN_HELDOUT = 10
"""Fewest windows a held-out fold may have; fewer give figures that mean nothing."""
IMBALANCE_RATIO = 3.0
FEW_WINDOWS_PER_CLASS = 30
FEW_GROUPS = 5
MIN_INT8_AGREEMENT = 0.99
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


class TrainingError(EdgeAgentError, ValueError):
    """The data cannot train (or evaluate) a model; the message says what to fix."""


@dataclass
class TrainReport:
    """What `train_bundle` (or `evaluate_bundle`) found."""

    bundle: Path
    labels: list[str]
    family: str
    figures: rep.Figures
    method: str
    """How the figures were obtained (which split, how many folds and groups)."""
    train_windows: int
    heldout_windows: int
    groups: int
    group_kind: str
    cv_macro_f1: dict[str, float] = field(default_factory=dict)
    """Family -> cross-validated macro-F1 (the families tried)."""
    int8_agreement: float | None = None
    int8_accuracy: float | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def heldout_accuracy(self) -> float:
        """Accuracy on windows of groups the model never saw."""
        return self.figures.accuracy


# --------------------------------------------------------------------------------------------
# Splits.
# --------------------------------------------------------------------------------------------


def group_folds(
    groups: Sequence[str], folds: int, seed: int, *, min_heldout: int = MIN_HELDOUT
) -> list[tuple[I64, I64]]:
    """(train, held-out) window indices per fold; every group lies wholly on one side.

    `folds=0` holds out one group at a time. Otherwise groups are dealt into `folds` folds
    (largest first, each to the fold with the fewest windows; ties by a seeded shuffle).

    Raises:
        TrainingError: fewer than 2 groups, or a held-out fold under `min_heldout` windows.
    """
    names = sorted(set(groups))
    if len(names) < 2:
        raise TrainingError(
            f"all {len(groups)} windows come from one group ({names[0] if names else '-'}): "
            "nothing can be held out without holding out everything. Add recordings of "
            "other sessions or people (one file each, or a subject/session column)."
        )
    index = np.array([names.index(g) for g in groups], dtype=np.int64)
    sizes = np.bincount(index, minlength=len(names))
    k = len(names) if folds <= 0 else min(folds, len(names))
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(names))
    order = sorted(shuffled, key=lambda g: -int(sizes[g]))
    assignment = np.empty(len(names), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        assignment[g] = f
        load[f] += sizes[g]
    out: list[tuple[I64, I64]] = []
    for f in range(k):
        held = assignment[index] == f
        if held.sum() < min_heldout:
            members = [names[g] for g in range(len(names)) if assignment[g] == f]
            raise TrainingError(
                f"fold {f + 1} of {k} would hold out {int(held.sum())} windows "
                f"({', '.join(members)}): fewer than {min_heldout}, too few to mean anything. "
                "Use fewer folds (--folds), shorter windows or hops, or more data."
            )
        out.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return out


# --------------------------------------------------------------------------------------------
# Families.
# --------------------------------------------------------------------------------------------


def fit_family(
    family: str,
    x: F32,
    y: I64,
    labels: list[str],
    channels: Sequence[str],
    seed: int,
    *,
    hidden: int = 32,
) -> Any:
    """Fit one family on these windows only; returns an `export.Classifier`."""
    from edge_agent.inference import export, minirocket

    layout = export.generic_layout(x.shape[1], list(channels))
    rocket = None
    if family == "rocket":
        dilations = 6 if x.shape[1] >= 64 else 4
        rocket = minirocket.fit_minirocket(x, dilations=dilations, biases=4, seed=seed)
    empty = np.zeros(0, dtype=np.float32)
    bare = export.Classifier(layout, labels, empty, empty, [], [], rocket)
    feats = export.model_features(x, bare)
    mu = feats.mean(axis=0).astype(np.float32)
    std = feats.std(axis=0)
    if family == "rocket":
        from sklearn.linear_model import RidgeClassifierCV

        inv = (1.0 / np.maximum(std, 0.02)).astype(np.float32)
        z = (feats - mu) * inv
        ridge = RidgeClassifierCV(alphas=RIDGE_ALPHAS).fit(z, y)
        coef = np.atleast_2d(ridge.coef_)
        intercept = np.atleast_1d(ridge.intercept_)
        if len(labels) == 2:  # one score for the second class: make it two columns
            coef = np.concatenate([-coef, coef]) / 2
            intercept = np.concatenate([-intercept, intercept]) / 2
        # Ridge scores sit near ±1; a fixed multiplier makes the softmax a usable confidence.
        weights = [(coef.T * 5.0).astype(np.float32)]
        biases = [(intercept * 5.0).astype(np.float32)]
    elif family == "features":
        from sklearn.neural_network import MLPClassifier

        inv = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=1000, random_state=seed)
        clf.fit((feats - mu) * inv, y)
        weights = [w.astype(np.float32) for w in clf.coefs_]
        biases = [b.astype(np.float32) for b in clf.intercepts_]
        if len(labels) == 2:  # sklearn's binary MLP ends in one logistic unit
            last_w, last_b = weights[-1], biases[-1]
            weights[-1] = (np.concatenate([-last_w, last_w], axis=1) / 2).astype(np.float32)
            biases[-1] = (np.concatenate([-last_b, last_b]) / 2).astype(np.float32)
    else:
        raise TrainingError(f"unknown model family {family!r}; choose from {FAMILIES} or auto")
    return export.Classifier(layout, labels, mu, inv, weights, biases, rocket)


def predict_numpy(model: Any, x: F32) -> I64:
    """Labels the fp32 graphs give, computed with numpy (the twin the exports are checked on)."""
    from edge_agent.inference import export

    h = (export.model_features(x, model) - model.feature_mean) * model.feature_inv_std
    layers = model.hidden_layers()
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return np.asarray(h.argmax(axis=1), dtype=np.int64)


def cross_validate(
    family: str,
    data: Windows,
    y: I64,
    labels: list[str],
    folds: list[tuple[I64, I64]],
    seed: int,
    progress: Progress | None = None,
) -> I64:
    """Out-of-fold predictions: each fold fitted without its held-out groups."""
    predicted = np.full(len(y), -1, dtype=np.int64)
    for i, (train, held) in enumerate(folds):
        if progress:
            progress(f"cross-validating {family}", i, len(folds))
        model = fit_family(family, data.x[train], y[train], labels, data.channels, seed)
        predicted[held] = predict_numpy(model, data.x[held])
    if progress:
        progress(f"cross-validating {family}", len(folds), len(folds))
    return predicted


def data_warnings(data: Windows, labels: list[str], y: I64) -> list[str]:
    """Imbalance, too little data, and runs too short for a window."""
    out: list[str] = []
    counts = np.bincount(y, minlength=len(labels))
    if counts.min() and counts.max() / counts.min() > IMBALANCE_RATIO:
        out.append(
            f"class imbalance: {labels[int(counts.argmax())]} has {counts.max()} windows, "
            f"{labels[int(counts.argmin())]} {counts.min()} (over {IMBALANCE_RATIO:g}x); "
            "accuracy flatters the large classes, read macro-F1 and the per-class table"
        )
    thin = [f"{labels[i]} ({c})" for i, c in enumerate(counts) if c < FEW_WINDOWS_PER_CLASS]
    if thin:
        out.append(
            f"little data: under {FEW_WINDOWS_PER_CLASS} windows for {', '.join(thin)}; "
            "the figures are uncertain by several points"
        )
    n_groups = len(set(data.groups))
    if data.group_kind != "case" and n_groups < FEW_GROUPS:
        out.append(
            f"only {n_groups} {data.group_kind}s: a model judged on so few unseen "
            f"{data.group_kind}s may do worse on the next one"
        )
    if data.skipped_short:
        out.append(
            f"{data.skipped_short} labelled runs were shorter than one window and gave no "
            "window; shorten --window-s to use them"
        )
    return out


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


def train_bundle(
    paths: Sequence[Path],
    out: Path,
    version: str,
    *,
    window_s: float = 2.0,
    hop_s: float = 1.0,
    folds: int = 5,
    family: str = "auto",
    runtime: str = "onnx",
    seed: int = 0,
    rate_hz: float | None = None,
    test_paths: Sequence[Path] = (),
    min_heldout: int = MIN_HELDOUT,
    report_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train on the data and write `out/<version>/` as a loadable bundle.

    Raises:
        TrainingError: the data is unusable (unreadable, one label, one group, a held-out
            fold too small) or the output directory already holds a bundle version.
    """
    started = time.perf_counter()
    name = out.name
    if not is_safe_name(name) or not is_safe_name(version):
        raise TrainingError(
            f"model name {name!r} and version {version!r} may hold letters, digits, '.', '_', "
            "'-' only (the name is the last part of --out)"
        )
    if family not in (*FAMILIES, "auto"):
        raise TrainingError(f"unknown model family {family!r}; choose from {FAMILIES} or auto")
    if runtime not in ("onnx", "litert"):
        raise TrainingError(f"runtime must be onnx or litert, not {runtime!r}")
    target = out / version
    if target.exists() and any(target.iterdir()):
        raise TrainingError(f"{target} exists and is not empty; pick a new --version")
    try:
        import onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as err:
        raise TrainingError(
            f"training needs the `train` extra ({err.name} missing): "
            "pip install 'edge-agent[train]'"
        ) from err
    try:
        data = load_any(paths, window_s=window_s, hop_s=hop_s, rate_hz=rate_hz)
        test = (
            load_any(
                test_paths,
                window=data.window,
                hop=data.hop,
                rate_hz=rate_hz,
                channels=data.channels,
            )
            if test_paths
            else None
        )
    except DataError as err:
        raise TrainingError(str(err)) from err
    labels = sorted(set(data.labels))
    if len(labels) < 2:
        raise TrainingError(
            f"need at least 2 labels with a whole window ({data.window} samples) each; "
            f"found {labels or 'none'} in {len(data)} windows"
            + (f" ({data.skipped_short} labelled runs were shorter)" if data.skipped_short else "")
        )
    y = np.array([labels.index(v) for v in data.labels], dtype=np.int64)
    if test is not None:
        unknown = sorted(set(test.labels) - set(labels))
        if unknown:
            raise TrainingError(f"the test data has labels the training data lacks: {unknown}")
        if len(test) < min_heldout:
            raise TrainingError(
                f"the test data gives {len(test)} windows: fewer than {min_heldout}, too few "
                "to mean anything"
            )
    candidates = list(FAMILIES) if family == "auto" else [family]
    cv_f1: dict[str, float] = {}
    cv_pred: dict[str, I64] = {}
    folds_used: list[tuple[I64, I64]] = []
    if test is None or len(candidates) > 1:
        folds_used = group_folds(data.groups, folds, seed, min_heldout=min_heldout)
        for fam in candidates:
            cv_pred[fam] = cross_validate(fam, data, y, labels, folds_used, seed, progress)
            cv_f1[fam] = rep.figures(y, cv_pred[fam], labels).macro_f1
    # Ties go to the kernel model: it is the family with the better record on public
    # benchmarks (UEA archive), and cross-validation on few groups often cannot tell them apart.
    chosen = max(candidates, key=lambda f: (cv_f1.get(f, 0.0), f == "rocket"))
    if progress:
        progress(f"fitting {chosen} on all data", 0, 1)
    model = fit_family(chosen, data.x, y, labels, data.channels, seed)
    if progress:
        progress(f"fitting {chosen} on all data", 1, 1)
    n_groups = len(set(data.groups))
    split_text = (
        "leave-one-group-out"
        if folds <= 0 or folds >= n_groups
        else f"{len(folds_used)}-fold by group"
    )
    if test is not None:
        test_y = np.array([labels.index(v) for v in test.labels], dtype=np.int64)
        heldout_x = test.x
        figures = rep.figures(test_y, predict_numpy(model, test.x), labels)
        method = (
            f"trained on {', '.join(data.sources)} ({len(data)} windows), tested on "
            f"{', '.join(test.sources)} ({len(test)} windows)"
            + (
                f"; family chosen by {split_text} cross-validation on the training data"
                if cv_f1
                else ""
            )
        )
        heldout = len(test)
    else:
        figures = rep.figures(y, cv_pred[chosen], labels)
        heldout_x = data.x
        method = (
            f"{split_text} cross-validation over {n_groups} {data.group_kind}s "
            f"({data.group_kind} = group; every window scored by a model that never saw its "
            f"{data.group_kind})"
        )
        heldout = len(data)

    target.mkdir(parents=True, exist_ok=True)
    files, int8_agree, int8_acc = _export(
        model, name, version, runtime, target, data.x, heldout_x, test
    )
    warnings = data_warnings(data, labels, y)
    if int8_agree < MIN_INT8_AGREEMENT:
        warnings.append(
            f"int8 agrees with fp32 on only {100 * int8_agree:.1f} % of windows; the bundle "
            "runs fp32"
        )
    result = TrainReport(
        bundle=target,
        labels=labels,
        family=chosen,
        figures=figures,
        method=method,
        train_windows=len(data),
        heldout_windows=heldout,
        groups=n_groups,
        group_kind=data.group_kind,
        cv_macro_f1=cv_f1,
        int8_agreement=int8_agree,
        int8_accuracy=int8_acc,
        warnings=warnings,
    )
    options = _options(
        paths, test_paths, window_s, hop_s, folds, family, runtime, seed, rate_hz, min_heldout
    )
    unit_map = {c: u for c, u in zip(data.channels, data.units, strict=True) if u}
    manifest: dict[str, Any] = {
        "format": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": runtime,
        "model_file": files["fp32"],
        "input": {
            "name": "windows",
            "dtype": "float32",
            "rate_hz": round(data.rate_hz, 6),
            "window": data.window,
            "hop": data.hop,
            "channels": list(data.channels),
            "units": unit_map,
        },
        "output": {"name": "probabilities", "labels": labels},
        "preprocessing": {"features": "in-graph", "description": model.describe()},
        "provenance": {
            "data": data.sources,
            "test_data": test.sources if test is not None else [],
            "tool": "edge-agent models train",
            "command": f"edge-agent models train {options}",
            "seed": seed,
            "split": method,
        },
        "metrics": {
            "heldout_accuracy": round(figures.accuracy, 6),
            "heldout_macro_f1": round(figures.macro_f1, 6),
            "heldout_windows": heldout,
            "heldout_accuracy_int8": None if int8_acc is None else round(int8_acc, 6),
            "agreement_int8_with_fp32": round(int8_agree, 6),
            "family": chosen,
            "cv_macro_f1": {k: round(v, 6) for k, v in cv_f1.items()},
            "precision": "fp32",
            "alternatives": files,
        },
    }
    result.seconds = time.perf_counter() - started
    (target / "MODEL_CARD.md").write_text(
        _card(name, version, result, data, model.describe(), options), encoding="utf-8"
    )
    rep.confusion_png(figures, target / "confusion.png")
    write_manifest(target, manifest)
    load_bundle(target)
    if report_dir is not None:
        write_report(result, report_dir)
    return result


def _export(
    model: Any,
    name: str,
    version: str,
    runtime: str,
    target: Path,
    train_x: F32,
    heldout_x: F32,
    test: Windows | None,
) -> tuple[dict[str, str], float, float | None]:
    """Write fp32 and int8 files; returns the files, int8 agreement and int8 accuracy."""

    from edge_agent.inference import export
    from edge_agent.inference.runtime import open_runtime

    doc = f"{name} {version}: windows [N,{train_x.shape[1]},{train_x.shape[2]}] -> probabilities"
    if runtime == "onnx":
        files = {"fp32": "model_fp32.onnx", "int8": "model_int8.onnx"}
        export.write_onnx_pair(
            model, name, doc, target / files["fp32"], target / files["int8"], train_x
        )
    else:
        files = {"fp32": "model_fp32.tflite", "int8": "model_int8.tflite"}
        export.write_tflite_pair(
            model, doc, target / files["fp32"], target / files["int8"], train_x
        )
    provisional: dict[str, Any] = {
        "format": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": runtime,
        "model_file": files["fp32"],
        "input": {
            "name": "windows",
            "dtype": "float32",
            "rate_hz": 1.0,
            "window": int(train_x.shape[1]),
            "hop": int(train_x.shape[1]),
            "channels": list(model.layout.channels),
        },
        "output": {"name": "probabilities", "labels": model.labels},
    }
    (target / "MODEL_CARD.md").write_text("provisional\n", encoding="utf-8")
    bundle = write_manifest(target, provisional)
    predicted: dict[str, I64] = {}
    for precision, file in files.items():
        variant = bundle.manifest.model_copy(update={"model_file": file})
        rt = open_runtime(Bundle(bundle.path, variant))
        try:
            predicted[precision] = np.concatenate(
                [
                    rt.run(np.ascontiguousarray(heldout_x[i : i + 256])).argmax(axis=1)
                    for i in range(0, len(heldout_x), 256)
                ]
            )
        finally:
            rt.close()
    reference = predict_numpy(model, heldout_x)
    fp32_agree = float(np.mean(predicted["fp32"] == reference))
    if fp32_agree < 0.99:
        raise TrainingError(f"the exported fp32 graph agrees with training on {fp32_agree:.3f}")
    agree = float(np.mean(predicted["int8"] == predicted["fp32"]))
    # int8 accuracy is measured on test data only. Without it, the final model has seen every
    # window, so only its agreement with fp32 is reported (the held-out figures are fp32's).
    int8_acc: float | None = None
    if test is not None:
        truth = np.array([model.labels.index(v) for v in test.labels], dtype=np.int64)
        int8_acc = float(np.mean(predicted["int8"] == truth))
    return files, agree, int8_acc


def _options(
    paths: Sequence[Path],
    test_paths: Sequence[Path],
    window_s: float,
    hop_s: float,
    folds: int,
    family: str,
    runtime: str,
    seed: int,
    rate_hz: float | None,
    min_heldout: int,
) -> str:
    parts = [*(str(p) for p in paths)]
    parts += [f"--test {p}" for p in test_paths]
    parts += [
        f"--window-s {window_s:g}",
        f"--hop-s {hop_s:g}",
        f"--folds {folds}",
        f"--family {family}",
        f"--runtime {runtime}",
        f"--seed {seed}",
        f"--min-heldout {min_heldout}",
    ]
    if rate_hz is not None:
        parts.append(f"--rate-hz {rate_hz:g}")
    return " ".join(parts) + " --out <dir> --version <version>"


# --------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------


def report_text(r: TrainReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"{r.bundle}: {r.family} model, {len(r.labels)} labels",
        f"method: {r.method}",
        f"held-out: accuracy {100 * r.figures.accuracy:.1f} %, macro-F1 "
        f"{r.figures.macro_f1:.3f} on {r.heldout_windows} windows",
    ]
    if r.cv_macro_f1:
        lines.append(
            "families (cross-validated macro-F1): "
            + ", ".join(f"{k} {v:.3f}" for k, v in r.cv_macro_f1.items())
        )
    if r.int8_agreement is not None:
        lines.append(f"int8 agrees with fp32 on {100 * r.int8_agreement:.1f} % of windows")
    lines += ["", rep.class_table(r.figures), "", rep.confusion_markdown(r.figures)]
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def report_json(r: TrainReport) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    f = r.figures
    return {
        "bundle": str(r.bundle),
        "labels": r.labels,
        "family": r.family,
        "method": r.method,
        "train_windows": r.train_windows,
        "heldout_windows": r.heldout_windows,
        "groups": r.groups,
        "group_kind": r.group_kind,
        "heldout_accuracy": round(f.accuracy, 4),
        "heldout_macro_f1": round(f.macro_f1, 4),
        "heldout_accuracy_int8": None if r.int8_accuracy is None else round(r.int8_accuracy, 4),
        "int8_agreement": None if r.int8_agreement is None else round(r.int8_agreement, 4),
        "per_class": {
            c.label: {
                "precision": round(c.precision, 4),
                "recall": round(c.recall, 4),
                "f1": round(c.f1, 4),
                "support": c.support,
            }
            for c in f.per_class
        },
        "confusion": f.confusion.tolist(),
        "cv_macro_f1": {k: round(v, 4) for k, v in r.cv_macro_f1.items()},
        "warnings": r.warnings,
        "seconds": round(r.seconds, 1),
    }


def summary_json(r: TrainReport) -> str:
    """The report as one JSON line, for scripts."""
    return json.dumps(report_json(r))


def write_report(r: TrainReport, directory: Path) -> None:
    """report.md, report.json and confusion.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.md").write_text(
        "# Report\n\n```\n" + report_text(r) + "\n```\n\n![confusion](confusion.png)\n",
        encoding="utf-8",
    )
    (directory / "report.json").write_text(
        json.dumps(report_json(r), indent=2) + "\n", encoding="utf-8"
    )
    rep.confusion_png(r.figures, directory / "confusion.png")


def _card(name: str, version: str, r: TrainReport, data: Windows, features: str, cmd: str) -> str:
    chan = ", ".join(
        f"`{c}`" + (f" ({u})" if u else "") for c, u in zip(data.channels, data.units, strict=True)
    )
    warn = "\n".join(f"- {w}" for w in r.warnings) or "- none"
    fams = ", ".join(f"{k} {v:.3f}" for k, v in r.cv_macro_f1.items()) or "one family given"
    agree = f"{100 * (r.int8_agreement or 0.0):.1f} %"
    return f"""# Model card: {name} {version}

## What it does
Classifies windows of {data.window} samples ({data.window / data.rate_hz:g} s at
{data.rate_hz:g} Hz, a new window every {data.hop} samples) of channels {chan} into:
{", ".join(f"`{v}`" for v in r.labels)}. Model family `{r.family}`: {features}; then
standardisation and {"a ridge classifier" if r.family == "rocket" else "a small ReLU MLP"}.
`model_fp32.*` runs; `model_int8.*` is its int8 twin (agreement with fp32: {agree}).

## How it was judged
{r.method}. Families tried (cross-validated macro-F1): {fams}.
Held-out figures on {r.heldout_windows} windows: **accuracy {100 * r.figures.accuracy:.2f} %,
macro-F1 {r.figures.macro_f1:.3f}**.

{rep.class_table(r.figures)}

{rep.confusion_markdown(r.figures)}

![confusion matrix](confusion.png)

## Warnings
{warn}

## Data
{", ".join(f"`{s}`" for s in data.sources)}: {r.train_windows} windows from {r.groups}
{data.group_kind}s.

## Limitations
- Only as good as the data: other devices, mountings or people than those recorded may do
  worse than the figures above.
- Anything that is none of the labels is forced into one of them.

## How to reproduce
`edge-agent models train {cmd}` (took {r.seconds:.0f} s).
"""


# --------------------------------------------------------------------------------------------
# Evaluation of an existing bundle on new labelled data.
# --------------------------------------------------------------------------------------------


def evaluate_bundle(
    bundle_dir: Path, paths: Sequence[Path], *, rate_hz: float | None = None
) -> TrainReport:
    """Run a bundle on new labelled data and report as training does.

    Raises:
        TrainingError: the data does not fit the bundle's input contract, or has labels the
            bundle does not know.
    """
    from edge_agent.errors import BundleError
    from edge_agent.inference.runtime import open_runtime

    started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as err:
        raise TrainingError(str(err)) from err
    spec = bundle.manifest.input
    labels = list(bundle.manifest.output.labels)
    try:
        data = load_any(
            paths, window=spec.window, hop=spec.hop, rate_hz=rate_hz, channels=spec.channels
        )
    except DataError as err:
        raise TrainingError(str(err)) from err
    if data.group_kind != "case" and abs(data.rate_hz - spec.rate_hz) > 0.01 * spec.rate_hz:
        raise TrainingError(
            f"the data is sampled at {data.rate_hz:g} Hz, the model at {spec.rate_hz:g} Hz"
        )
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        raise TrainingError(f"labels {unknown} are not among the model's {labels}")
    if not len(data):
        raise TrainingError(f"no whole window of {spec.window} samples in the data")
    truth = np.array([labels.index(v) for v in data.labels], dtype=np.int64)
    rt = open_runtime(bundle)
    try:
        predicted = np.concatenate(
            [
                rt.run(np.ascontiguousarray(data.x[i : i + 256])).argmax(axis=1)
                for i in range(0, len(data), 256)
            ]
        )
    finally:
        rt.close()
    figures = rep.figures(truth, predicted, labels)
    return TrainReport(
        bundle=bundle.path,
        labels=labels,
        family=str(bundle.manifest.model_dump().get("metrics", {}).get("family", "?")),
        figures=figures,
        method=f"{bundle.ref} ({bundle.manifest.model_file}) on {', '.join(data.sources)}",
        train_windows=0,
        heldout_windows=len(data),
        groups=len(set(data.groups)),
        group_kind=data.group_kind,
        warnings=data_warnings(data, labels, truth),
        seconds=time.perf_counter() - started,
    )
