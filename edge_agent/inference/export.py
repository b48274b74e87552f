"""Model export for training tools: window features + MLP as ONNX (fp32, int8 QDQ) and TFLite.

Only the training side imports this module (it needs the `train` extra: onnx, and LiteRT for
the TFLite schema); the daemon never does. Both formats compute the same features inside the
graph from raw windows in physical units, so a bundle is self-contained: the daemon feeds
windows, the graph does the rest, and training and inference can never disagree on features.

The TFLite model is written directly with the flatbuffer schema that ships inside
`ai-edge-litert` (its generated object API), not through the TensorFlow converter: the graph
is a dozen builtin ops, and pulling TensorFlow (hundreds of MB) into the train extra for that
would buy nothing the interpreter check below does not already prove. Int8 in TFLite follows
the converter's conventions for full-integer fully-connected layers: int8 activations with a
zero point, symmetric per-tensor int8 weights, int32 biases at input scale × weight scale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as fb
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from edge_agent.inference.minirocket import MiniRocket
from edge_agent.inference.minirocket import transform as rocket_transform

F32 = NDArray[np.float32]

OPSET = 17
# IR version 8 is what opset 17 shipped with; ONNX Runtime >= 1.18 loads it (a newer default
# IR version from a newer `onnx` package would lock out older gateway runtimes).
IR_VERSION = 8

INPUT_NAME = "windows"
OUTPUT_NAME = "probabilities"


# --------------------------------------------------------------------------------------------
# Feature layout and its numpy twin.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MagnitudeGroup:
    """Channels [start, stop) forming one vector (e.g. a 3-axis accelerometer).

    Attributes:
        label: Feature name prefix (`acc` gives `acc_mag_mean`, `acc_mag_std`).
        prefix: Node name prefix inside the graphs.
        tensor: Graph name of the sliced vector.
        start: First channel.
        stop: One past the last channel.
        centred: Remove each window's mean per axis first, so a constant offset (gravity, a
            sensor bias) does not move the magnitude.
    """

    label: str
    prefix: str
    tensor: str
    start: int
    stop: int
    centred: bool


@dataclass(frozen=True)
class FeatureLayout:
    """Which features a model computes from a [N, window, channels] input.

    Always: per channel std, range (max - min) and mean |first difference|. Then the mean of
    channels [mean_start, mean_stop), then magnitude mean and std of each group.
    """

    window: int
    channels: tuple[str, ...]
    mean_start: int
    mean_stop: int
    mean_tensor: str
    groups: tuple[MagnitudeGroup, ...]

    def names(self) -> list[str]:
        """Feature column names, in graph order."""
        names = [f"{stat}_{c}" for stat in ("std", "range", "mad") for c in self.channels]
        names += [f"mean_{c}" for c in self.channels[self.mean_start : self.mean_stop]]
        for g in self.groups:
            names += [f"{g.label}_mag_mean", f"{g.label}_mag_std"]
        return names

    def describe(self) -> str:
        """One sentence for manifests and cards."""
        parts = ["per channel: std, range (max-min), mean |first difference|"]
        means = self.channels[self.mean_start : self.mean_stop]
        if means:
            parts.append(f"mean of {', '.join(means)}")
        for g in self.groups:
            axes = ", ".join(self.channels[g.start : g.stop])
            how = " with its window mean removed" if g.centred else ""
            parts.append(f"vector ({axes}){how}: magnitude mean and std")
        return "; ".join(parts)


def imu_layout(window: int, channels: Sequence[str]) -> FeatureLayout:
    """The shipped IMU model's layout: accel (ax..az) then gyro (gx..gz).

    Accelerometer features are invariant to a constant offset (no raw per-axis mean, and the
    magnitude is taken after removing the window mean), so gravity left in by a sensor does
    not move them; the gyro means carry rotation direction.
    """
    return FeatureLayout(
        window=window,
        channels=tuple(channels),
        mean_start=3,
        mean_stop=6,
        mean_tensor="gyro_mean",
        groups=(
            MagnitudeGroup("acc", "acc", "accel_centred", 0, 3, centred=True),
            MagnitudeGroup("gyro", "gyr", "gyro", 3, 6, centred=False),
        ),
    )


def generic_layout(window: int, channels: Sequence[str]) -> FeatureLayout:
    """A layout for any sensor: every channel's mean, plus magnitudes of ax/ay/az, gx/gy/gz.

    Unlike the shipped model it keeps raw means, which is what tells postures apart when the
    recordings include gravity; a 3-axis group is recognised by its conventional names.
    """
    names = tuple(channels)
    groups: list[MagnitudeGroup] = []
    for label, prefix, axes in (
        ("acc", "acc", ("ax", "ay", "az")),
        ("gyro", "gyr", ("gx", "gy", "gz")),
    ):
        for i in range(len(names) - 2):
            if names[i : i + 3] == axes:
                groups.append(
                    MagnitudeGroup(label, prefix, f"{prefix}_vec", i, i + 3, label == "acc")
                )
                break
    return FeatureLayout(window, names, 0, len(names), "mean", tuple(groups))


def _magnitude_stats(vectors: F32) -> tuple[F32, F32]:
    magnitude = np.sqrt(np.sum(np.square(vectors), axis=2))
    mean = magnitude.mean(axis=1, keepdims=True)
    std = np.sqrt(np.mean(np.square(magnitude - mean), axis=1, keepdims=True))
    return mean, std


def features_numpy(windows: F32, layout: FeatureLayout) -> F32:
    """Features of [N, W, C] windows as [N, F], in float32 like the graphs."""
    windows = windows.astype(np.float32, copy=False)
    centred = windows - windows.mean(axis=1, keepdims=True)
    std = np.sqrt(np.mean(np.square(centred), axis=1))
    value_range = windows.max(axis=1) - windows.min(axis=1)
    mean_abs_diff = np.abs(windows[:, 1:, :] - windows[:, :-1, :]).mean(axis=1)
    means = windows.mean(axis=1)[:, layout.mean_start : layout.mean_stop]
    parts = [std, value_range, mean_abs_diff, means]
    for g in layout.groups:
        source = centred if g.centred else windows
        parts += list(_magnitude_stats(source[:, :, g.start : g.stop]))
    return np.concatenate(parts, axis=1).astype(np.float32)


def sliding_windows(series: F32, window: int, hop: int) -> F32:
    """Cut [S, T, C] recordings into [S * n, window, C] windows, recording by recording."""
    starts = range(0, series.shape[1] - window + 1, hop)
    stacked = np.stack([series[:, s : s + window, :] for s in starts], axis=1)
    return stacked.reshape(-1, window, series.shape[2])


@dataclass(frozen=True)
class Classifier:
    """What training produced: feature standardisation and dense layers (weights [in, out]).

    With `rocket`, the MiniRocket features follow the layout's features; one dense layer is
    then a linear classifier.
    """

    layout: FeatureLayout
    labels: list[str]
    feature_mean: F32
    feature_inv_std: F32
    weights: list[F32]
    biases: list[F32]
    rocket: MiniRocket | None = None

    def hidden_layers(self) -> list[tuple[F32, F32]]:
        """(weight, bias) pairs in order."""
        return list(zip(self.weights, self.biases, strict=True))

    @property
    def width(self) -> int:
        """Number of features the dense layers take."""
        return len(self.layout.names()) + (self.rocket.width if self.rocket else 0)

    def describe(self) -> str:
        """The feature stage in one sentence."""
        text = self.layout.describe()
        return f"{text}; {self.rocket.describe()}" if self.rocket else text


def model_features(windows: F32, model: Classifier) -> F32:
    """The features the model's graphs compute from [N, W, C] windows, as [N, width]."""
    hand = features_numpy(windows, model.layout)
    if model.rocket is None:
        return hand
    return np.concatenate([hand, rocket_transform(windows, model.rocket)], axis=1)


# --------------------------------------------------------------------------------------------
# ONNX.
# --------------------------------------------------------------------------------------------


class _OnnxGraph:
    """Collects nodes and constant initializers while a graph is written out."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def slice(self, x: str, start: int, stop: int, axis: int, out: str) -> str:
        starts = self.const(f"{out}_starts", np.array([start], dtype=np.int64))
        ends = self.const(f"{out}_ends", np.array([stop], dtype=np.int64))
        axes = self.const(f"{out}_axes", np.array([axis], dtype=np.int64))
        return self.op("Slice", [x, starts, ends, axes], out)


def _onnx_magnitude(g: _OnnxGraph, vectors: str, prefix: str, window: int) -> tuple[str, str]:
    # ReduceSumSquare keeps `axes` as an attribute up to opset 17.
    sum_sq = g.op("ReduceSumSquare", [vectors], f"{prefix}_sumsq", axes=[2], keepdims=0)
    magnitude = g.op("Sqrt", [sum_sq], f"{prefix}_mag")
    mean = g.op("ReduceMean", [magnitude], f"{prefix}_mag_mean", axes=[1], keepdims=1)
    dev = g.op("Sub", [magnitude, mean], f"{prefix}_mag_dev")
    var = g.op("ReduceSumSquare", [dev], f"{prefix}_mag_ss", axes=[1], keepdims=1)
    var = g.op("Div", [var, g.const(f"{prefix}_w", np.array(window, np.float32))], f"{prefix}_var")
    return mean, g.op("Sqrt", [var], f"{prefix}_mag_std")


def _onnx_features(g: _OnnxGraph, x: str, layout: FeatureLayout) -> str:
    w = layout.window
    mean_k = g.op("ReduceMean", [x], "mean_keep", axes=[1], keepdims=1)
    centred = g.op("Sub", [x, mean_k], "centred")
    centred_sq = g.op("Mul", [centred, centred], "centred_sq")
    var = g.op("ReduceMean", [centred_sq], "var", axes=[1], keepdims=0)
    std = g.op("Sqrt", [var], "std")
    high = g.op("ReduceMax", [x], "max", axes=[1], keepdims=0)
    low = g.op("ReduceMin", [x], "min", axes=[1], keepdims=0)
    value_range = g.op("Sub", [high, low], "range")
    later = g.slice(x, 1, w, 1, "later")
    earlier = g.slice(x, 0, w - 1, 1, "earlier")
    diff = g.op("Abs", [g.op("Sub", [later, earlier], "diff")], "abs_diff")
    mean_abs_diff = g.op("ReduceMean", [diff], "mad", axes=[1], keepdims=0)
    mean = g.op("ReduceMean", [x], "mean", axes=[1], keepdims=0)
    parts = [std, value_range, mean_abs_diff]
    if layout.mean_stop > layout.mean_start:
        if (layout.mean_start, layout.mean_stop) == (0, len(layout.channels)):
            parts.append(mean)
        else:
            parts.append(g.slice(mean, layout.mean_start, layout.mean_stop, 1, layout.mean_tensor))
    pieces: list[tuple[str, str]] = []
    for grp in layout.groups:
        vec = g.slice(centred if grp.centred else x, grp.start, grp.stop, 2, grp.tensor)
        pieces.append((vec, grp.prefix))
    for vec, prefix in pieces:
        parts += list(_onnx_magnitude(g, vec, prefix, w))
    return g.op("Concat", parts, "features", axis=1)


def _onnx_finish(
    g: _OnnxGraph,
    output: str,
    width: int,
    layout: FeatureLayout,
    name: str,
    doc: str,
    labels: list[str],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        name,
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", layout.window, len(layout.channels)]
            )
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-agent scripts/train_imu_model.py",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model, {"labels": json.dumps(labels), "channels": json.dumps(list(layout.channels))}
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_feature_model(layout: FeatureLayout, name: str) -> onnx.ModelProto:
    """A graph with only the feature stage, to check the numpy twin against it."""
    g = _OnnxGraph()
    out = _onnx_features(g, INPUT_NAME, layout)
    return _onnx_finish(g, out, len(layout.names()), layout, name, "feature stage only", [])


def _onnx_rocket(g: _OnnxGraph, x: str, rocket: MiniRocket) -> str:
    # Conv wants [N, C, T]; each dilation is one Conv whose outputs are kernel x bias pairs,
    # the bias entering as the Conv's own (negated) bias, so PPV is mean(output > 0).
    xt = g.op("Transpose", [x], "rocket_input", perm=[0, 2, 1])
    parts: list[str] = []
    zero = g.const("rocket_zero", np.array(0.0, dtype=np.float32))
    for d in rocket.dilations:
        p = f"rocket_d{d.dilation}"
        conv = g.op(
            "Conv",
            [xt, g.const(f"{p}_w", d.weights), g.const(f"{p}_b", -d.biases)],
            f"{p}_conv",
            dilations=[d.dilation],
            kernel_shape=[d.weights.shape[2]],
        )
        positive = g.op("Greater", [conv, zero], f"{p}_positive")
        as_float = g.op("Cast", [positive], f"{p}_float", to=TensorProto.FLOAT)
        parts.append(g.op("ReduceMean", [as_float], f"{p}_ppv", axes=[2], keepdims=0))
    return g.op("Concat", parts, "rocket_features", axis=1)


def onnx_classifier(model: Classifier, name: str, doc: str) -> onnx.ModelProto:
    """Features → standardisation → MLP (MatMul/Add/Relu) → Softmax, as one fp32 graph."""
    g = _OnnxGraph()
    features = _onnx_features(g, INPUT_NAME, model.layout)
    if model.rocket is not None:
        rocket = _onnx_rocket(g, INPUT_NAME, model.rocket)
        features = g.op("Concat", [features, rocket], "all_features", axis=1)
    # Standardisation stays a plain Sub/Mul in fp32: only MatMuls get quantized, and they
    # then see inputs of unit scale, which suits a per-tensor int8 range.
    z = g.op("Sub", [features, g.const("feature_mean", model.feature_mean)], "centred_features")
    h = g.op("Mul", [z, g.const("feature_inv_std", model.feature_inv_std)], "standardised")
    layers = model.hidden_layers()
    for i, (weight, bias) in enumerate(layers):
        h = g.op("MatMul", [h, g.const(f"w{i}", weight.astype(np.float32))], f"matmul{i}")
        h = g.op("Add", [h, g.const(f"b{i}", bias.astype(np.float32))], f"dense{i}")
        if i < len(layers) - 1:
            h = g.op("Relu", [h], f"relu{i}")
    g.op("Softmax", [h], OUTPUT_NAME, axis=1)
    return _onnx_finish(g, OUTPUT_NAME, len(model.labels), model.layout, name, doc, model.labels)


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: F32) -> None:
    """Int8 QDQ on MatMul weights and activations only; the feature stage stays fp32."""
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class WindowReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base
        def __init__(self, windows: F32, batch: int = 64) -> None:
            self._batches: Iterator[F32] = iter(
                [windows[i : i + batch] for i in range(0, len(windows), batch)]
            )

        def get_next(self) -> dict[str, F32] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    # The quantizer nags (on the root logger) about its optional pre-processing pass; it only
    # helps graphs with shapes left to infer or ops to fold, and this one has neither.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            fp32_path,
            int8_path,
            WindowReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.setLevel(level)
    # Pin the IR version again: the quantizer rewrites the model with its own defaults.
    model = onnx.load(int8_path)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > OPSET:
        raise RuntimeError(f"quantized model needs opset {opset} > {OPSET}")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, int8_path)


# --------------------------------------------------------------------------------------------
# TFLite.
# --------------------------------------------------------------------------------------------

_OP = fb.BuiltinOperator
_OPT = fb.BuiltinOptions
_FLOAT32 = np.dtype(np.float32)
_TENSOR_TYPES = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.bool_): fb.TensorType.BOOL,
}


@dataclass(frozen=True)
class QuantParams:
    """Affine int8 parameters: real = scale × (q − zero_point)."""

    scale: float
    zero_point: int

    @classmethod
    def for_range(cls, low: float, high: float) -> QuantParams:
        """Asymmetric int8 over [low, high], widened to include 0 (as TFLite requires)."""
        low, high = min(low, 0.0), max(high, 0.0)
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
        return cls(float(scale), zero_point)


class _TfliteGraph:
    """Builds one subgraph with the schema's object API; tensors are referred to by index."""

    def __init__(self, description: str) -> None:
        self.model = fb.ModelT()
        self.model.version = 3
        self.model.description = description
        self.model.buffers = [fb.BufferT()]  # buffer 0: the empty sentinel every model has
        self.model.operatorCodes = []
        self.graph = fb.SubGraphT()
        self.graph.tensors = []
        self.graph.operators = []
        self.graph.inputs = []
        self.graph.outputs = []
        self.graph.name = "main"
        self._codes: dict[int, int] = {}
        self._names: set[str] = set()

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: np.dtype[Any] = _FLOAT32,
        *,
        data: NDArray[Any] | None = None,
        quant: QuantParams | None = None,
        batch_dim: bool = True,
    ) -> int:
        if name in self._names:
            raise ValueError(f"tensor {name!r} defined twice")
        self._names.add(name)
        t = fb.TensorT()
        t.name = name
        t.type = _TENSOR_TYPES[np.dtype(dtype)]
        shape = [int(s) for s in shape]
        # Batch dimension: 1 in the file, -1 in the signature, so the interpreter may resize it.
        t.shape = np.array([1, *shape] if batch_dim else shape, dtype=np.int32)
        if batch_dim:
            t.shapeSignature = np.array([-1, *shape], dtype=np.int32)
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        if quant is not None:
            q = fb.QuantizationParametersT()
            q.scale = [quant.scale]
            q.zeroPoint = [quant.zero_point]
            t.quantization = q
        self.graph.tensors.append(t)
        return len(self.graph.tensors) - 1

    def const(self, name: str, value: NDArray[Any], quant: QuantParams | None = None) -> int:
        value = np.asarray(value)
        return self.tensor(name, value.shape, value.dtype, data=value, quant=quant, batch_dim=False)

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = _OPT.NONE,
        options: Any = None,
        version: int = 1,
    ) -> int:
        index = self._codes.get(code)
        if index is None:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, _OP.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = version
            self.model.operatorCodes.append(oc)
            index = self._codes[code] = len(self.model.operatorCodes) - 1
        op = fb.OperatorT()
        op.opcodeIndex = index
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        op.builtinOptionsType = options_type
        op.builtinOptions = options
        self.graph.operators.append(op)
        return outputs[0]

    # -- ops used by the feature stage and the MLP ---------------------------------------

    def reduce(self, code: int, x: int, axis: int, keep: bool, out: str, shape: list[int]) -> int:
        opts = fb.ReducerOptionsT()
        opts.keepDims = keep
        axis_t = self.const(f"{out}_axis", np.array([axis], dtype=np.int32))
        return self.op(code, [x, axis_t], [self.tensor(out, shape)], _OPT.ReducerOptions, opts)

    def binary(self, code: int, a: int, b: int, out: str, shape: list[int]) -> int:
        options: dict[int, tuple[int, Any]] = {
            _OP.SUB: (_OPT.SubOptions, fb.SubOptionsT()),
            _OP.MUL: (_OPT.MulOptions, fb.MulOptionsT()),
            _OP.DIV: (_OPT.DivOptions, fb.DivOptionsT()),
        }
        kind, opts = options[code]
        return self.op(code, [a, b], [self.tensor(out, shape)], kind, opts)

    def unary(self, code: int, x: int, out: str, shape: list[int]) -> int:
        return self.op(code, [x], [self.tensor(out, shape)])

    def slice(self, x: int, begin: list[int], size: list[int], out: str, shape: list[int]) -> int:
        # begin/size cover the batch dimension too; size -1 means "to the end".
        b = self.const(f"{out}_begin", np.array(begin, dtype=np.int32))
        s = self.const(f"{out}_size", np.array(size, dtype=np.int32))
        return self.op(
            _OP.SLICE, [x, b, s], [self.tensor(out, shape)], _OPT.SliceOptions, fb.SliceOptionsT()
        )

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        from ai_edge_litert.tools import flatbuffer_utils

        self.graph.inputs = inputs
        self.graph.outputs = outputs
        self.model.subgraphs = [self.graph]
        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))


def _tflite_magnitude(g: _TfliteGraph, vec: int, prefix: str, window: int) -> tuple[int, int]:
    sq = g.binary(_OP.MUL, vec, vec, f"{prefix}_sq", [window, 3])
    sum_sq = g.reduce(_OP.SUM, sq, 2, False, f"{prefix}_sumsq", [window])
    magnitude = g.unary(_OP.SQRT, sum_sq, f"{prefix}_mag", [window])
    mean = g.reduce(_OP.MEAN, magnitude, 1, True, f"{prefix}_mag_mean", [1])
    dev = g.binary(_OP.SUB, magnitude, mean, f"{prefix}_mag_dev", [window])
    dev_sq = g.binary(_OP.MUL, dev, dev, f"{prefix}_mag_dev_sq", [window])
    var = g.reduce(_OP.MEAN, dev_sq, 1, True, f"{prefix}_var", [1])
    return mean, g.unary(_OP.SQRT, var, f"{prefix}_mag_std", [1])


def _tflite_features(g: _TfliteGraph, x: int, layout: FeatureLayout) -> int:
    w, c = layout.window, len(layout.channels)
    mean_k = g.reduce(_OP.MEAN, x, 1, True, "mean_keep", [1, c])
    centred = g.binary(_OP.SUB, x, mean_k, "centred", [w, c])
    centred_sq = g.binary(_OP.MUL, centred, centred, "centred_sq", [w, c])
    var = g.reduce(_OP.MEAN, centred_sq, 1, False, "var", [c])
    std = g.unary(_OP.SQRT, var, "std", [c])
    high = g.reduce(_OP.REDUCE_MAX, x, 1, False, "max", [c])
    low = g.reduce(_OP.REDUCE_MIN, x, 1, False, "min", [c])
    value_range = g.binary(_OP.SUB, high, low, "range", [c])
    later = g.slice(x, [0, 1, 0], [-1, w - 1, -1], "later", [w - 1, c])
    earlier = g.slice(x, [0, 0, 0], [-1, w - 1, -1], "earlier", [w - 1, c])
    diff = g.binary(_OP.SUB, later, earlier, "diff", [w - 1, c])
    abs_diff = g.unary(_OP.ABS, diff, "abs_diff", [w - 1, c])
    mad = g.reduce(_OP.MEAN, abs_diff, 1, False, "mad", [c])
    parts = [std, value_range, mad]
    n_mean = layout.mean_stop - layout.mean_start
    if n_mean:
        mean = g.reduce(_OP.MEAN, x, 1, False, "mean", [c])
        if n_mean == c:
            parts.append(mean)
        else:
            parts.append(
                g.slice(mean, [0, layout.mean_start], [-1, n_mean], layout.mean_tensor, [n_mean])
            )
    for grp in layout.groups:
        source = centred if grp.centred else x
        vec = g.slice(source, [0, 0, grp.start], [-1, -1, 3], grp.tensor, [w, 3])
        parts += list(_tflite_magnitude(g, vec, grp.prefix, w))
    opts = fb.ConcatenationOptionsT()
    opts.axis = 1
    width = len(layout.names())
    return g.op(
        _OP.CONCATENATION,
        parts,
        [g.tensor("features", [width])],
        _OPT.ConcatenationOptions,
        opts,
    )


def _tflite_rocket(g: _TfliteGraph, x: int, rocket: MiniRocket) -> int:
    # CONV_2D wants NHWC: the window becomes [N, 1, T, C] and each dilation one convolution
    # with a [K, 1, 9, C] filter (the negated biases as its bias), so PPV is mean(out > 0).
    t, c = rocket.window, rocket.channels
    shape = g.const("rocket_shape", np.array([-1, 1, t, c], dtype=np.int32))
    ropts = fb.ReshapeOptionsT()
    ropts.newShape = [-1, 1, t, c]
    image = g.op(
        _OP.RESHAPE, [x, shape], [g.tensor("rocket_input", [1, t, c])], _OPT.ReshapeOptions, ropts
    )
    zero = g.const("rocket_zero", np.zeros((1,), dtype=np.float32))
    parts: list[int] = []
    for d in rocket.dilations:
        p = f"rocket_d{d.dilation}"
        k, _, taps = d.weights.shape
        length = t - (taps - 1) * d.dilation
        filt = np.ascontiguousarray(d.weights.transpose(0, 2, 1)[:, None, :, :])  # [K,1,9,C]
        copts = fb.Conv2DOptionsT()
        copts.padding = fb.Padding.VALID
        copts.strideH = copts.strideW = 1
        copts.dilationHFactor = 1
        copts.dilationWFactor = d.dilation
        copts.fusedActivationFunction = fb.ActivationFunctionType.NONE
        conv = g.op(
            _OP.CONV_2D,
            [image, g.const(f"{p}_w", filt), g.const(f"{p}_b", -d.biases)],
            [g.tensor(f"{p}_conv", [1, length, k])],
            _OPT.Conv2DOptions,
            copts,
            version=2,
        )
        positive = g.op(
            _OP.GREATER,
            [conv, zero],
            [g.tensor(f"{p}_positive", [1, length, k], np.dtype(np.bool_))],
            _OPT.GreaterOptions,
            fb.GreaterOptionsT(),
        )
        cast_opts = fb.CastOptionsT()
        cast_opts.inDataType = fb.TensorType.BOOL
        cast_opts.outDataType = fb.TensorType.FLOAT32
        as_float = g.op(
            _OP.CAST,
            [positive],
            [g.tensor(f"{p}_float", [1, length, k])],
            _OPT.CastOptions,
            cast_opts,
        )
        mopts = fb.ReducerOptionsT()
        mopts.keepDims = False
        axes = g.const(f"{p}_axes", np.array([1, 2], dtype=np.int32))
        parts.append(
            g.op(
                _OP.MEAN,
                [as_float, axes],
                [g.tensor(f"{p}_ppv", [k])],
                _OPT.ReducerOptions,
                mopts,
            )
        )
    copts2 = fb.ConcatenationOptionsT()
    copts2.axis = 1
    return g.op(
        _OP.CONCATENATION,
        parts,
        [g.tensor("rocket_features", [rocket.width])],
        _OPT.ConcatenationOptions,
        copts2,
    )


@dataclass(frozen=True)
class TfliteCalibration:
    """Observed float ranges of the tensors that become int8: the MLP input and each layer."""

    ranges: list[tuple[float, float]]


def calibrate_mlp(model: Classifier, windows: F32) -> TfliteCalibration:
    """Min/max of the standardised features and of every layer's output (after ReLU)."""
    h = (model_features(windows, model) - model.feature_mean) * model.feature_inv_std
    ranges = [(float(h.min()), float(h.max()))]
    layers = model.hidden_layers()
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
        ranges.append((float(h.min()), float(h.max())))
    return TfliteCalibration(ranges)


def tflite_classifier(
    model: Classifier, description: str, calibration: TfliteCalibration | None = None
) -> bytes:
    """The classifier as a TFLite flatbuffer: fp32, or int8 MLP when `calibration` is given.

    In the int8 model the feature stage and the softmax stay fp32 (like the ONNX QDQ model):
    QUANTIZE → FULLY_CONNECTED (int8, fused ReLU) ... → DEQUANTIZE → SOFTMAX.
    """
    layout = model.layout
    g = _TfliteGraph(description)
    x = g.tensor(INPUT_NAME, [layout.window, len(layout.channels)])
    features = _tflite_features(g, x, layout)
    width = model.width
    if model.rocket is not None:
        rocket = _tflite_rocket(g, x, model.rocket)
        opts = fb.ConcatenationOptionsT()
        opts.axis = 1
        features = g.op(
            _OP.CONCATENATION,
            [features, rocket],
            [g.tensor("all_features", [width])],
            _OPT.ConcatenationOptions,
            opts,
        )
    mu = g.const("feature_mean", model.feature_mean.astype(np.float32))
    inv = g.const("feature_inv_std", model.feature_inv_std.astype(np.float32))
    z = g.binary(_OP.SUB, features, mu, "centred_features", [width])
    h = g.binary(_OP.MUL, z, inv, "standardised", [width])
    layers = model.hidden_layers()
    in_q: QuantParams | None = None
    if calibration is not None:
        in_q = QuantParams.for_range(*calibration.ranges[0])
        q = g.tensor("standardised_int8", [width], np.dtype(np.int8), quant=in_q)
        h = g.op(_OP.QUANTIZE, [h], [q], _OPT.QuantizeOptions, fb.QuantizeOptionsT())
    for i, (weight, bias) in enumerate(layers):
        last = i == len(layers) - 1
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (
            fb.ActivationFunctionType.NONE if last else fb.ActivationFunctionType.RELU
        )
        wt = np.ascontiguousarray(weight.T)  # TFLite keeps FC weights as [out, in]
        units = wt.shape[0]
        name = "logits" if last else f"dense{i}"
        if calibration is None or in_q is None:
            w_t = g.const(f"w{i}", wt.astype(np.float32))
            b_t = g.const(f"b{i}", bias.astype(np.float32))
            out = g.tensor(name, [units])
            version = 1
        else:
            w_scale = float(np.abs(wt).max()) / 127.0 or 1.0
            w_q = np.clip(np.round(wt / w_scale), -127, 127).astype(np.int8)
            w_t = g.const(f"w{i}", w_q, QuantParams(w_scale, 0))
            b_scale = in_q.scale * w_scale
            b_q = np.round(bias / b_scale).astype(np.int32)
            b_t = g.const(f"b{i}", b_q, QuantParams(b_scale, 0))
            out_q = QuantParams.for_range(*calibration.ranges[i + 1])
            out = g.tensor(f"{name}_int8", [units], np.dtype(np.int8), quant=out_q)
            in_q = out_q
            version = 4
        h = g.op(
            _OP.FULLY_CONNECTED,
            [h, w_t, b_t],
            [out],
            _OPT.FullyConnectedOptions,
            opts,
            version=version,
        )
    n_labels = len(model.labels)
    if calibration is not None:
        deq = g.tensor("logits", [n_labels])
        h = g.op(_OP.DEQUANTIZE, [h], [deq], _OPT.DequantizeOptions, fb.DequantizeOptionsT(), 2)
    soft = fb.SoftmaxOptionsT()
    soft.beta = 1.0
    probs = g.op(_OP.SOFTMAX, [h], [g.tensor(OUTPUT_NAME, [n_labels])], _OPT.SoftmaxOptions, soft)
    return g.finish([x], [probs])


def write_onnx_pair(
    model: Classifier, name: str, doc: str, fp32: Path, int8: Path, calibration: F32
) -> None:
    """The classifier as fp32 ONNX and its int8 QDQ twin, calibrated on `calibration`."""
    onnx.save(onnx_classifier(model, name, doc), fp32)
    quantize_onnx(fp32, int8, calibration)


def write_tflite_pair(
    model: Classifier, doc: str, fp32: Path, int8: Path, calibration: F32
) -> None:
    """The classifier as fp32 TFLite and its int8 twin, calibrated on `calibration`."""
    fp32.write_bytes(tflite_classifier(model, doc))
    int8.write_bytes(tflite_classifier(model, doc, calibrate_mlp(model, calibration)))
