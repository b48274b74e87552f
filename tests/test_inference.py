"""Runtimes on the shipped bundles: one test class run against every classifier backend.

Real ONNX Runtime sessions and real LiteRT interpreters on the bundles in `models/`. The only
fake is `tflite_runtime` in the fallback test: tflite-runtime does not install under numpy 2,
so the test stands in a module exposing LiteRT's own interpreter under that name (the API is
the same) and hides `ai_edge_litert`, which is exactly the import situation on such a gateway.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import BundleError, RuntimeBackendError
from edge_agent.inference import litert
from edge_agent.inference.bundle import Bundle, find_bundle, load_bundle, shipped_models_dir
from edge_agent.inference.export import sliding_windows
from edge_agent.inference.runtime import Runtime, available_backends, open_runtime

MODELS = shipped_models_dir()
RECORDING = MODELS / "imu-activity" / "recordings" / "heldout.csv"
CLASSIFIERS = ["imu-activity", "imu-activity-litert"]


def _recording_windows() -> tuple[np.ndarray, list[str], list[int]]:
    """Windows of the held-out CSV at window 20 / hop 10, and which lie in one label block."""
    raw = np.genfromtxt(RECORDING, delimiter=",", names=True, dtype=None, encoding="utf-8")
    channels = ["ax", "ay", "az", "gx", "gy", "gz"]
    samples = np.stack([raw[c] for c in channels], axis=1).astype(np.float32)[None]
    labels = [str(v) for v in raw["label"]]
    windows = sliding_windows(samples, 20, 10)
    starts = range(0, len(labels) - 20 + 1, 10)
    uniform = [i for i, s in enumerate(starts) if len(set(labels[s : s + 20])) == 1]
    return windows, [labels[s] for s in starts], uniform


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, list[str], list[int]]:
    return _recording_windows()


@pytest.fixture(params=CLASSIFIERS, scope="module")
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt = open_runtime(find_bundle(request.param, [MODELS]))
    yield rt
    rt.close()
    rt.close()  # twice is fine


class TestClassifierBackends:
    """The same expectations for every runtime a shipped classifier bundle uses."""

    def test_held_out_recording_accuracy(
        self, runtime: Runtime, recording: tuple[np.ndarray, list[str], list[int]]
    ) -> None:
        windows, labels, uniform = recording
        out = runtime.run(windows[uniform])
        assert out.shape == (len(uniform), 4)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)
        names = runtime.bundle.manifest.output.labels
        predicted = [names[i] for i in out.argmax(axis=1)]
        accuracy = np.mean([p == labels[i] for p, i in zip(predicted, uniform, strict=True)])
        # The card's figure for this recording is 96.55 %; int8 may differ by a window or two.
        assert accuracy >= 0.94

    def test_batch_size_does_not_change_results(
        self, runtime: Runtime, recording: tuple[np.ndarray, list[str], list[int]]
    ) -> None:
        windows = recording[0]
        one_by_one = np.concatenate([runtime.run(windows[i : i + 1]) for i in range(7)])
        for n in (3, 4, 5, 7):
            np.testing.assert_allclose(runtime.run(windows[:n]), one_by_one[:n], atol=1e-6)
        big = np.resize(windows, (300, *windows.shape[1:]))  # beyond LiteRT's MAX_BATCH
        out = runtime.run(big)
        assert out.shape == (300, 4)
        np.testing.assert_allclose(out[:7], one_by_one, atol=1e-6)
        assert runtime.run(windows[:0]).shape == (0, 4)

    def test_infer_counts_calls_and_mixed_batches(
        self, runtime: Runtime, recording: tuple[np.ndarray, list[str], list[int]]
    ) -> None:
        windows = recording[0][:5]
        before = runtime.stats.calls, runtime.stats.windows, runtime.stats.mixed_calls
        runtime.infer(windows, [("a", 2), ("b", 3)])
        runtime.infer(windows[:2], [("a", 2)])
        stats = runtime.stats
        assert (stats.calls, stats.windows, stats.mixed_calls) == (
            before[0] + 2,
            before[1] + 7,
            before[2] + 1,
        )
        assert stats.busy_ns > 0


def _variant(name: str, precision: str) -> Runtime:
    """Open one precision of a classifier bundle, whichever its manifest runs."""
    bundle = find_bundle(name, [MODELS])
    alternatives = (bundle.manifest.model_extra or {})["metrics"]["alternatives"]
    manifest = bundle.manifest.model_copy(update={"model_file": alternatives[precision]})
    return open_runtime(Bundle(bundle.path, manifest))


def test_formats_agree(recording: tuple[np.ndarray, list[str], list[int]]) -> None:
    """Both fp32 files are the same network; each int8 file stays close to it."""
    windows = recording[0]
    outs = {}
    for name in CLASSIFIERS:
        for precision in ("fp32", "int8"):
            rt = _variant(name, precision)
            outs[name, precision] = rt.run(windows)
            rt.close()
    reference = outs["imu-activity", "fp32"]
    np.testing.assert_allclose(outs["imu-activity-litert", "fp32"], reference, atol=1e-4)
    for name in CLASSIFIERS:
        # ≥ 99 % on the 360 held-out windows is checked by the training script; this recording
        # has 119 windows, some straddling two activities, so one or two may flip.
        agree = np.mean(outs[name, "int8"].argmax(axis=1) == reference.argmax(axis=1))
        assert agree >= 0.97, name


def test_shipped_bundles_verify_and_describe_both_formats() -> None:
    for name in [*CLASSIFIERS, "imu-anomaly"]:
        bundle = find_bundle(name, [MODELS])  # verifies every digest
        manifest = bundle.manifest
        assert manifest.version == "1.0.0"
        if name in CLASSIFIERS:
            card = (bundle.path / "MODEL_CARD.md").read_text()
            for row in ("ONNX fp32", "ONNX int8", "LiteRT fp32", "LiteRT int8"):
                assert row in card
            extra = manifest.model_extra or {}
            metrics = extra["metrics"]
            assert metrics["agreement_int8_with_fp32"] >= 0.99
            assert metrics["heldout_accuracy_int8"] >= metrics["heldout_accuracy_fp32"] - 0.01
            assert set(metrics["alternatives"]) == {"fp32", "int8"}
            assert manifest.model_file == metrics["alternatives"][metrics["precision"]]
    assert set(available_backends()) >= {"onnx", "litert", "baseline"}


def _copy_bundle(name: str, dest: Path) -> Path:
    src = find_bundle(name, [MODELS]).path
    target = dest / name / "1.0.0"
    shutil.copytree(src, target)
    return target


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    path = _copy_bundle("imu-activity-litert", tmp_path)
    model = path / json.loads((path / "manifest.json").read_text())["model_file"]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(path)


def _rewrite_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_wrong_runtime_for_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _copy_bundle("imu-activity", tmp_path)
    _rewrite_manifest(path, runtime="litert")
    with pytest.raises(RuntimeBackendError, match="LiteRT cannot load the model"):
        open_runtime(load_bundle(path))


def test_unknown_runtime_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _copy_bundle("imu-activity", tmp_path)
    _rewrite_manifest(path, runtime="tensorrt")
    with pytest.raises(RuntimeBackendError, match=r"unknown runtime 'tensorrt'.*litert.*onnx"):
        open_runtime(load_bundle(path))


def test_litert_input_mismatch_is_named(tmp_path: Path) -> None:
    path = _copy_bundle("imu-activity-litert", tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["input"]["window"] = 40
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeBackendError, match=r"manifest says float32 \[N, 40, 6\]"):
        open_runtime(load_bundle(path))


@pytest.fixture
def restore_litert_module() -> Iterator[None]:
    prefixes = ("ai_edge_litert", "tflite_runtime", "edge_agent.inference.litert")
    saved = {k: v for k, v in sys.modules.items() if k.startswith(prefixes)}
    yield
    for key in [k for k in sys.modules if k.startswith(prefixes)]:
        del sys.modules[key]
    sys.modules.update(saved)
    importlib.reload(litert)


def test_tflite_runtime_fallback_when_litert_is_missing(
    restore_litert_module: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A numpy<2 gateway with tflite-runtime instead of ai-edge-litert runs LiteRT bundles."""
    from ai_edge_litert.interpreter import Interpreter

    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    reloaded = importlib.reload(litert)
    assert reloaded.INTERPRETER_SOURCE == "tflite-runtime"
    rt = open_runtime(find_bundle("imu-activity-litert", [MODELS]))
    assert isinstance(rt, reloaded.LiteRtBackend)
    assert rt.run(np.zeros((2, 20, 6), dtype=np.float32)).shape == (2, 4)
    rt.close()


def test_missing_litert_says_what_to_install(
    restore_litert_module: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.delitem(sys.modules, "edge_agent.inference.litert")
    with pytest.raises(RuntimeBackendError, match=r"not installed.*edge-agent\[litert\]"):
        open_runtime(find_bundle("imu-activity-litert", [MODELS]))
