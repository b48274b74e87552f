"""LiteRT (TFLite) backend: one thread, a dynamic batch dimension, padded to size buckets.

The interpreter comes from `ai-edge-litert` (the successor of tflite-runtime). Gateways pinned
to numpy<2, where `ai-edge-litert` wheels may not fit, can install `tflite-runtime` instead:
its interpreter has the same API and is used when `ai_edge_litert` is missing.
(tflite-runtime 2.14, the last release, does not load under numpy 2.)

Resizing an interpreter's input re-plans its memory and re-prepares delegates, which costs
more than running this size of model, so batches are padded up to the next power of two and
the interpreter is resized only when that bucket changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import FloatArray, Runtime

try:
    from ai_edge_litert.interpreter import Interpreter

    INTERPRETER_SOURCE = "ai-edge-litert"
except ImportError as _missing:
    try:
        from tflite_runtime.interpreter import Interpreter  # numpy<2 gateways
    except (ImportError, AttributeError):
        raise _missing from None
    INTERPRETER_SOURCE = "tflite-runtime"

MAX_BATCH = 256
"""Largest batch run in one invoke; bigger batches are run in slices of this size."""


class LiteRtBackend(Runtime):
    """Runs `.tflite` models with the LiteRT interpreter (XNNPACK on CPU where it applies)."""

    name: ClassVar[str] = "litert"

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        super().__init__(bundle, threads=threads)
        spec = bundle.manifest
        try:
            interpreter: Any = Interpreter(model_path=str(bundle.model_path), num_threads=threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise RuntimeBackendError(f"{bundle.ref}: LiteRT cannot load the model: {err}") from err
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        if spec.input.name not in inputs:
            raise RuntimeBackendError(
                f"{bundle.ref}: model has no input {spec.input.name!r} (has {sorted(inputs)})"
            )
        if spec.output.name not in outputs:
            raise RuntimeBackendError(
                f"{bundle.ref}: model has no output {spec.output.name!r} (has {sorted(outputs)})"
            )
        detail = inputs[spec.input.name]
        expected = [spec.input.window, len(spec.input.channels)]
        if detail["dtype"] is not np.float32 or list(detail["shape"][1:]) != expected:
            raise RuntimeBackendError(
                f"{bundle.ref}: model input is {np.dtype(detail['dtype']).name} "
                f"{list(detail['shape'])}, manifest says float32 [N, {expected[0]}, {expected[1]}]"
            )
        self._interpreter: Any | None = interpreter
        self._input = int(detail["index"])
        self._output = int(outputs[spec.output.name]["index"])
        self._batch = int(detail["shape"][0])
        self._pad: FloatArray = np.zeros((self._batch, *expected), dtype=np.float32)

    def _resize(self, batch: int) -> None:
        interpreter = self._interpreter
        assert interpreter is not None
        shape = [batch, *self._pad.shape[1:]]
        try:
            interpreter.resize_tensor_input(self._input, shape, strict=True)
        except ValueError as err:
            raise RuntimeBackendError(
                f"{self.bundle.ref}: the model's batch dimension is fixed; re-export it with "
                f"a dynamic (-1) batch in its shape signature ({err})"
            ) from err
        interpreter.allocate_tensors()
        self._batch = batch
        self._pad = np.zeros(shape, dtype=np.float32)

    def run(self, windows: FloatArray) -> FloatArray:
        """Run one batch of any size."""
        interpreter = self._interpreter
        if interpreter is None:
            raise RuntimeBackendError(f"{self.bundle.ref}: interpreter is closed")
        n = len(windows)
        if n > MAX_BATCH:
            return np.concatenate(
                [self.run(windows[i : i + MAX_BATCH]) for i in range(0, n, MAX_BATCH)]
            )
        bucket = 1 << max(0, n - 1).bit_length()
        if bucket != self._batch:
            self._resize(bucket)
        if n == bucket:
            batch = np.ascontiguousarray(windows, dtype=np.float32)
        else:
            # Rows past n keep whatever an earlier batch left there; their outputs are dropped.
            self._pad[:n] = windows
            batch = self._pad
        interpreter.set_tensor(self._input, batch)
        interpreter.invoke()
        out: FloatArray = interpreter.get_tensor(self._output)
        return out[:n] if n != bucket else out

    def close(self) -> None:
        """Drop the interpreter (freed with the last reference); safe to call twice."""
        self._interpreter = None
