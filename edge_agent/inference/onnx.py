"""ONNX Runtime backend: one intra-op thread, no spinning (a gateway shares its cores)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnxruntime as ort

from edge_agent.errors import RuntimeBackendError
from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import FloatArray, Runtime


class OnnxRuntimeBackend(Runtime):
    """Runs `.onnx` models on the CPU execution provider."""

    name: ClassVar[str] = "onnx"

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        super().__init__(bundle, threads=threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Windows are tiny: the arena and memory patterns only keep megabytes resident.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # Spinning burns a core waiting for work that arrives every few ms on a gateway.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(bundle.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise RuntimeBackendError(
                f"{bundle.ref}: ONNX Runtime cannot load the model: {err}"
            ) from err
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        spec = bundle.manifest
        if spec.input.name not in inputs:
            raise RuntimeBackendError(
                f"{bundle.ref}: graph has no input {spec.input.name!r} (has {sorted(inputs)})"
            )
        if spec.output.name not in outputs:
            raise RuntimeBackendError(
                f"{bundle.ref}: graph has no output {spec.output.name!r} (has {sorted(outputs)})"
            )
        self._input = spec.input.name
        self._outputs = [spec.output.name]

    def run(self, windows: FloatArray) -> FloatArray:
        """Run one batch; the batch dimension is dynamic."""
        if self._session is None:
            raise RuntimeBackendError(f"{self.bundle.ref}: session is closed")
        result = self._session.run(self._outputs, {self._input: windows})
        return np.asarray(result[0], dtype=np.float32)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self._session = None
