"""The runtime interface and its registry; each backend is one module, imported on demand."""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.bundle import Bundle
from edge_agent.metrics import Histogram

FloatArray = npt.NDArray[np.float32]

Segments = Sequence[tuple[str, int]]
"""Where the windows of one batch came from: (stream name, window count), in batch order."""

# name -> "module:Class". A backend is imported only when a bundle asks for it, so a
# gateway without LiteRT installed never pays for (or fails on) importing it.
_BACKENDS: dict[str, str] = {
    "onnx": "edge_agent.inference.onnx:OnnxRuntimeBackend",
    "litert": "edge_agent.inference.litert:LiteRtBackend",
    "baseline": "edge_agent.inference.baseline:BaselineRuntime",
}

# What to install when a backend's import fails.
_INSTALL_HINTS: dict[str, str] = {
    "litert": "install the `litert` extra (pip install 'edge-agent[litert]'), or "
    "tflite-runtime on a gateway pinned to numpy<2",
}


@dataclass
class RuntimeStats:
    """What a runtime has done since load; read by heartbeats and the benchmark."""

    calls: int = 0
    windows: int = 0
    busy_ns: int = 0
    largest_batch: int = 0
    mixed_calls: int = 0
    """Calls whose batch held windows of more than one stream."""
    seconds: Histogram = field(default_factory=Histogram)
    """Duration of each call (`edge_agent_inference_seconds`)."""


class Runtime(ABC):
    """Runs one model file on batches of windows. Not thread-safe: one caller at a time."""

    name: ClassVar[str]

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = threads
        self.stats = RuntimeStats()

    @abstractmethod
    def run(self, windows: FloatArray) -> FloatArray:
        """Run the model on `windows` shaped [N, window, channels]; returns [N, outputs]."""

    def run_streams(self, windows: FloatArray, segments: Segments) -> FloatArray:
        """Run a batch whose windows came from several streams (see `Segments`).

        Stateless models ignore where windows came from; a model that keeps state per
        stream (a moving baseline) overrides this. Within a stream, windows are in time order.
        """
        del segments
        return self.run(windows)

    def infer(self, windows: FloatArray, segments: Segments) -> FloatArray:
        """`run_streams`, timed and counted in `stats`: what the daemon calls."""
        start = time.perf_counter_ns()
        out = self.run_streams(windows, segments)
        stats = self.stats
        took = time.perf_counter_ns() - start
        stats.busy_ns += took
        stats.seconds.observe(took * 1e-9)
        stats.calls += 1
        n = len(windows)
        stats.windows += n
        stats.largest_batch = max(stats.largest_batch, n)
        if len(segments) > 1 and any(s[0] != segments[0][0] for s in segments):
            stats.mixed_calls += 1
        return out

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release the session; safe to call twice."""

    def warm_up(self) -> float:
        """Run once on zeros so the first real window does not pay for lazy init.

        Returns:
            The warm-up run's duration in seconds.
        """
        spec = self.bundle.manifest.input
        zeros = np.zeros((1, spec.window, len(spec.channels)), dtype=np.float32)
        start = time.perf_counter()
        out = self.run(zeros)
        elapsed = time.perf_counter() - start
        labels = self.bundle.manifest.output.labels
        if out.ndim != 2 or len(out) != 1:
            raise RuntimeBackendError(
                f"{self.bundle.ref}: model returned shape {out.shape} for one window, "
                "expected [1, outputs]"
            )
        if labels and out.shape[-1] != len(labels):
            raise RuntimeBackendError(
                f"{self.bundle.ref}: model outputs {out.shape[-1]} values "
                f"but the manifest lists {len(labels)} labels"
            )
        return elapsed


def available_backends() -> list[str]:
    """Names a manifest's `runtime` may use."""
    return sorted(_BACKENDS)


def open_runtime(bundle: Bundle, *, threads: int = 1) -> Runtime:
    """Instantiate the backend a bundle's manifest names and warm it up.

    Raises:
        RuntimeBackendError: unknown backend, backend not installed, or the model
            failed to load or to run on a zero window.
    """
    kind = bundle.manifest.runtime
    target = _BACKENDS.get(kind)
    if target is None:
        raise RuntimeBackendError(
            f"{bundle.ref}: unknown runtime {kind!r}; available: {', '.join(available_backends())}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        hint = _INSTALL_HINTS.get(kind)
        raise RuntimeBackendError(
            f"{bundle.ref}: runtime {kind!r} is not installed ({err.name} missing)"
            + (f"; {hint}" if hint else "")
        ) from err
    backend: type[Runtime] = getattr(module, class_name)
    runtime = backend(bundle, threads=threads)
    try:
        runtime.warm_up()
    except RuntimeBackendError:
        runtime.close()
        raise
    except Exception as err:
        runtime.close()
        raise RuntimeBackendError(f"{bundle.ref}: warm-up run failed: {err}") from err
    return runtime
