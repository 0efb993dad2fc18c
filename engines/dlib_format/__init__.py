"""Read dlib's serialized model files into numpy arrays and small typed layer descriptions.

A reader, not a dlib port: it decodes the byte format of `dlib/serialize.h` and the DNN
containers of `dlib/dnn/core.h` (see docs/dlib-model-formats.md, sections 1-3, 7-9) and
checks what it reads. Nothing here runs a model. This package's interface is what it exports here;
its modules: `serialize` (the byte primitives, the error), `network` (DNN files: the detector and the
embedder), `shape_predictor` (the landmark models).

Every problem raises `DlibFormatError`, which names the file, the byte offset and what was
expected there, so a truncated, swapped or foreign file is reported before any inference runs.
"""

from .network import (
    AddPrev,
    Affine,
    Conv,
    DetectorWindow,
    DlibNetwork,
    FullyConnected,
    InputImagePyramid,
    InputImageSized,
    InputLayer,
    Layer,
    LossMetric,
    LossMMOD,
    Pool,
    Relu,
    TagOrSkip,
    parse_network,
    read_face_embedder,
    read_mmod_detector,
    read_network_file,
)
from .serialize import ByteReader, DlibFormatError, float_details_bytes, pack_int, read_model_bytes
from .shape_predictor import ShapePredictorModel, parse_shape_predictor, read_shape_predictor

__all__ = [
    "AddPrev",
    "Affine",
    "ByteReader",
    "Conv",
    "DetectorWindow",
    "DlibFormatError",
    "DlibNetwork",
    "FullyConnected",
    "InputImagePyramid",
    "InputImageSized",
    "InputLayer",
    "Layer",
    "LossMMOD",
    "LossMetric",
    "Pool",
    "Relu",
    "ShapePredictorModel",
    "TagOrSkip",
    "float_details_bytes",
    "pack_int",
    "parse_network",
    "parse_shape_predictor",
    "read_face_embedder",
    "read_mmod_detector",
    "read_model_bytes",
    "read_network_file",
    "read_shape_predictor",
]
