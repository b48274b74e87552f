"""Staging: a new version is loaded in its own session, beside the one serving, and tested.

Checks, in order; the first failure refuses the update with its `check` name:

1. `input_contract`: the windows the streams cut for the running version (window, hop,
   rate, channels, units) are what the new version expects, so it can take over
   between two windows without a stream noticing.
2. `load` / `input_shape`: the runtime loads the model and warms it up; when that fails
   because the graph's declared input does not match the manifest, the reason says so.
3. `input_shape` / `output_shape` / `non_finite`: a batch of probe windows shaped exactly as
   the streams cut them runs and yields one finite row per window, as wide as the labels.
4. `golden`: the manifest's golden vectors (inputs and the outputs the publisher got) are
   reproduced within the manifest's tolerance.
5. `latency`: the median of single-window runs fits `ota.latency_budget_ms`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import BundleError, RuntimeBackendError
from edge_agent.inference.bundle import Bundle, InputSpec, Manifest
from edge_agent.inference.runtime import FloatArray, Runtime, open_runtime
from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.pipeline.stream import unit_factor

GOLDEN_FILE = "golden.json"
GOLDEN_WINDOWS = 8
PROBE_WINDOWS = 3
LATENCY_RUNS = 15


class GoldenRef(BaseModel):
    """The manifest's `golden` entry: where the vectors are and how close outputs must be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="Bundle file holding {inputs, outputs} as JSON arrays.")
    atol: float = Field(ge=0, description="Absolute tolerance per output value.")
    rtol: float = Field(ge=0, description="Relative tolerance per output value.")


@dataclass(frozen=True)
class StageReport:
    """What staging measured, for the `model.staged` event and `models install`."""

    latency_ms_p50: float
    latency_ms_max: float
    latency_runs: int
    golden_windows: int
    golden_max_error: float | None
    load_ms: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _reject(check: str, reason: str) -> UpdateRejectedError:
    return UpdateRejectedError("stage", check, reason)


def probe_windows(spec: InputSpec, n: int, seed: int) -> FloatArray:
    """Deterministic windows shaped as the streams cut them (the first is all zeros)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, spec.window, len(spec.channels))).astype(np.float32)
    x[0] = 0.0
    return x


def write_golden(bundle: Bundle, *, atol: float, rtol: float) -> dict[str, Any]:
    """Run a bundle on deterministic windows and store inputs and outputs as `golden.json`.

    Returns:
        The manifest's `golden` entry.

    Raises:
        BundleError: the model outputs NaN or inf (such a model is not worth publishing).
        RuntimeBackendError: the model does not load or run.
    """
    inputs = probe_windows(bundle.manifest.input, GOLDEN_WINDOWS, seed=0)
    runtime = open_runtime(bundle)
    try:
        outputs = runtime.run(inputs)
    finally:
        runtime.close()
    if not np.all(np.isfinite(outputs)):
        raise BundleError(str(bundle.path), "the model outputs NaN or inf on the golden inputs")
    body = {"format": 1, "inputs": inputs.tolist(), "outputs": outputs.tolist()}
    (bundle.path / GOLDEN_FILE).write_text(json.dumps(body) + "\n", encoding="utf-8")
    return {"file": GOLDEN_FILE, "atol": atol, "rtol": rtol}


def check_contract(new: Manifest, running: Manifest) -> None:
    """Refuse a version whose input contract differs from the running version's.

    Raises:
        UpdateRejectedError: `input_contract`, listing every difference.
    """
    a, b = running.input, new.input
    diffs = [
        f"{what} {x!r} -> {y!r}"
        for what, x, y in (
            ("task", running.task, new.task),
            ("window", a.window, b.window),
            ("hop", a.hop, b.hop),
            ("rate_hz", a.rate_hz, b.rate_hz),
            ("channels", a.channels, b.channels),
            ("dtype", a.dtype, b.dtype),
        )
        if x != y
    ]
    if not diffs:
        for channel in a.channels:
            old, new_unit = a.units.get(channel, ""), b.units.get(channel, "")
            if unit_factor(old, new_unit) != 1.0:
                diffs.append(f"unit of {channel} {old!r} -> {new_unit!r}")
    if diffs:
        raise _reject(
            "input_contract",
            f"{new.name}@{new.version} expects other windows than the streams cut for "
            f"{running.name}@{running.version}: {'; '.join(diffs)}. Publish a compatible "
            "version, or point the sensors at it by config (models = ['name@version'])",
        )


def _declared_input_mismatch(bundle: Bundle) -> str | None:
    """For ONNX models: how the graph's declared input differs from the manifest's, if it does."""
    if bundle.manifest.runtime != "onnx":
        return None
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    except Exception:  # the load error itself is reported by the caller
        return None
    spec = bundle.manifest.input
    want: list[int | None] = [None, spec.window, len(spec.channels)]
    for graph_input in session.get_inputs():
        if graph_input.name != spec.name:
            continue
        shape = list(graph_input.shape)
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(fixed) != 3 or any(
            w is not None and f is not None and w != f for w, f in zip(want, fixed, strict=True)
        ):
            shown = ["N" if d is None else str(d) for d in fixed]
            return (
                f"the graph's input {spec.name!r} is [{', '.join(shown)}], but the streams cut "
                f"windows of [N, {spec.window}, {len(spec.channels)}] (window {spec.window} x "
                f"channels {', '.join(spec.channels)})"
            )
    return None


def _probe(runtime: Runtime, manifest: Manifest) -> None:
    spec = manifest.input
    x = probe_windows(spec, PROBE_WINDOWS, seed=1)
    try:
        out = np.asarray(runtime.run(x))
    except Exception as err:
        raise _reject(
            "input_shape",
            f"the model fails on windows shaped {list(x.shape)} as the streams cut them: {err}",
        ) from err
    labels = manifest.output.labels
    if out.ndim != 2 or out.shape[0] != len(x) or (labels and out.shape[1] != len(labels)):
        width = f"{len(labels)} (one per label)" if labels else "its output width"
        raise _reject(
            "output_shape",
            f"the model returned {list(out.shape)} for {len(x)} windows; expected "
            f"[{len(x)}, {width}]",
        )
    bad = int(np.count_nonzero(~np.all(np.isfinite(out), axis=1)))
    if bad:
        raise _reject(
            "non_finite", f"the model outputs NaN/inf for {bad} of {len(x)} probe windows"
        )


def _golden(
    runtime: Runtime, bundle: Bundle, require: bool
) -> tuple[FloatArray | None, float | None]:
    raw = (bundle.manifest.model_extra or {}).get("golden")
    if raw is None:
        if require:
            raise _reject(
                "golden",
                "the bundle has no golden vectors; pack it with `edge-agent models pack`, "
                "which adds them (or set ota.require_golden = false)",
            )
        return None, None
    try:
        ref = GoldenRef.model_validate(raw)
        if ref.file not in bundle.manifest.files:
            raise ValueError(f"{ref.file} is not a file of the bundle")
        body = json.loads((bundle.path / ref.file).read_text(encoding="utf-8"))
        inputs = np.asarray(body["inputs"], dtype=np.float32)
        expected = np.asarray(body["outputs"], dtype=np.float32)
    except (ValidationError, ValueError, KeyError, TypeError, OSError) as err:
        raise _reject("golden", f"the golden vectors are unreadable: {err}") from err
    spec = bundle.manifest.input
    if inputs.ndim != 3 or inputs.shape[1:] != (spec.window, len(spec.channels)):
        raise _reject(
            "golden",
            f"golden inputs are {list(inputs.shape)}, not [n, {spec.window}, {len(spec.channels)}]",
        )
    try:
        out = np.asarray(runtime.run(inputs))
    except Exception as err:
        raise _reject("input_shape", f"the model fails on its own golden inputs: {err}") from err
    if not np.all(np.isfinite(out)):
        raise _reject("non_finite", "the model outputs NaN/inf on its golden inputs")
    if out.shape != expected.shape:
        raise _reject(
            "golden", f"outputs are {list(out.shape)}, golden outputs {list(expected.shape)}"
        )
    error = float(np.max(np.abs(out - expected))) if out.size else 0.0
    if not np.allclose(out, expected, atol=ref.atol, rtol=ref.rtol):
        raise _reject(
            "golden",
            f"outputs differ from the publisher's golden vectors by up to {error:.3g} "
            f"(atol {ref.atol:g}, rtol {ref.rtol:g}): the model does not compute on this "
            "gateway what it computed for the publisher",
        )
    return inputs, error


def _latency(
    runtime: Runtime, window: FloatArray, budget_ms: float, timer: Callable[[], float]
) -> list[float]:
    """Single-window run times in ms; stops early once the median cannot fit the budget."""
    times: list[float] = []
    over = 0
    for _ in range(LATENCY_RUNS):
        start = timer()
        runtime.run(window)
        ms = (timer() - start) * 1000.0
        times.append(ms)
        over += ms > budget_ms
        if over > LATENCY_RUNS // 2:
            break
    return times


def stage_bundle(
    bundle: Bundle,
    *,
    running: Manifest | None,
    budget_ms: float,
    require_golden: bool,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[Runtime, StageReport]:
    """Load `bundle` in a new session and run every check (blocking; call off the loop).

    Args:
        bundle: The verified, unpacked bundle.
        running: The manifest of the version the streams run now, if any.
        budget_ms: `ota.latency_budget_ms`.
        require_golden: `ota.require_golden`.
        timer: Seconds for timing the latency runs (a parameter so a test can judge latency
            without depending on how fast its processor is).

    Returns:
        The loaded, warmed-up runtime (the caller owns it) and what was measured.

    Raises:
        UpdateRejectedError: the first check that failed; the runtime is closed.
    """
    if running is not None:
        check_contract(bundle.manifest, running)
    start = time.perf_counter()
    try:
        runtime = open_runtime(bundle)
    except RuntimeBackendError as err:
        mismatch = _declared_input_mismatch(bundle)
        if mismatch is not None:
            raise _reject("input_shape", mismatch) from err
        raise _reject("load", str(err)) from err
    load_ms = (time.perf_counter() - start) * 1000.0
    try:
        _probe(runtime, bundle.manifest)
        golden_inputs, golden_error = _golden(runtime, bundle, require_golden)
        one = (
            golden_inputs[:1]
            if golden_inputs is not None and len(golden_inputs)
            else probe_windows(bundle.manifest.input, 1, seed=2)
        )
        times = _latency(runtime, np.ascontiguousarray(one), budget_ms, timer)
        p50 = statistics.median(times)
        if p50 > budget_ms:
            raise _reject(
                "latency",
                f"one window takes {p50:.1f} ms (median of {len(times)} runs) on this gateway, "
                f"over ota.latency_budget_ms ({budget_ms:g} ms)",
            )
    except BaseException:
        runtime.close()
        raise
    report = StageReport(
        latency_ms_p50=p50,
        latency_ms_max=max(times),
        latency_runs=len(times),
        golden_windows=0 if golden_inputs is None else len(golden_inputs),
        golden_max_error=golden_error,
        load_ms=load_ms,
    )
    return runtime, report
