"""dlib's MMOD CNN face detector: tiled pyramid -> ONNX network -> score map -> rectangles -> NMS.

The numpy geometry lives in `pyramid.py` and `pyramid_windows.py`; this module holds the session,
the model's own parameters (means, window, NMS thresholds, read from the .dat file) and three ways
of running the network, all decoded and NMS'd exactly as dlib does:

* **Whole pyramid** (`detect`, `detect_batch`): one network call over dlib's tiled pyramid when it
  has at most `max_tile_pixels` pixels, else aligned overlapping tiles (`pyramid_windows`) whose
  pixels and scores are bit-identical to the whole tensor's, so peak memory stays bounded. Tiles are
  sliced from the whole input tensor while it has at most TENSOR_TILES x `max_tile_pixels` pixels
  (a 1280x720 frame at upsample 1: 13.5 MP); beyond, each tile's pixels are computed on their own
  (`pyramid_windows.fill_window`), which bounds memory for any size but costs resizing chains: at
  720p it took 2.5 s instead of 1.3 s.
* **Regions** (`detect_regions`): for each predicted box, windows of the tensor at the levels where
  a face of its size is found (+- `margin_levels`), covering every cell whose 80x80 box centre lies
  in the box enlarged by `pad`. Window pixels are the full frame's pixels (level windows computed
  from the image with dlib's arithmetic), window offsets are multiples of the stride 8 and only
  cells whose whole receptive field (188 px) lies in the window are used, so every score is the
  full frame's score and every candidate the full frame's candidate.
* **Scale limits** (`min_face_size`, `max_face_size`): windows over the levels that can give faces
  in range, one level either side; after NMS, faces outside the range are dropped.

Where region (and scale-limited) results can differ from full frame, and what prevents it:

* A face whose box centre lies outside the enlarged region, or at a level outside the margin, is
  not looked for: the region must be near the face (a tracker's prediction; `pad` = 0.25 of the box
  each side and one level, a factor 1.2 in size, either side absorb motion and scale change).
* A face cut by the window's edge cannot happen: cells are only used when their receptive field is
  inside the window, or the window's edge is the tensor's own edge.
* NMS sees only the candidates inside the windows: a full-frame detection suppressed by a stronger
  overlapping candidate outside every window is kept here (an extra box, never a changed one), and
  a chain of suppressions could in principle end differently. Overlapping candidates are the same
  face at neighbouring positions and scales, which the spatial pad and the level margin include;
  the tests find no difference on the golden images, the golden video frames or generated frames.
* Scale limits: tensor cells far from every kept level (in the empty parts of dlib's layout) are
  not computed; they see only zero padding, and their scores are below the threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FacestreamError
from . import pyramid
from . import pyramid_windows as pw
from .backend import make_session
from .dlib_format import InputImagePyramid, LossMMOD, read_mmod_detector
from .onnx_cache import cached_onnx
from .runtime import InferenceSession

if TYPE_CHECKING:
    from ..pipeline.config import DetectorConfig, EngineConfig

# Input-tensor pixels of one network call: ONNX Runtime's peak is ~46 bytes per pixel, so ~190 MB.
DEFAULT_MAX_TILE_PIXELS = 4_000_000
TENSOR_TILES = 4  # the whole input tensor is built (tiles sliced from it) up to this many tiles' pixels


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


class DetectionStoppedError(FacestreamError):
    """A detection given a `stop` callback that said so before one of its network calls (a background scan
    whose picture is gone: a live stream cut to another scene)."""


class FaceDetector:
    """Finds faces as dlib's `cnn_face_detection_model_v1(img, upsample_num_times)` does.

    `max_tile_pixels` bounds the input-tensor pixels of one network call: a larger tiled pyramid is
    run in aligned, overlapping windows with identical results (see `pyramid_windows`), so peak
    memory does not grow with the image (the whole input tensor is built only up to TENSOR_TILES
    tiles' worth of pixels, 192 MB with the default). `min_face_size` / `max_face_size` (px, 0 = no limit):
    see `scale_levels`.
    """

    def __init__(self, session: InferenceSession, params: DetectorParams, upsample: int = 1,
                 threshold: float = 0.0, max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS,
                 min_face_size: float = 0.0, max_face_size: float = 0.0) -> None:  # fmt: skip
        self.session = session
        self.params = params
        self.min_face_size = float(min_face_size)
        self.max_face_size = float(max_face_size)
        self.upsample = upsample_for_min_face(self.min_face_size) if self.min_face_size > 0 else int(upsample)
        self.threshold = float(threshold)
        self.max_tile_pixels = max(int(max_tile_pixels), pw.MIN_TILE * pw.MIN_TILE)

    @classmethod
    def from_file(cls, model_path: str | Path, cache_dir: str | Path | None = None, threads: int = 0,
                  upsample: int = 1, threshold: float = 0.0, engine: EngineConfig | None = None,
                  **options: float) -> FaceDetector:  # fmt: skip
        """`engine`: the config's ``engine:`` section (backend, precision, ...); None = ONNX Runtime.
        `options`: max_tile_pixels, min_face_size, max_face_size (the config's ``detector:`` keys)."""
        params = DetectorParams.from_model(model_path)
        session = make_session(cached_onnx(model_path, "detector", cache_dir), "detector", engine, cache_dir, threads)
        return cls(session, params, upsample=upsample, threshold=threshold, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the inference session (on a GPU: its device memory and CUDA context). Safe to call twice."""
        self.session.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: np.ndarray, upsample: int | None = None,
               stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """One (H,W,3) uint8 RGB or (H,W) grey image -> boxes (K,4) int64 [l,t,r,b] inclusive, scores (K,).
        `stop`: asked before each network call (one per tile); True raises DetectionStoppedError."""
        return self.detect_batch([image], upsample, stop)[0]

    def detect_batch(self, images: Sequence[np.ndarray], upsample: int | None = None,
                     stop: Callable[[], bool] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """Several images of one size in a single network call (frames of one stream)."""
        times = self.upsample if upsample is None else int(upsample)
        if len(images) == 0:
            return []
        images = [_checked(image) for image in images]
        if len({image.shape[:2] for image in images}) != 1:
            raise ValueError("all images in a batch must have the same size")
        geom = self._geometry(images[0], times)
        if geom is None:
            return [_no_faces() for _ in images]  # too small for dlib's pyramid or the network: none, as dlib
        levels = self.scale_levels(geom)
        rows, cols = geom.shape
        if levels is None and rows * cols <= self.max_tile_pixels:
            p = self.params
            tensor, _ = pyramid.build_input_tensor(list(images), times, p.means, p.padding, p.outer_padding)
            _check_stop(stop)
            return self._decode(self.session.run(tensor)[:, 0], geom)
        if levels is None:
            windows: list[pw.Window] = [(0, rows, 0, cols)]
        else:
            windows = [self._level_window(geom, k) for k in levels]
        if self._whole_tensor_fits(geom, len(images)):  # build it whole, run the windows on slices
            p = self.params
            tensor, _ = pyramid.build_input_tensor(list(images), times, p.means, p.padding, p.outer_padding)
            return self._decode(self._run_windows(images, geom, windows, None, tensor, stop), geom)
        cached = pw.cache_small_levels(images, geom, np.asarray(self.params.means, np.float32),
                                       self.max_tile_pixels // cols)  # fmt: skip
        return self._decode(self._run_windows(images, geom, windows, cached, None, stop), geom)

    def detect_regions(self, image: np.ndarray, regions: np.ndarray, upsample: int | None = None,
                       margin_levels: int = 1, pad: float = 0.25) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Faces near predicted boxes, as full-frame `detect` finds them (see `pyramid_windows` for when
        they can differ). `regions`: (R,4) float [l,t,r,b] in image coordinates. For each region the
        network runs on windows around it at the pyramid levels where a face of its size is
        detected, `margin_levels` levels either side; cells whose box centre lies within the region
        enlarged by `pad` x its size on each side are covered. Returns boxes (K,4) int64 and scores
        (K,) like `detect` (one NMS over all regions; scale limits apply)."""
        image = _checked(image)
        times = self.upsample if upsample is None else int(upsample)
        boxes = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
        if not np.isfinite(boxes).all():
            raise ValueError("regions must be finite [l, t, r, b] boxes")
        geom = self._geometry(image, times)
        if geom is None or len(boxes) == 0:
            return _no_faces()
        allowed = self.scale_levels(geom)
        windows, chain_pixels = [], 0.0
        for box in boxes:
            for k in region_levels(box, times, len(geom.rects), margin_levels):
                if allowed is None or k in allowed:
                    window = self._region_window(geom, box, k, pad)
                    windows.append(window)
                    # level k's window is resized from windows of levels k-1 ... 0, each 1.2x larger
                    chain_pixels += (window[1] - window[0]) * (window[3] - window[2]) * (1.44 ** (k + 1) - 1) / 0.44
        windows = pw.merge_windows(windows)
        rows, cols = geom.shape
        if chain_pixels > rows * cols / 2 and self._whole_tensor_fits(geom, 1):
            # the windows read most of the pyramid (large faces, several faces): build it whole, once
            p = self.params
            tensor, _ = pyramid.build_input_tensor([image], times, p.means, p.padding, p.outer_padding)
            return self._decode(self._run_windows([image], geom, windows, None, tensor), geom)[0]
        return self._decode(self._run_windows([image], geom, windows, None), geom)[0]

    def _whole_tensor_fits(self, geom: pw.PyramidGeometry, images: int) -> bool:
        """Whether the whole input tensor of `images` frames stays within TENSOR_TILES tiles' pixels."""
        rows, cols = geom.shape
        return rows * cols * images <= TENSOR_TILES * self.max_tile_pixels

    def scale_levels(self, geom: pw.PyramidGeometry) -> list[int] | None:
        """Pyramid levels the network runs on under `min_face_size` / `max_face_size` (None: all).

        Level k finds 80x80 windows of the level, i.e. faces ~80 * 1.2^k / 2^upsample px wide in
        the image. Kept: the levels whose faces meet the range (give or take 10% and 2 px for
        rounding) and one level either side, whose candidates take part in NMS as in full frame
        (a face is mostly suppressed by itself at the next scale); after NMS, faces are kept by
        their exact box width."""
        if self.min_face_size <= 0 and self.max_face_size <= 0:
            return None
        lo, hi = self.min_face_size, self.max_face_size if self.max_face_size > 0 else np.inf
        widths = self.params.window[0] * 1.2 ** np.arange(len(geom.rects)) / 2.0**geom.times
        keep = (widths * 1.1 * 1.2 + 2 >= lo) & (widths / 1.1 / 1.2 - 2 <= hi)
        return [int(k) for k in np.flatnonzero(keep)]

    # ----------------------------------------------------------------------------------------------

    def _geometry(self, image: np.ndarray, times: int) -> pw.PyramidGeometry | None:
        p = self.params
        geom = pw.PyramidGeometry(image.shape[:2], times, p.padding, p.outer_padding)
        height, width = geom.up_sizes[-1]
        rows, cols = geom.shape
        if min(height, width) < 1 or pyramid.is_degenerate_layout(rows, cols, geom.rects):
            return None
        if min(pyramid.detector_output_shape(rows, cols)) < 1:
            return None
        return geom

    def _level_window(self, geom: pw.PyramidGeometry, k: int) -> pw.Window:
        """Tensor window whose exact cells include every cell centred on level k (or its padding)."""
        l, t, r, b = (int(v) for v in geom.rects[k])
        margin = self.params.padding + pw.STRIDE
        return self._cells_window(geom, (t - margin, b + margin, l - margin, r + margin))

    def _region_window(self, geom: pw.PyramidGeometry, box: np.ndarray, k: int, pad: float) -> pw.Window:
        """Tensor window for the cells at level k whose centres fall in `box` (image coords) enlarged."""
        corners = box.reshape(2, 2).copy()
        for _ in range(geom.times):
            corners = (corners + np.array([1.25, 0.75])) * 2.0  # inverse of rect_down
        for _ in range(k):
            corners = (corners - 0.3) / 1.2  # inverse of tiled_pyramid_to_image's p*1.2 + 0.3
        corners = corners + geom.rects[k][:2]
        size = corners[1] - corners[0]
        grow = pad * size + pw.STRIDE
        x0, y0 = corners[0] - grow
        x1, y1 = corners[1] + grow
        return self._cells_window(geom, (y0, y1, x0, x1))

    @staticmethod
    def _cells_window(geom: pw.PyramidGeometry, centres: tuple[float, ...]) -> pw.Window:
        """Aligned tensor window computing exactly the cells whose centres (8o+14) are in `centres`
        = (y0, y1, x0, x1) (inclusive bounds in tensor pixels)."""
        rows, cols = geom.shape
        n_r, n_c = pyramid.detector_output_shape(rows, cols)
        y0, y1, x0, x1 = centres
        o_r = (int(np.clip(np.ceil((y0 - 14) / 8), 0, n_r)), int(np.clip(np.floor((y1 - 14) / 8) + 1, 0, n_r)))
        o_c = (int(np.clip(np.ceil((x0 - 14) / 8), 0, n_c)), int(np.clip(np.floor((x1 - 14) / 8) + 1, 0, n_c)))
        if o_r[1] <= o_r[0] or o_c[1] <= o_c[0]:
            return (0, 0, 0, 0)
        r0, r1 = pw.input_span(*o_r, rows)
        c0, c1 = pw.input_span(*o_c, cols)
        return r0, r1, c0, c1

    def _run_windows(self, images: list[np.ndarray], geom: pw.PyramidGeometry, windows: list[pw.Window],
                     cached: dict[int, np.ndarray] | None, tensor: np.ndarray | None = None,
                     stop: Callable[[], bool] | None = None) -> np.ndarray:  # fmt: skip
        """Score maps (N,Ho,Wo) with the exact scores of every cell some window computes, -inf elsewhere.
        Windows larger than `max_tile_pixels` are split into aligned overlapping tiles. Window pixels
        are sliced from `tensor` (the whole input tensor) when given, else computed (`fill_window`)."""
        rows, cols = geom.shape
        n_r, n_c = pyramid.detector_output_shape(rows, cols)
        scores = np.full((len(images), n_r, n_c), -np.inf, dtype=np.float32)
        means = np.asarray(self.params.means, np.float32)
        budget = self.max_tile_pixels
        for r0, r1, c0, c1 in windows:
            if r1 <= r0 or c1 <= c0:
                continue
            # Sub-windows of a window: its own edges act as the tensor's edges except at the real ones.
            tile_w = c1 - c0 if (c1 - c0) * pw.MIN_TILE <= budget else budget // pw.MIN_TILE
            tile_h = max(pw.MIN_TILE, budget // min(tile_w, c1 - c0))
            for sr0, sr1, _, _ in pw.tiles_1d(r1 - r0, tile_h):
                for sc0, sc1, _, _ in pw.tiles_1d(c1 - c0, tile_w):
                    window = (r0 + sr0, r0 + sr1, c0 + sc0, c0 + sc1)
                    orow = pw.window_outputs(window[0], window[1], rows)
                    ocol = pw.window_outputs(window[2], window[3], cols)
                    if orow[1] <= orow[0] or ocol[1] <= ocol[0]:
                        continue
                    if tensor is not None:
                        part = tensor[:, :, window[0] : window[1], window[2] : window[3]]
                    else:
                        part = pw.fill_window(images, geom, window, means, cached)
                    _check_stop(stop)
                    out = self.session.run(part)[:, 0]
                    jr, jc = window[0] // pw.STRIDE, window[2] // pw.STRIDE
                    scores[:, orow[0] : orow[1], ocol[0] : ocol[1]] = out[
                        :, orow[0] - jr : orow[1] - jr, ocol[0] - jc : ocol[1] - jc
                    ]
        return scores

    def _decode(self, score_maps: np.ndarray, geom: pw.PyramidGeometry) -> list[tuple[np.ndarray, np.ndarray]]:
        """Score maps (N,Ho,Wo) -> per image (boxes, scores): candidates, NMS, rect_down, scale limits."""
        p = self.params
        results = []
        for score_map in score_maps:
            cand, sc = pyramid.output_to_image_rects(score_map, geom.rects, self.threshold, p.window)
            keep = pyramid.nms(cand, sc, p.nms_iou, p.nms_percent_covered)
            boxes, scores = pyramid.map_rects_from_upsampled(cand[keep], geom.times), sc[keep]
            if self.min_face_size > 0 or self.max_face_size > 0:
                width = boxes[:, 2] - boxes[:, 0] + 1
                hi = self.max_face_size if self.max_face_size > 0 else np.inf
                inside = (width >= self.min_face_size) & (width <= hi)
                boxes, scores = boxes[inside], scores[inside]
            results.append((boxes, scores))
        return results


def detector_options(section: DetectorConfig) -> dict[str, float]:
    """The `FaceDetector` options held in the config's typed ``detector:`` section."""
    keys = ("max_tile_pixels", "min_face_size", "max_face_size")
    return {key: float(getattr(section, key)) for key in keys}


def upsample_for_min_face(min_face_size: float, window: int = pyramid.WINDOW[0]) -> int:
    """The fewest ``pyramid_up`` steps that let faces of ``min_face_size`` px be found: dlib's 80x80
    window finds faces from ~80 px at upsample 0, ~40 px at 1, ~20 px at 2 (at most 3)."""
    times = 0
    while times < 3 and window / 2.0**times > min_face_size:
        times += 1
    return times


def region_levels(box: np.ndarray, times: int, n_levels: int, margin: int = 1,
                  window: int = pyramid.WINDOW[0]) -> range:  # fmt: skip
    """Pyramid levels where a face with this box (image coords [l,t,r,b]) is detected: the level whose
    80x80 window is nearest its size after `times` upsamplings (faces ~80*1.2^k px), +- `margin`
    (one level is a factor 1.2 in size)."""
    size = max(1.0, float(np.mean(box[2:] - box[:2]) + 1)) * 2.0**times
    k = int(np.round(np.log(size / window) / np.log(1.2)))
    return range(max(0, k - margin), min(n_levels, k + margin + 1))


def _checked(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected (H,W,3) RGB or (H,W) grey uint8 images, got {image.shape} {image.dtype}")
    return image


def _check_stop(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise DetectionStoppedError("detection stopped: its stop callback said so")


def _no_faces() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.int64), np.zeros(0, np.float64)
