"""The runtime interface and its registry; each backend is one module, imported on demand."""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.bundle import Bundle

FloatArray = npt.NDArray[np.float32]

# name -> "module:Class". A backend is imported only when a bundle asks for it, so a
# gateway without LiteRT installed never pays for (or fails on) importing it.
_BACKENDS: dict[str, str] = {
    "onnx": "edge_agent.inference.onnx:OnnxRuntimeBackend",
}


class Runtime(ABC):
    """Runs one model file on batches of windows. Not thread-safe: one caller at a time."""

    name: ClassVar[str]

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = threads

    @abstractmethod
    def run(self, windows: FloatArray) -> FloatArray:
        """Run the model on `windows` shaped [N, window, channels]; returns [N, outputs]."""

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
        raise RuntimeBackendError(
            f"{bundle.ref}: runtime {kind!r} is not installed ({err.name} missing)"
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


@dataclass(frozen=True, slots=True)
class Prediction:
    """Per-window decision derived from the raw model output."""

    label: str
    confidence: float
