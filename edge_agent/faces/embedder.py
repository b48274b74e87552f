"""Face embedding models: a bundle whose manifest says ``task = "embedding"`` plus a ``face``
section stating the input contract, run on ONNX Runtime or LiteRT.

The ``face`` section is what lets an ArcFace- or MobileFaceNet-style model drop in without
code: input size and layout, colour order, per-channel normalisation, output dimension and
whether the model already L2-normalises its output. For example (the shipped demo)::

    "face": {"layout": "NCHW", "width": 112, "height": 112, "color_order": "RGB",
             "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0],
             "dim": 512, "l2_normalized": true,
             "threshold": 0.31, "threshold_far": 0.0001, "production": false}

Format-1 manifests also require the IMU-oriented ``input`` block; for an embedding bundle
``input.name`` and ``input.dtype`` are the graph input, ``input.channels`` lists the colour
channels in tensor order (``["r", "g", "b"]``), and ``rate_hz``, ``window`` and ``hop`` are 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import BundleError, RuntimeBackendError
from edge_agent.faces.images import Image, resize_bilinear, to_channels
from edge_agent.inference.bundle import Bundle, find_bundle, shipped_models_dir

F32 = npt.NDArray[np.float32]


class FaceModelSpec(BaseModel):
    """The ``face`` section of an embedding bundle's manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["NCHW", "NHWC"] = Field(description="Input tensor layout.")
    width: int = Field(ge=8, le=1024, description="Input width in pixels.")
    height: int = Field(ge=8, le=1024, description="Input height in pixels.")
    color_order: Literal["RGB", "BGR", "GRAY"] = Field(description="Channel order of the input.")
    mean: list[float] = Field(description="Per channel, subtracted from 0..255 pixel values.")
    std: list[float] = Field(description="Per channel, divides the centred values.")
    dim: int = Field(ge=2, le=4096, description="Length of the embedding.")
    l2_normalized: bool = Field(description="Whether the model's output already has unit norm.")
    threshold: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Suggested cosine threshold, from the bundle's own calibration; "
        "deployments should calibrate their own (`edge-agent faces calibrate`).",
    )
    threshold_far: float | None = Field(
        default=None, gt=0, lt=1, description="False accept rate `threshold` was chosen for."
    )
    production: bool = Field(
        default=False, description="False for demo bundles not fit for real decisions."
    )

    @model_validator(mode="after")
    def _per_channel(self) -> FaceModelSpec:
        channels = 1 if self.color_order == "GRAY" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values for {self.color_order}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        return self

    @property
    def channels(self) -> int:
        """Colour channels of the input tensor."""
        return 1 if self.color_order == "GRAY" else 3

    def input_shape(self, batch: int) -> list[int]:
        """Shape of an input tensor holding ``batch`` images."""
        if self.layout == "NCHW":
            return [batch, self.channels, self.height, self.width]
        return [batch, self.height, self.width, self.channels]


def face_spec(bundle: Bundle) -> FaceModelSpec:
    """Read and check the face contract of a bundle.

    Raises:
        BundleError: The bundle is not an embedding model or its ``face`` section is
            missing or invalid.
    """
    manifest = bundle.manifest
    if manifest.task != "embedding":
        raise BundleError(
            bundle.ref, f"task is {manifest.task!r}; faces.model needs an embedding bundle"
        )
    raw = (manifest.model_extra or {}).get("face")
    if not isinstance(raw, dict):
        raise BundleError(
            bundle.ref,
            "manifest has no `face` section (input size, colours, dim); see docs/face.md",
        )
    try:
        spec = FaceModelSpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"face.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise BundleError(bundle.ref, f"manifest invalid: {problems}") from err
    expected = [c.lower() for c in (["gray"] if spec.color_order == "GRAY" else spec.color_order)]
    if [c.lower() for c in manifest.input.channels] != expected:
        raise BundleError(
            bundle.ref,
            f"input.channels {manifest.input.channels} disagree with face.color_order "
            f"{spec.color_order} (expected {expected})",
        )
    return spec


class FaceEmbedder:
    """Turns face images into unit-length embeddings with one bundle's model.

    Not thread-safe: one caller at a time (the daemon's face worker, or the CLI).

    Args:
        bundle: A verified embedding bundle.
        threads: Intra-op threads of the runtime.

    Raises:
        BundleError: The bundle's face contract is missing or invalid.
        RuntimeBackendError: The runtime is missing, the model does not load, or its
            warm-up output does not have the declared dimension.
    """

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.spec = face_spec(bundle)
        self._mean = np.array(self.spec.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.array(self.spec.std, dtype=np.float32)).astype(np.float32)
        self._run = _open_backend(bundle, self.spec, threads)
        self.warmup_ms = self._warm_up()

    @property
    def ref(self) -> str:
        """``name@version``: what every template and decision is tagged with."""
        return self.bundle.ref

    @property
    def dim(self) -> int:
        """Length of the embeddings."""
        return self.spec.dim

    def _warm_up(self) -> float:
        started = time.perf_counter()
        out = self._run(np.zeros(self.spec.input_shape(1), dtype=np.float32))
        if out.shape != (1, self.spec.dim):
            raise RuntimeBackendError(
                f"{self.ref}: model returned shape {list(out.shape)} for one image, the "
                f"manifest says [1, {self.spec.dim}]"
            )
        return (time.perf_counter() - started) * 1000

    def preprocess(self, images: Sequence[Image]) -> F32:
        """Resize, reorder colours and normalise images into one input tensor."""
        spec = self.spec
        batch = np.empty([len(images), spec.height, spec.width, spec.channels], np.float32)
        for i, image in enumerate(images):
            pixels = to_channels(resize_bilinear(image, spec.width, spec.height), spec.color_order)
            batch[i] = (pixels - self._mean) * self._inv_std
        if spec.layout == "NCHW":
            return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return batch

    def embed(self, images: Sequence[Image]) -> F32:
        """Embeddings of ``images``, ``(n, dim)``, each of unit length.

        Raises:
            RuntimeBackendError: The model failed or returned non-finite values.
        """
        if not images:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        try:
            out = self._run(self.preprocess(images))
        except RuntimeBackendError:
            raise
        except Exception as err:
            raise RuntimeBackendError(f"{self.ref}: embedding failed: {err}") from err
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(out)) or np.any(norms == 0):
            raise RuntimeBackendError(f"{self.ref}: model returned a zero or non-finite embedding")
        return np.ascontiguousarray(out / norms, dtype=np.float32)

    def close(self) -> None:
        """Release the model; safe to call twice."""
        self._run = _closed(self.ref)


def open_embedder(
    ref: str,
    dirs: Sequence[Path] = (),
    *,
    threads: int = 1,
    find: Callable[[str, list[Path]], Bundle] | None = None,
) -> FaceEmbedder:
    """Find ``name`` or ``name@version`` along ``dirs`` then the shipped models, and load it.

    ``find`` replaces the plain search, e.g. with the OTA manager's, which resolves a bare
    name to the version activated over the air.

    Raises:
        BundleError: Not found, not verified, or not a face embedding bundle.
        RuntimeBackendError: As for :class:`FaceEmbedder`.
    """
    bundle = (find or find_bundle)(ref, [*dirs, shipped_models_dir()])
    return FaceEmbedder(bundle, threads=threads)


def _closed(ref: str) -> Any:
    def run(_: F32) -> F32:
        raise RuntimeBackendError(f"{ref}: the embedder is closed")

    return run


def _open_backend(bundle: Bundle, spec: FaceModelSpec, threads: int) -> Any:
    """A callable running the model on an input tensor, for the bundle's runtime."""
    kind = bundle.manifest.runtime
    if kind == "onnx":
        # The engine's ONNX backend (session options tuned for a shared gateway CPU) runs
        # any input shape; only its IMU-window warm-up does not apply, so ours replaces it.
        from edge_agent.inference.onnx import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(bundle, threads=threads)
        return backend.run
    if kind == "litert":
        return _LiteRtRunner(bundle, spec, threads)
    raise RuntimeBackendError(
        f"{bundle.ref}: runtime {kind!r} cannot run face embedding models (onnx, litert)"
    )


class _LiteRtRunner:
    """LiteRT interpreter for image inputs: resized when the batch size changes."""

    def __init__(self, bundle: Bundle, spec: FaceModelSpec, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError as err:
                raise RuntimeBackendError(
                    f"{bundle.ref}: runtime 'litert' is not installed; install the `litert` "
                    "extra (pip install 'edge-agent[litert]')"
                ) from err
        self.ref = bundle.ref
        try:
            interpreter: Any = Interpreter(model_path=str(bundle.model_path), num_threads=threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise RuntimeBackendError(f"{bundle.ref}: LiteRT cannot load the model: {err}") from err
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        manifest = bundle.manifest
        if manifest.input.name not in inputs or manifest.output.name not in outputs:
            raise RuntimeBackendError(
                f"{bundle.ref}: model has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                f"the manifest names {manifest.input.name!r} and {manifest.output.name!r}"
            )
        detail = inputs[manifest.input.name]
        if list(detail["shape"][1:]) != spec.input_shape(1)[1:]:
            raise RuntimeBackendError(
                f"{bundle.ref}: model input is {list(detail['shape'])}, the manifest's face "
                f"section says {spec.input_shape(1)}"
            )
        self._interpreter = interpreter
        self._input = int(detail["index"])
        self._output = int(outputs[manifest.output.name]["index"])
        self._batch = int(detail["shape"][0])
        self._shape = spec.input_shape(1)[1:]

    def __call__(self, tensor: F32) -> F32:
        n = len(tensor)
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input, [n, *self._shape], strict=False)
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(tensor, dtype=np.float32))
        self._interpreter.invoke()
        out: F32 = np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)
        return out
