"""`models train` splits by group and reports figures that can be checked; `models evaluate`;
the `.ts` reader; a trained bundle runs in the daemon.

Data is generated here (the emulator's synthetic IMU for recordings, numpy for `.ts` cases);
bundles run in real ONNX Runtime and LiteRT; the daemon is a real process with an emulated
sensor on a pty and a real SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, f1_score

from edge_agent.inference.bundle import find_bundle
from edge_agent.inference.datasets import DataError, load_csv, load_ts
from edge_agent.inference.runtime import open_runtime
from edge_agent.inference.training import TrainingError, group_folds, train_bundle
from firmware_bridge.emulator import SyntheticMotion
from tests.broker import wait_for
from tests.daemon_proc import cli, start_daemon, stop_daemon, write_config

RATE_HZ = 25.0
ACTIVITIES = ("lying", "walking", "running")


def _write_recording(path: Path, seconds: float, seed: int, subject: str | None = None) -> Path:
    motion = SyntheticMotion(RATE_HZ, seed=seed, activities=ACTIVITIES, segment_s=20.0)
    samples, labels = motion.read(int(seconds * RATE_HZ))
    head = "timestamp,ax[m/s^2],ay[m/s^2],az[m/s^2],gx[rad/s],gy[rad/s],gz[rad/s],label"
    rows = [head + (",subject" if subject else "")]
    for i, (row, label) in enumerate(zip(samples, labels, strict=True)):
        tail = f",{subject}" if subject else ""
        rows.append(f"{i / RATE_HZ:.3f}," + ",".join(f"{v:.5f}" for v in row) + f",{label}{tail}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sessions")
    for seed in (1, 2, 3):
        _write_recording(folder / f"session-{seed}.csv", 120.0, seed)
    return folder


@pytest.fixture(scope="module")
def trained(sessions: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models") / "waist"
    report_dir = out.parent / "report"
    proc = cli(
        "models", "train", str(sessions), "--out", str(out), "--version", "1.0.0",
        "--folds", "0", "--family", "auto", "--runtime", "litert", "--json",
        "--report", str(report_dir), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.parent, json.loads(proc.stdout)


# -- splits ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=30), min_size=2, max_size=12),
    folds=st.integers(min_value=0, max_value=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_group_folds_never_leak_a_group(sizes: list[int], folds: int, seed: int) -> None:
    groups = [f"g{i}" for i, n in enumerate(sizes) for _ in range(n)]
    try:
        split = group_folds(groups, folds, seed, min_heldout=1)
    except TrainingError:
        pytest.fail("a split with min_heldout=1 and two or more groups must exist")
    held_count = np.zeros(len(groups), dtype=int)
    for train, held in split:
        assert not {groups[i] for i in train} & {groups[i] for i in held}
        assert len(train) + len(held) == len(groups)
        held_count[held] += 1
    # Every window is held out exactly once: each group in exactly one held-out fold.
    assert np.all(held_count == 1)
    expected = len(sizes) if folds == 0 else min(folds, len(sizes))
    assert len(split) == expected


def test_a_held_out_fold_too_small_is_refused_with_the_reason() -> None:
    groups = ["a"] * 50 + ["b"] * 3
    with pytest.raises(TrainingError, match=r"hold out 3 windows \(b\).*too few"):
        group_folds(groups, 0, seed=0, min_heldout=10)
    with pytest.raises(TrainingError, match="one group"):
        group_folds(["a"] * 40, 5, seed=0)


def test_one_recording_alone_cannot_be_judged(sessions: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="one group"):
        train_bundle([sessions / "session-1.csv"], tmp_path / "m" / "x", "1")


# -- readers ---------------------------------------------------------------------------------


def test_ts_reader_on_a_file_written_here(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = rng.normal(size=(4, 3, 7)).round(3)  # [case, dimension, time]
    lines = [
        "# written by the test",
        "@problemName Tiny",
        "@timeStamps false",
        "@univariate false",
        "@classLabel true up down",
        "@data",
    ]
    labels = ["up", "down", "up", "down"]
    for case, label in zip(cases, labels, strict=True):
        lines.append(":".join(",".join(str(v) for v in dim) for dim in case) + f":{label}")
    path = tmp_path / "tiny_TRAIN.ts"
    path.write_text("\n".join(lines) + "\n")
    data = load_ts(path, rate_hz=10.0)
    assert data.x.shape == (4, 7, 3)
    np.testing.assert_allclose(data.x, cases.transpose(0, 2, 1), rtol=0, atol=1e-6)
    assert data.labels == labels
    assert len(set(data.groups)) == 4
    assert (data.window, data.hop, data.rate_hz) == (7, 7, 10.0)

    bad = tmp_path / "bad.ts"
    bad.write_text("@classLabel true a\n@data\n1,2:3,4:b\n")
    with pytest.raises(DataError, match="not declared"):
        load_ts(bad)
    ragged = tmp_path / "ragged.ts"
    ragged.write_text("@classLabel true a\n@data\n1,2:3,4:a\n1,2,3:3,4,5:a\n")
    with pytest.raises(DataError, match="equal lengths"):
        load_ts(ragged)


def test_a_subject_column_makes_the_groups(tmp_path: Path) -> None:
    for i, subject in enumerate(("p1", "p1", "p2")):
        _write_recording(tmp_path / f"case-{i}.csv", 30.0, seed=10 + i, subject=subject)
    data = load_csv([tmp_path], window_s=2.0, hop_s=1.0)
    assert data.group_kind == "subject"
    assert set(data.groups) == {"p1", "p2"}


# -- train -> report -> bundle -> daemon --------------------------------------------------------


def test_the_report_holds_its_figures_and_files(trained: tuple[Path, dict]) -> None:
    root, report = trained
    assert report["labels"] == sorted(ACTIVITIES)
    assert report["group_kind"] == "file"
    assert report["groups"] == 3
    assert "leave-one-group-out" in report["method"]
    assert set(report["cv_macro_f1"]) == {"features", "rocket"}
    assert report["family"] in report["cv_macro_f1"]
    # The figures follow from the confusion matrix the report gives.
    matrix = np.array(report["confusion"])
    assert report["heldout_windows"] == matrix.sum()
    assert report["heldout_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-4)
    assert report["heldout_accuracy"] >= 0.7
    assert report["int8_agreement"] >= 0.95
    for name in ("report.md", "report.json", "confusion.png"):
        assert (root / "report" / name).is_file()
    bundle = find_bundle("waist", [root])
    assert bundle.manifest.runtime == "litert"
    card = (bundle.path / "MODEL_CARD.md").read_text()
    assert "--folds 0 --family auto --runtime litert" in card


def test_evaluate_figures_match_an_independent_computation(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = trained
    fresh = _write_recording(tmp_path / "fresh.csv", 90.0, seed=9)
    proc = cli("models", "evaluate", str(root / "waist" / "1.0.0"), str(fresh), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)

    bundle = find_bundle("waist", [root])
    spec = bundle.manifest.input
    labels = bundle.manifest.output.labels
    raw = np.genfromtxt(fresh, delimiter=",", names=True, dtype=None, encoding="utf-8")
    values = np.stack([raw[n] for n in raw.dtype.names[1:7]], axis=1).astype(np.float32)
    names = [str(v) for v in raw["label"]]
    xs, ys = [], []
    start = 0
    for i in range(1, len(names) + 1):  # windows inside runs of one label, as documented
        if i < len(names) and names[i] == names[start]:
            continue
        for s in range(start, i - spec.window + 1, spec.hop):
            xs.append(values[s : s + spec.window])
            ys.append(labels.index(names[start]))
        start = i
    rt = open_runtime(bundle)
    try:
        predicted = rt.run(np.stack(xs)).argmax(axis=1)
    finally:
        rt.close()
    assert got["heldout_windows"] == len(ys)
    assert np.array_equal(np.array(got["confusion"]), confusion_matrix(ys, predicted))
    assert got["heldout_accuracy"] == pytest.approx(np.mean(predicted == np.array(ys)), abs=1e-4)
    assert got["heldout_macro_f1"] == pytest.approx(
        f1_score(ys, predicted, average="macro"), abs=1e-4
    )


def test_a_trained_bundle_labels_windows_in_the_daemon(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = trained
    recording = _write_recording(tmp_path / "play.csv", 60.0, seed=21)
    db = tmp_path / "agent.db"
    config = write_config(
        tmp_path / "agent.toml",
        db=db,
        sensors=[
            {
                "name": "waist-0",
                "link": "emulated",
                "recording": str(recording),
                "models": ["waist"],
            },
        ],
        sections={"models": {"dirs": [str(root)]}},
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)

    def labelled() -> list[str]:
        if not db.exists():
            return []
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT label FROM results WHERE sensor = 'waist-0' AND model = 'waist'"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
        return [r[0] for r in rows]

    try:
        got = wait_for(lambda: len(labelled()) >= 3 and labelled(), 40, "three results")
        assert set(got) <= set(ACTIVITIES)
        assert proc.poll() is None, log.read_text()
    finally:
        code = stop_daemon(proc, log)
    assert code == 0, log.read_text()


# -- the readers are doors: anything in, a DataError or windows out -----------------------


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=400))
def test_ts_reader_takes_any_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("ts") / "any.ts"
    path.write_text(text, encoding="utf-8")
    try:
        data = load_ts(path)
    except DataError:
        return
    assert data.x.ndim == 3
    assert len(data.labels) == len(data.x) == len(data.groups)
    assert np.isfinite(data.x).all()


_CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "a", "b", "-", "1e400", "nan", " 3 "]),
)


@settings(max_examples=60, deadline=None)
@given(
    header=st.lists(
        st.sampled_from(["timestamp", "ax", "gy[rad/s]", "label", "subject", "x[", "ax"]),
        min_size=1,
        max_size=6,
    ),
    rows=st.lists(st.lists(_CELL, min_size=1, max_size=6), max_size=30),
)
def test_csv_reader_takes_any_table(
    tmp_path_factory: pytest.TempPathFactory, header: list[str], rows: list[list[str]]
) -> None:
    path = tmp_path_factory.mktemp("csv") / "any.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    try:
        data = load_csv([path], window=2, hop=1)
    except DataError:
        return
    assert data.x.shape[1:] == (2, len(data.channels))
    assert len(data.labels) == len(data.x) == len(data.groups)
    assert np.isfinite(data.x).all()
