"""dlib's DNN files (dlib/dnn/core.h, layers.h, input.h, loss.h): typed layer descriptions, `parse_network`, and
the two networks facestream reads (MMOD detector, ResNet embedder), whose structure is checked here because
the file does not hold it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .serialize import ByteReader, DlibFormatError, read_model_bytes

# ---------------------------------------------------------------------------------------------
# Layer descriptions (dlib/dnn/layers.h, input.h, loss.h)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    weights: np.ndarray  # (F, C, kh, kw) float32, cross-correlation
    bias: np.ndarray  # (F,) float32
    stride: tuple[int, int]  # (y, x)
    padding: tuple[int, int]  # (y, x), both sides


@dataclass(frozen=True)
class Affine:
    """y = gamma * x + beta per channel; `source` says whether the file stored affine_ or bn_con2."""

    gamma: np.ndarray  # (C,) float32
    beta: np.ndarray  # (C,) float32
    source: str


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    size: tuple[int, int]  # (0, 0) = the whole input (avg_pool_everything)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """Adds the output of a tagged layer (the tag is not stored in the file)."""


@dataclass(frozen=True)
class TagOrSkip:
    """tag / skip wrappers: identities whose IDs are not stored in the file."""


@dataclass(frozen=True)
class FullyConnected:
    weights: np.ndarray  # (num_inputs, num_outputs) float32; out = x_flat @ weights
    bias: np.ndarray | None


@dataclass(frozen=True)
class InputImageSized:
    means: tuple[float, float, float]  # R, G, B
    rows: int
    cols: int


@dataclass(frozen=True)
class InputImagePyramid:
    means: tuple[float, float, float]
    padding: int
    outer_padding: int


@dataclass(frozen=True)
class DetectorWindow:
    width: int
    height: int
    label: str = ""


@dataclass(frozen=True)
class LossMMOD:
    windows: tuple[DetectorWindow, ...]
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou_threshold: float
    nms_iou_threshold: float
    nms_percent_covered_threshold: float
    ignore_iou_threshold: float
    ignore_percent_covered_threshold: float
    bbox_regression: bool = False


@dataclass(frozen=True)
class LossMetric:
    margin: float
    distance_threshold: float


Layer = Conv | Affine | Relu | Pool | AddPrev | TagOrSkip | FullyConnected
InputLayer = InputImageSized | InputImagePyramid


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed network: loss, layers outermost first (as in the type), and the input layer."""

    path: str
    loss: LossMMOD | LossMetric
    layers: tuple[Layer, ...]
    input: InputLayer
    # Byte offset where each layer's record starts, outermost first (None for tag/skip).
    offsets: tuple[int | None, ...] = field(default=(), compare=False)


def _read_conv(reader: ByteReader, version: str) -> Conv:
    params = reader.tensor("con_ params")
    num_filters = reader.int("con_ num_filters")
    rows, cols = reader.int("con_ kernel rows"), reader.int("con_ kernel cols")
    stride = (reader.int("con_ stride_y"), reader.int("con_ stride_x"))
    padding = (reader.int("con_ padding_y"), reader.int("con_ padding_x"))
    filters_shape = reader.alias("con_ filters alias")
    reader.alias("con_ biases alias")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        reader.float("con_ " + name)
    use_bias = reader.bool("con_ use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and reader.bool("con_ use_relu"):
        raise reader.fail("con_ without a fused relu", "use_relu = true")
    f, c, kh, kw = filters_shape
    if (f, kh, kw) != (num_filters, rows, cols):
        raise reader.fail(f"a filters alias of ({num_filters}, C, {rows}, {cols})", str(filters_shape))
    n_weights = f * c * kh * kw
    expected = n_weights + (f if use_bias else 0)
    if params.size != expected:
        raise reader.fail(f"{expected} con_ parameters for {filters_shape}", f"{params.size}")
    flat = params.reshape(-1)
    bias = flat[n_weights:] if use_bias else np.zeros(f, np.float32)
    return Conv(flat[:n_weights].reshape(f, c, kh, kw).copy(), bias.copy(), stride, padding)


def _read_affine(reader: ByteReader, version: str) -> Affine:
    params = reader.tensor("affine_ params").reshape(-1)
    reader.alias("affine_ gamma alias")
    reader.alias("affine_ beta alias")
    start = reader.offset
    mode = reader.int("affine_ mode")
    if mode != 0:
        raise reader.fail("affine_ in CONV_MODE (0)", f"mode {mode}", offset=start)
    if version == "affine_2":
        reader.bool("affine_ disabled")
    half = params.size // 2
    return Affine(params[:half].copy(), params[half:].copy(), "affine_")


def _read_bn_as_affine(reader: ByteReader, version: str) -> Affine:
    """A bn_con2 record loaded into an affine_ layer, as dlib does (float32 arithmetic)."""
    if version != "bn_con2":
        raise reader.fail("bn_con2 (convolutional batch norm)", repr(version))
    params = reader.tensor("bn_ params").reshape(-1)
    reader.alias("bn_ gamma alias")
    reader.alias("bn_ beta alias")
    reader.tensor("bn_ means")
    reader.tensor("bn_ invstds")
    running_means = reader.tensor("bn_ running_means").reshape(-1)
    running_variances = reader.tensor("bn_ running_variances").reshape(-1)
    reader.uint("bn_ num_updates")
    reader.uint("bn_ running_stats_window_size")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        reader.float("bn_ " + name)
    eps = np.float32(reader.float("bn_ eps"))
    half = params.size // 2
    if running_means.size != half or running_variances.size != half:
        raise reader.fail(f"{half} running means and variances", f"{running_means.size}, {running_variances.size}")
    gamma = params[:half] / np.sqrt(running_variances + eps)
    beta = params[half:] - gamma * running_means
    return Affine(gamma.astype(np.float32), beta.astype(np.float32), "bn_con2")


def _read_pool(reader: ByteReader, version: str) -> Pool:
    size = (reader.int("pool rows"), reader.int("pool cols"))
    stride = (reader.int("pool stride_y"), reader.int("pool stride_x"))
    padding = (reader.int("pool padding_y"), reader.int("pool padding_x"))
    return Pool("max" if version.startswith("max") else "avg", size, stride, padding)


def _read_fc(reader: ByteReader, version: str) -> FullyConnected:
    num_outputs, num_inputs = reader.uint("fc_ num_outputs"), reader.uint("fc_ num_inputs")
    params = reader.tensor("fc_ params").reshape(-1)
    reader.alias("fc_ weights alias")
    reader.alias("fc_ biases alias")
    bias_mode = reader.int("fc_ bias_mode")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        reader.float("fc_ " + name)
    if version == "fc_3":
        reader.bool("fc_ use_bias")
    has_bias = bias_mode == 0
    expected = (num_inputs + (1 if has_bias else 0)) * num_outputs
    if params.size != expected:
        raise reader.fail(f"{expected} fc_ parameters", str(params.size))
    matrix = params.reshape(-1, num_outputs)
    return FullyConnected(matrix[:num_inputs].copy(), matrix[num_inputs].copy() if has_bias else None)


def _read_relu(reader: ByteReader, version: str) -> Relu:
    if version == "relu_2":
        reader.bool("relu_ disabled")
    return Relu()


_LAYER_READERS = {
    "con_4": _read_conv, "con_5": _read_conv, "con_6": _read_conv,
    "affine_": _read_affine, "affine_2": _read_affine,
    "bn_con2": _read_bn_as_affine,
    "relu_": _read_relu, "relu_2": _read_relu,
    "max_pool_2": _read_pool, "avg_pool_2": _read_pool,
    "add_prev_": lambda reader, version: AddPrev(),
    "fc_2": _read_fc, "fc_3": _read_fc,
}  # fmt: skip


def _read_layer_details(reader: ByteReader) -> Layer:
    version = reader.expect_string(tuple(_LAYER_READERS), "a layer record name")
    layer = _LAYER_READERS[version](reader, version)
    # add_layer's own trailer: 3 bools and 3 tensors (x_grad, cached_output, params_grad).
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
        reader.bool(name)
    for name in ("x_grad", "cached_output", "params_grad"):
        reader.tensor(name)
    return layer


def _read_input(reader: ByteReader) -> InputLayer:
    version = reader.expect_string(
        ("input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2"), "an input layer name"
    )
    means = (reader.float("avg_red"), reader.float("avg_green"), reader.float("avg_blue"))
    means32 = tuple(float(np.float32(m)) for m in means)
    if version == "input_rgb_image_sized":
        return InputImageSized(means32, reader.uint("input rows"), reader.uint("input cols"))  # type: ignore[arg-type]
    if version == "input_rgb_image_pyramid2":
        padding, outer = reader.uint("pyramid_padding"), reader.uint("pyramid_outer_padding")
    else:
        padding, outer = 10, 11  # defaults of the v1 record (dlib/dnn/input.h)
    return InputImagePyramid(means32, padding, outer)  # type: ignore[arg-type]


def _read_loss_mmod(reader: ByteReader) -> LossMMOD:
    start = reader.offset
    version = reader.int("mmod_options version")
    if version not in (1, 2, 3, 4):
        raise reader.fail("mmod_options version 1..4", str(version), offset=start)
    if version == 1:
        windows = (DetectorWindow(reader.uint("detector width"), reader.uint("detector height")),)
    else:
        count = reader.uint("number of detector windows")
        found = []
        for _ in range(count):
            window_version = reader.int("detector window version")
            width, height = reader.uint("detector width"), reader.uint("detector height")
            label = reader.string("detector label") if window_version == 2 else ""
            found.append(DetectorWindow(width, height, label))
        windows = tuple(found)
    values = [reader.float(name) for name in (
        "loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold",
        "overlaps_nms iou", "overlaps_nms percent covered", "overlaps_ignore iou",
        "overlaps_ignore percent covered")]  # fmt: skip
    bbr = False
    if version >= 3:
        reader.raw(1, "assume_image_pyramid")
    if version >= 4:
        bbr = reader.bool("use_bounding_box_regression")
        reader.float("bbr_lambda")
    return LossMMOD(windows, *values, bbox_regression=bbr)


def _read_loss(reader: ByteReader) -> LossMMOD | LossMetric:
    reader.expect_int(1, "the network's loss layer version (1)")
    name = reader.expect_string(("loss_mmod_", "loss_metric_", "loss_metric_2"), "the loss layer name")
    if name == "loss_mmod_":
        return _read_loss_mmod(reader)
    if name == "loss_metric_":
        return LossMetric(0.1, 0.75)
    return LossMetric(reader.float("loss_metric margin"), reader.float("loss_metric dist_thresh"))


def parse_network(data: bytes, path: str = "<bytes>") -> DlibNetwork:
    """Parse any dlib DNN file of the layer types above into a `DlibNetwork` (layers outermost first)."""
    reader = ByteReader(data, path)
    if bytes(data[:3]) == b"BZh":
        raise reader.fail("an uncompressed dlib model", "a bzip2 file: decompress it first (bunzip2)")
    loss = _read_loss(reader)
    # Wrapper versions, outermost first: 2 = add_layer, 1 = tag/skip, 3 = the layer owning the input.
    kinds: list[int] = []
    while True:
        start = reader.offset
        version = reader.int("a layer wrapper version (1, 2 or 3)")
        if version not in (1, 2, 3):
            raise reader.fail("a layer wrapper version (1, 2 or 3)", str(version), offset=start)
        kinds.append(version)
        if version == 3:
            break
        if len(kinds) > 10_000:
            raise reader.fail("the input layer within 10000 layers")
    input_layer = _read_input(reader)
    layers: list[Layer | None] = [None] * len(kinds)
    offsets: list[int | None] = [None] * len(kinds)
    offsets[-1] = reader.offset
    innermost = _read_layer_details_owner(reader)
    layers[-1] = innermost
    for index in range(len(kinds) - 2, -1, -1):
        if kinds[index] == 1:
            layers[index] = TagOrSkip()
            continue
        offsets[index] = reader.offset
        layers[index] = _read_layer_details(reader)
    if not reader.at_end():
        raise reader.fail("the end of the file", f"{len(reader.data) - reader.offset} more bytes")
    return DlibNetwork(path, loss, tuple(layers), input_layer, tuple(offsets))  # type: ignore[arg-type]


def _read_layer_details_owner(reader: ByteReader) -> Layer:
    """The innermost add_layer (version 3): details, 3 bools, 3 tensors, sample_expansion_factor."""
    version = reader.expect_string(tuple(_LAYER_READERS), "a layer record name")
    layer = _LAYER_READERS[version](reader, version)
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
        reader.bool(name)
    for name in ("x_grad", "cached_output", "grad_final"):
        reader.tensor(name)
    reader.int("sample_expansion_factor")
    return layer


# ---------------------------------------------------------------------------------------------
# The two networks: the structure is not in the file, so it is checked here.
# ---------------------------------------------------------------------------------------------

# Layer kinds outermost first; "t" = tag/skip. Used to refuse a network of another architecture.
_DETECTOR_KINDS = ["Conv"] + ["Relu", "Affine", "Conv"] * 6
_BLOCK = ["Affine", "Conv", "Relu", "Affine", "Conv"]
_ARES = ["Relu", "AddPrev", *_BLOCK, "t"]
_ARES_DOWN = ["Relu", "AddPrev", "Pool", "t", "t", *_BLOCK, "t"]
_EMBEDDER_KINDS = (
    ["FullyConnected", "Pool"]
    + _ARES_DOWN + _ARES * 2 + _ARES_DOWN + _ARES * 2 + _ARES_DOWN + _ARES * 3 + _ARES_DOWN + _ARES * 3
    + ["Pool", "Relu", "Affine", "Conv"]
)  # fmt: skip


def _kind(layer: Layer) -> str:
    return "t" if isinstance(layer, TagOrSkip) else type(layer).__name__


def _check_structure(network: DlibNetwork, expected: list[str], what: str) -> None:
    found = [_kind(layer) for layer in network.layers]
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        offset = next((o for o in network.offsets[first:] if o is not None), 0) if network.offsets else 0
        raise DlibFormatError(
            network.path,
            offset or 0,
            f"the {what} architecture ({len(expected)} layers)",
            f"{len(found)} layers, differing at layer {first}",
        )



def read_network_file(path: str | Path) -> DlibNetwork:
    """A dlib network file, parsed (any loss and architecture)."""
    return parse_network(read_model_bytes(path), str(path))


def _read_typed_network(path: str | Path, loss: type, inputs: type, kinds: list[str], what: str) -> DlibNetwork:
    network = read_network_file(path)
    if not isinstance(network.loss, loss) or not isinstance(network.input, inputs):
        raise DlibFormatError(network.path, 2, what, f"a network with {type(network.loss).__name__}")
    _check_structure(network, kinds, what)
    return network


def read_mmod_detector(path: str | Path) -> DlibNetwork:
    """mmod_human_face_detector.dat: loss_mmod, 7 convs with bn_con2, a tiled-pyramid input."""
    return _read_typed_network(path, LossMMOD, InputImagePyramid, _DETECTOR_KINDS,
                               "an MMOD detector (loss_mmod_ + image pyramid input)")  # fmt: skip


def read_face_embedder(path: str | Path) -> DlibNetwork:
    """dlib_face_recognition_resnet_model_v1.dat: loss_metric, ResNet-29, 150x150 input."""
    return _read_typed_network(path, LossMetric, InputImageSized, _EMBEDDER_KINDS,
                               "a face embedder (loss_metric_ + 150x150 input)")  # fmt: skip
