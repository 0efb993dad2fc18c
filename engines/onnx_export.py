"""Build ONNX graphs of dlib's two networks from the parsed weights (the cache: `onnx_cache.py`).

Only standard operators that TensorRT's ONNX parser supports are used: Conv, Relu, Add, Pad, Slice, Sum,
MaxPool, AveragePool, GlobalAveragePool, Flatten, Gemm (and Mul/Add for an unfolded affine).
Each affine (dlib's `affine_`, or a `bn_con2` record loaded as one) directly follows a conv in
both networks, so by default it is folded into that conv's weights: exact in real arithmetic,
a change of float rounding of about 1e-7 relative.

The graphs take normalised planes, `(float32(pixel) - mean) / 256` in R, G, B order, NCHW;
the numpy side does that (it is cheap, and it keeps uint8 handling out of the engines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .dlib_format import (
    AddPrev,
    Affine,
    Conv,
    DlibNetwork,
    FullyConnected,
    Pool,
    Relu,
    TagOrSkip,
    read_face_embedder,
    read_mmod_detector,
)

OPSET = 17
# Tag/skip/add_prev IDs are not stored in the file (docs/dlib-model-formats.md §5): for the
# embedder, `ares` adds tag1 and `ares_down` adds tag2 after skipping back to tag1.
_ARES = ["relu", ("add", 1), "aff", "conv", "relu", "aff", "conv", ("tag", 1)]
_ARES_DOWN = ["relu", ("add", 2), "pool", ("skip", 1), ("tag", 2), "aff", "conv", "relu", "aff", "conv", ("tag", 1)]
EMBEDDER_ROLES: list = (
    ["fc", "pool"]
    + _ARES_DOWN + _ARES * 2 + _ARES_DOWN + _ARES * 2 + _ARES_DOWN + _ARES * 3 + _ARES_DOWN + _ARES * 3
    + ["pool", "relu", "aff", "conv"]
)  # fmt: skip



@dataclass
class _GraphBuilder:
    nodes: list
    initializers: list
    counter: int = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, name: str | None = None, **attrs) -> str:
        out = name or self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, layer: Conv, affine: Affine | None, channels: tuple[int, int] | None = None) -> str:
        """`layer` (with `affine` folded in when given); `channels` = (out, in) zero-extends the weights to
        that many output and input channels (zero filters and bias: the extra outputs are exactly 0; zero
        weights on extra inputs, which carry those zeros)."""
        weights, bias = _folded(layer, affine)
        if channels is not None:
            weights, bias = _zero_extended(weights, bias, *channels)
        (sy, sx), (py, px) = layer.stride, layer.padding
        return self.op(
            "Conv",
            [x, self.const(weights.astype(np.float32), "w"), self.const(bias.astype(np.float32), "b")],
            "conv", kernel_shape=list(weights.shape[2:]), strides=[sy, sx], pads=[py, px, py, px],
        )  # fmt: skip

    def single_output_conv(self, x: str, layer: Conv, in_channels: int) -> str:
        """A one-filter k x k conv (stride 1, output the input's size) as row sums: a 1 x k conv whose
        output channel dy holds filter row dy's sums (channels rounded up to a block, the extra ones
        zero), then output(y) = bias + sum over dy of channel dy at row y + dy - k//2. ONNX Runtime runs
        a one-filter conv as a matrix-vector product per position, far below its convolution rate; the
        row sums are a blocked convolution and nine slices added. Exact in real arithmetic (the sum is
        regrouped by rows; float rounding moves by ~1e-6)."""
        weights, bias = _zero_extended(*_folded(layer, None), 1, in_channels)
        k = weights.shape[2]
        rows = np.zeros((_rounded_up(k), in_channels, 1, k), np.float64)
        rows[:k] = weights[0].transpose(1, 0, 2)[:, :, None, :]
        half = k // 2
        names = score_node_names(k)
        padded = self.op("Pad", [x, self.const(np.array([0, 0, half, 0, 0, 0, half, 0], np.int64), "pads")],
                         name=names[0], mode="constant")  # fmt: skip
        sums = self.op("Conv", [padded, self.const(rows.astype(np.float32), "w")], name=names[1],
                       kernel_shape=[1, k], pads=[0, half, 0, half])  # fmt: skip
        axes = self.const(np.array([1, 2], np.int64), "axes")
        last = np.iinfo(np.int64).max
        parts = []
        for dy in range(k):  # channel dy, rows dy .. dy + H - 1 of the padded rows
            starts = self.const(np.array([dy, dy], np.int64), "starts")
            ends = self.const(np.array([dy + 1, dy - 2 * half if dy < 2 * half else last], np.int64), "ends")
            parts.append(self.op("Slice", [sums, starts, ends, axes], name=names[2 + dy]))
        return self.op("Sum", [*parts, self.const(bias.astype(np.float32).reshape(1, 1, 1, 1), "b")], name=names[-1])

    def affine(self, x: str, layer: Affine) -> str:
        gamma = self.const(layer.gamma.reshape(1, -1, 1, 1), "gamma")
        beta = self.const(layer.beta.reshape(1, -1, 1, 1), "beta")
        return self.op("Add", [self.op("Mul", [x, gamma]), beta], "affine")

    def pool(self, x: str, layer: Pool) -> str:
        if layer.size == (0, 0):
            return self.op("GlobalAveragePool", [x], "gap")
        (sy, sx), (py, px) = layer.stride, layer.padding
        if (py, px) != (0, 0):
            raise ValueError("padded pooling is not in dlib's face models and is not exported")
        return self.op(
            "MaxPool" if layer.kind == "max" else "AveragePool", [x], f"{layer.kind}pool",
            kernel_shape=list(layer.size), strides=[sy, sx],
        )  # fmt: skip


def score_node_names(kernel: int = 9) -> tuple[str, ...]:
    """The nodes computing the detector's score map from its last hidden layer (`single_output_conv` with a
    `kernel` x `kernel` filter: dlib's detector has 9): kept in FP32 in FP16 engines."""
    return ("scores_pad", "scores_rows", *(f"scores_row{dy}" for dy in range(kernel)), "scores_sum")


def _folded(layer: Conv, affine: Affine | None) -> tuple[np.ndarray, np.ndarray]:
    """Float64 weights and bias of `layer`, with y = g*(w*x + b) + beta folded in when `affine` is given."""
    weights, bias = layer.weights.astype(np.float64), layer.bias.astype(np.float64)
    if affine is not None:
        gamma = affine.gamma.astype(np.float64)
        weights = weights * gamma[:, None, None, None]
        bias = bias * gamma + affine.beta.astype(np.float64)
    return weights, bias


def _zero_extended(weights: np.ndarray, bias: np.ndarray, out: int, into: int) -> tuple[np.ndarray, np.ndarray]:
    o, i = weights.shape[:2]
    wide = np.zeros((out, into, *weights.shape[2:]), weights.dtype)
    wide[:o, :i] = weights
    return wide, np.concatenate([bias, np.zeros(out - o, bias.dtype)])


# ONNX Runtime runs a conv in its blocked (NCHWc) layout only when its channel counts are multiples of the
# block (8 floats on AVX2, 16 on AVX-512): the detector's 45-channel convs ran as plain convs.
CHANNEL_BLOCK = 16


def _rounded_up(channels: int) -> int:
    return -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - kernel) // stride


def _model(builder: _GraphBuilder, graph_name: str, inputs: list, outputs: list, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(builder.nodes, graph_name, inputs, outputs, builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facestream")
    model.ir_version = 8  # readable by TensorRT 8.6+ and every current ONNX Runtime
    model.doc_string = doc
    return model


# Over 60 lines: the ResNet's layers in dlib's order, one block per stage: the graph reads top to bottom.
def embedder_model(network: DlibNetwork, fold_affine: bool = True) -> onnx.ModelProto:
    """The ResNet face embedder: input `chips` (N,3,150,150) normalised, output `descriptors` (N,128)."""
    layers = list(network.layers)
    if len(layers) != len(EMBEDDER_ROLES):
        raise ValueError(f"{network.path}: expected {len(EMBEDDER_ROLES)} embedder layers, got {len(layers)}")
    builder = _GraphBuilder([], [])
    rows, cols = network.input.rows, network.input.cols  # type: ignore[union-attr]
    current, shape = "chips", (3, rows, cols)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    pending_conv: tuple[Conv, tuple[int, int, int]] | None = None

    def flush_conv(affine: Affine | None) -> None:
        nonlocal current, pending_conv
        if pending_conv is not None:
            current = builder.conv(current, pending_conv[0], affine)
            pending_conv = None

    for role, layer in zip(reversed(EMBEDDER_ROLES), reversed(layers)):
        if role == "conv":
            assert isinstance(layer, Conv)
            flush_conv(None)
            (sy, sx), (py, px) = layer.stride, layer.padding
            kh, kw = layer.weights.shape[2:]
            shape = (layer.weights.shape[0], _conv_out(shape[1], kh, sy, py), _conv_out(shape[2], kw, sx, px))
            pending_conv = (layer, shape)
            if not fold_affine:
                flush_conv(None)
            continue
        if role == "aff" and pending_conv is not None:
            assert isinstance(layer, Affine)
            flush_conv(layer)
            continue
        flush_conv(None)
        if role == "aff":
            assert isinstance(layer, Affine)
            current = builder.affine(current, layer)
        elif role == "relu":
            assert isinstance(layer, Relu)
            current = builder.op("Relu", [current], "relu")
        elif role == "pool":
            assert isinstance(layer, Pool)
            current = builder.pool(current, layer)
            if layer.size == (0, 0):
                shape = (shape[0], 1, 1)
            else:
                rows_out, cols_out = (_conv_out(shape[1 + i], layer.size[i], layer.stride[i], 0) for i in range(2))
                shape = (shape[0], rows_out, cols_out)
        elif role == "fc":
            assert isinstance(layer, FullyConnected)
            flat = builder.op("Flatten", [current], "flatten", axis=1)
            bias = layer.bias if layer.bias is not None else np.zeros(layer.weights.shape[1], np.float32)
            current = builder.op(
                "Gemm", [flat, builder.const(layer.weights, "fc_w"), builder.const(bias, "fc_b")], "fc"
            )
            shape = (layer.weights.shape[1], 1, 1)
        elif role[0] == "tag":
            assert isinstance(layer, TagOrSkip)
            tags[role[1]] = (current, shape)
        elif role[0] == "skip":
            current, shape = tags[role[1]]
        elif role[0] == "add":
            assert isinstance(layer, AddPrev)
            other, other_shape = tags[role[1]]
            out_shape = tuple(max(a, b) for a, b in zip(shape, other_shape))
            # dlib zero-extends each input at the end of the channel, row and column axes.
            current = builder.op(
                "Add",
                [
                    _zero_extend(builder, current, shape, out_shape),
                    _zero_extend(builder, other, other_shape, out_shape),
                ],
                "add",
            )
            shape = out_shape  # type: ignore[assignment]
    flush_conv(None)
    outputs = [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", shape[0]])]
    builder.nodes[-1].output[0] = "descriptors"
    outputs[0].name = "descriptors"
    inputs = [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["batch", 3, rows, cols])]
    return _model(
        builder,
        "dlib_face_recognition_resnet_model_v1",
        inputs,
        outputs,
        "dlib ResNet face embedder; input (x - mean)/256 RGB planes; output 128-d descriptor",
    )


def _zero_extend(builder: _GraphBuilder, x: str, shape: tuple, out_shape: tuple) -> str:
    if shape == out_shape:
        return x
    ends = [0] + [b - a for a, b in zip(shape, out_shape)]  # N, C, H, W
    pads = builder.const(np.array([0, 0, 0, 0, *ends], np.int64), "pads")
    return builder.op("Pad", [x, pads], "zext", mode="constant")


def detector_model(network: DlibNetwork, fold_affine: bool = True) -> onnx.ModelProto:
    """The MMOD detector body: input `pyramid` (N,3,H,W) normalised, output `scores` (N,1,Ho,Wo)."""
    builder = _GraphBuilder([], [])
    current = "pyramid"
    layers = list(reversed(network.layers))  # innermost first: conv, affine, relu, ..., conv
    index = 0
    carried = 3  # channels of `current` (more than the layer's input when the last conv was widened)
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, Conv):
            following = layers[index + 1] if index + 1 < len(layers) else None
            if fold_affine and isinstance(following, Affine):
                out = _rounded_up(layer.weights.shape[0])  # widened channels are exactly 0 (see `conv`)
                current = builder.conv(current, layer, following, (out, carried))
                carried = out
                index += 2
                continue
            if fold_affine and following is None and _single_output_conv_same_size(layer):
                current = builder.single_output_conv(current, layer, carried)
            else:
                current = builder.conv(current, layer, None, (layer.weights.shape[0], carried))
            carried = layer.weights.shape[0]
        elif isinstance(layer, Affine):
            current = builder.affine(current, layer)
        elif isinstance(layer, Relu):
            current = builder.op("Relu", [current], "relu")
        else:
            raise ValueError(f"{network.path}: unexpected {type(layer).__name__} in the MMOD detector")
        index += 1
    builder.nodes[-1].output[0] = "scores"
    num_windows = network.layers[0].weights.shape[0]  # type: ignore[union-attr]
    inputs = [helper.make_tensor_value_info("pyramid", TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", num_windows, "out_h", "out_w"])]
    return _model(
        builder,
        "mmod_human_face_detector",
        inputs,
        outputs,
        "dlib MMOD CNN face detector body; input tiled pyramid of (x - mean)/256 RGB planes",
    )


def _single_output_conv_same_size(layer: Conv) -> bool:
    kh, kw = layer.weights.shape[2:]
    return (layer.weights.shape[0] == 1 and kh == kw and kh % 2 == 1 and tuple(layer.stride) == (1, 1)
            and tuple(layer.padding) == (kh // 2, kw // 2))  # fmt: skip


_BUILDERS = {
    "embedder": (read_face_embedder, embedder_model),
    "detector": (read_mmod_detector, detector_model),
}


def build_onnx(model_path: str | Path, kind: str, source_sha256: str, fold_affine: bool = True) -> bytes:
    """The serialized ONNX graph of a dlib model file, checked by `onnx.checker` (full check)."""
    reader, build = _BUILDERS[kind]
    model = build(reader(model_path), fold_affine=fold_affine)
    model.metadata_props.add(key="source_sha256", value=source_sha256)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
