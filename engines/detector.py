"""dlib's MMOD CNN face detector: tiled pyramid -> ONNX network -> score map -> rectangles -> NMS.

The numpy geometry lives in `pyramid.py`; this module holds the session and the model's own
parameters (means, window, NMS thresholds), read from the .dat file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import pyramid
from .backend import make_session
from .dlib_format import InputImagePyramid, LossMMOD, read_mmod_detector
from .onnx_cache import cached_onnx
from .runtime import InferenceSession

if TYPE_CHECKING:
    from ..pipeline.config import EngineConfig


@dataclass(frozen=True)
class DetectorParams:
    """What the decoding needs from the model file."""

    means: tuple[float, float, float]
    padding: int
    outer_padding: int
    window: tuple[int, int]  # (width, height)
    nms_iou: float
    nms_percent_covered: float

    @classmethod
    def from_model(cls, path: str | Path) -> DetectorParams:
        network = read_mmod_detector(path)
        loss, inputs = network.loss, network.input
        assert isinstance(loss, LossMMOD) and isinstance(inputs, InputImagePyramid)
        if len(loss.windows) != 1 or loss.bbox_regression:
            raise ValueError(f"{path}: only single-window MMOD detectors without box regression are supported")
        window = loss.windows[0]
        return cls(inputs.means, inputs.padding, inputs.outer_padding, (window.width, window.height),
                   loss.nms_iou_threshold, loss.nms_percent_covered_threshold)  # fmt: skip


class FaceDetector:
    """Finds faces as dlib's `cnn_face_detection_model_v1(img, upsample_num_times)` does."""

    def __init__(self, session: InferenceSession, params: DetectorParams, upsample: int = 1,
                 threshold: float = 0.0) -> None:  # fmt: skip
        self.session = session
        self.params = params
        self.upsample = int(upsample)
        self.threshold = float(threshold)

    @classmethod
    def from_file(cls, model_path: str | Path, cache_dir: str | Path | None = None, threads: int = 0, upsample: int = 1,
                  threshold: float = 0.0, engine: EngineConfig | None = None) -> FaceDetector:  # fmt: skip
        """`engine`: the config's ``engine:`` section (backend, precision, ...); None = ONNX Runtime."""
        params = DetectorParams.from_model(model_path)
        session = make_session(cached_onnx(model_path, "detector", cache_dir), "detector", engine, cache_dir, threads)
        return cls(session, params, upsample=upsample, threshold=threshold)

    def close(self) -> None:
        """Release the inference session (on a GPU: its device memory and CUDA context). Safe to call twice."""
        self.session.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: np.ndarray, upsample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One (H,W,3) uint8 RGB or (H,W) grey image -> boxes (K,4) int64 [l,t,r,b] inclusive, scores (K,)."""
        return self.detect_batch([image], upsample)[0]

    def detect_batch(self, images: Sequence[np.ndarray],
                     upsample: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """Several images of one size in a single network call (frames of one stream)."""
        times = self.upsample if upsample is None else int(upsample)
        if len(images) == 0:
            return []
        for image in images:
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
                raise ValueError(f"expected (H,W,3) RGB or (H,W) grey uint8 images, got {image.shape} {image.dtype}")
        p = self.params
        height, width = images[0].shape[:2]
        for _ in range(times):
            height, width = pyramid.pyramid_up_size(height, width)
        rows, cols, rects = pyramid.tiled_pyramid_layout(height, width, p.padding, p.outer_padding)
        if min(height, width) < 1 or pyramid.is_degenerate_layout(rows, cols, rects):
            return [_no_faces() for _ in images]  # too small for dlib's pyramid: no face can be there
        tensor, level_rects = pyramid.build_input_tensor(list(images), times, p.means, p.padding, p.outer_padding)
        if min(pyramid.detector_output_shape(*tensor.shape[2:])) < 1:
            return [_no_faces() for _ in images]  # too small for the network, as dlib finds nothing
        scores = self.session.run(tensor)
        return pyramid.detections_from_batch_output(
            scores, level_rects, times, threshold=self.threshold, window=p.window,
            iou_thresh=p.nms_iou, percent_covered_thresh=p.nms_percent_covered,
        )  # fmt: skip


def _no_faces() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.int64), np.zeros(0, np.float64)
