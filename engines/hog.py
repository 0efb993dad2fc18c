"""dlib's HOG frontal-face detector (``dlib.get_frontal_face_detector()``) in numpy.

Same rectangles, scores, filter indices and order as dlib-bin 20.0.1's
``detector.run(img, upsample, adjust_threshold)`` (spec: ``dlib-hog-and-68.md`` §1-§8):

* the detector record is dlib's own serialization of the embedded detector, shipped as
  ``data/dlib_frontal_face_detector.svm`` (provenance, licence and sha256 beside it; checked at
  load), parsed here: five 10x10x31 linear filters, their thresholds and the NMS overlap test;
* ``pyramid_up`` upsampling, then a ``pyramid_down<6>`` image pyramid (dlib's bilinear resize,
  rounded for grey and truncated for RGB);
* fHOG features per level (:mod:`facestream.engines.fhog`);
* every filter as its sum of rank-1 (separable) terms from an SVD, each term evaluated with
  dlib's float32 summation order, so scores are bit-identical;
* threshold ``>= b + adjust``, window -> image mapping, one sort and a greedy NMS over all filters.

Usage::

    det = HogFaceDetector.default()
    boxes, scores, weight_index = det.detect(rgb, upsample=1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from facestream.engines import pyramid
from facestream.engines.dlib_format import ByteReader, DlibFormatError
from facestream.engines.fhog import CELL_SIZE, NUM_FEATURES, fhog_features

__all__ = [
    "DETECTOR_FILE",
    "DETECTOR_SHA256",
    "HogFaceDetector",
    "HogModel",
    "parse_hog_detector",
    "pyramid_levels",
]

DETECTOR_FILE = Path(__file__).parent / "data" / "dlib_frontal_face_detector.svm"
DETECTOR_SHA256 = "f3f7aa833fb4a14a46fc48689f45b98d85ef72d6dfaf8bdc012b7d3c522a5426"
MAX_UPSAMPLE = 4  # each step doubles both sides: bounds what a caller can make us allocate
_F32 = np.float32
_FILTER = 10  # filter rows = columns (80x80 window, 8-pixel cells)
_HALF = _FILTER // 2  # interior starts here (dlib: len/2) ...
_TAIL = (_FILTER - 1) // 2  # ... and ends this many cells before the edge


@dataclass(frozen=True)
class HogModel:
    """A parsed ``object_detector<scan_fhog_pyramid<pyramid_down<6>>>`` record."""

    filters: np.ndarray  # (K, 31, 10, 10) float64, plane-major like dlib's weight vector
    thresholds: np.ndarray  # (K,) float64: b, the last weight of each filter
    iou_thresh: float
    percent_covered_thresh: float
    min_pyramid_layer: tuple[int, int]  # (width, height)
    max_pyramid_levels: int


def parse_hog_detector(data: bytes, path: str = "<bytes>") -> HogModel:
    """Parse dlib's serialized frontal-face detector (spec §2); raises DlibFormatError on anything else."""
    r = ByteReader(data, path)
    version = r.int("object_detector version")
    if version not in (1, 2):
        raise r.fail("object_detector version 1 or 2", str(version))
    r.expect_int(1, "scan_fhog_pyramid version")
    r.expect_int(0, "feature-array max_size")
    r.expect_int(0, "feature-array size")
    r.expect_int(CELL_SIZE, "cell_size")
    r.expect_int(0, "padding")
    r.expect_int(80, "window width")
    r.expect_int(80, "window height")
    max_levels = r.uint("max_pyramid_levels")
    min_w, min_h = r.uint("min pyramid layer width"), r.uint("min pyramid layer height")
    r.float("nuclear norm regularization strength")
    r.expect_int(_FILTER * _FILTER * NUM_FEATURES, "num_dimensions")

    def overlap() -> tuple[float, float]:
        return r.float("iou threshold"), r.float("percent covered threshold")

    def weights() -> list[np.ndarray]:
        count = r.uint("number of filters")
        if not 1 <= count <= 64:
            raise r.fail("1 to 64 filters", str(count))
        vectors = []
        for _ in range(count):
            w = r.float_matrix_column("filter weights")
            if len(w) != _FILTER * _FILTER * NUM_FEATURES + 1:
                raise r.fail("3101 filter weights", str(len(w)))
            vectors.append(w)
        return vectors

    if version == 1:
        ws = weights()
        iou, covered = overlap()
    else:
        iou, covered = overlap()
        ws = weights()
    if not r.at_end():
        raise r.fail("end of the detector record", f"{len(data) - r.offset} more bytes")
    w = np.stack(ws)
    return HogModel(
        filters=w[:, :-1].reshape(-1, NUM_FEATURES, _FILTER, _FILTER),
        thresholds=w[:, -1].copy(),
        iou_thresh=iou,
        percent_covered_thresh=covered,
        min_pyramid_layer=(min_w, min_h),
        max_pyramid_levels=max_levels,
    )


@dataclass(frozen=True)
class _Term:
    plane: int
    row: np.ndarray  # (10,) float32 horizontal taps
    col: np.ndarray  # (10,) float32 vertical taps


def _separable_terms(filt: np.ndarray) -> list[_Term]:
    """``build_fhog_filterbank``: each plane's SVD, singular values below max(1e-4, 1e-3·max) dropped,
    taps ``f32(u·√s)``, ``f32(v·√s)`` in descending s (spec §5). Sign choices cancel exactly."""
    terms = []
    for plane in range(filt.shape[0]):
        u, s, vt = np.linalg.svd(filt[plane])
        keep = s >= max(1e-4, 1e-3 * s.max()) if s.size else s
        for j in np.flatnonzero(keep):
            root = np.sqrt(s[j])
            terms.append(_Term(plane, (vt[j] * root).astype(_F32), (u[:, j] * root).astype(_F32)))
    return terms


def _simd_split(n_out: int) -> int:
    """Columns handled 8 at a time by the SIMD loop of the separable filter (the rest is the tail)."""
    return 8 * (n_out // 8)  # blocks start at 5, 13, ... while start < last - 7


def _taps_sum(prods: list[np.ndarray], n_simd: int) -> np.ndarray:
    """Sum 10 float32 tap products in dlib's order: SIMD columns ``A + (B + C)`` with A = taps 0,3,6,9,
    B = 1,4,7, C = 2,5,8; tail columns one accumulator over taps 0..9. Columns are the last axis."""
    out = np.empty_like(prods[0])
    s, t = slice(0, n_simd), slice(n_simd, None)
    a = ((prods[0][..., s] + prods[3][..., s]) + prods[6][..., s]) + prods[9][..., s]
    b = (prods[1][..., s] + prods[4][..., s]) + prods[7][..., s]
    c = (prods[2][..., s] + prods[5][..., s]) + prods[8][..., s]
    out[..., s] = a + (b + c)
    acc = prods[0][..., t].copy()
    for p in prods[1:]:
        acc += p[..., t]
    out[..., t] = acc
    return out


class HogFaceDetector:
    """dlib's frontal-face HOG detector: ``detect`` returns what ``run(img, upsample, adjust)`` does."""

    def __init__(self, model: HogModel) -> None:
        self.model = model
        self._terms = [_separable_terms(f) for f in model.filters]
        # Per plane: (filter index, row taps, col taps) in the filter's own term order.
        self._by_plane: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(NUM_FEATURES)]
        for k, terms in enumerate(self._terms):
            for term in terms:
                self._by_plane[term.plane].append((k, term.row, term.col))

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<bytes>") -> HogFaceDetector:
        """A detector from a serialized record (e.g. dlib's ``get_frontal_face_detector().save()``)."""
        return cls(parse_hog_detector(data, path))

    @classmethod
    def default(cls) -> HogFaceDetector:
        """The detector embedded in dlib, from the shipped record (sha256-checked, parsed once)."""
        return _default_detector()

    # -- scanning -------------------------------------------------------------------------------

    def _saliency(self, feats: np.ndarray) -> np.ndarray:
        """Per filter, the float32 saliency map over the interior cells: ``(K, P-9, Q-9)``."""
        _, P, Q = feats.shape
        n_r, n_c = P - _FILTER + 1, Q - _FILTER + 1
        K = len(self._terms)
        sal = np.zeros((K, n_r, n_c), dtype=_F32)
        started = np.zeros(K, dtype=bool)
        n_simd = _simd_split(n_c)
        for plane in range(NUM_FEATURES):
            entries = self._by_plane[plane]
            if not entries:
                continue
            F = feats[plane]
            rows = np.stack([e[1] for e in entries])  # (T, 10)
            cols = np.stack([e[2] for e in entries])
            scratch = _taps_sum([F[None, :, n : n + n_c] * rows[:, n, None, None] for n in range(_FILTER)], n_simd)
            term = _taps_sum([scratch[:, m : m + n_r, :] * cols[:, m, None, None] for m in range(_FILTER)], n_simd)
            for i, (k, _, _) in enumerate(entries):
                if started[k]:
                    sal[k] += term[i]
                else:
                    sal[k] = term[i]
                    started[k] = True
        return sal

    def detect(
        self, image: np.ndarray, upsample: int = 0, adjust_threshold: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in one image, as dlib's ``run(image, upsample, adjust_threshold)``.

        ``image``: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8 grey. Returns ``boxes`` ``(N, 4)`` int64
        ``[left, top, right, bottom]`` (inclusive, not clipped to the image), ``scores`` ``(N,)`` float64
        (window score minus the filter's threshold) and ``weight_index`` ``(N,)`` int64 (which filter:
        0 front, 1 left looking, 2 right looking, 3 front rotated left, 4 front rotated right),
        best first.
        """
        img = _check_image(image)
        if not 0 <= int(upsample) <= MAX_UPSAMPLE:
            raise ValueError(f"upsample must be 0..{MAX_UPSAMPLE}, got {upsample}")
        upsample = int(upsample)
        img = _upsample(img, upsample)
        m = self.model
        levels = pyramid_levels(img, m.min_pyramid_layer, m.max_pyramid_levels)
        rects, scores, which = [], [], []
        thresholds = m.thresholds + float(adjust_threshold)
        for level, level_img in enumerate(levels):
            feats = fhog_features(level_img)
            if feats.shape[1] < _FILTER or feats.shape[2] < _FILTER:
                continue
            sal = self._saliency(feats)
            for k in range(len(thresholds)):
                rr, cc = np.nonzero(sal[k].astype(np.float64) >= thresholds[k])
                if rr.size == 0:
                    continue
                rects.append(_window_rects(rr + _HALF, cc + _HALF, level))
                scores.append(sal[k][rr, cc].astype(np.float64))
                which.append(np.full(rr.size, k, dtype=np.int64))
        if not rects:
            return np.zeros((0, 4), np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64)
        boxes = np.concatenate(rects)
        raw = np.concatenate(scores)
        index = np.concatenate(which)
        # Per filter: sort by score; then all filters by confidence (score - b), then one NMS.
        order = np.lexsort((-raw, index))
        boxes, raw, index = boxes[order], raw[order], index[order]
        conf = raw - m.thresholds[index]
        keep = pyramid.nms(boxes, conf, m.iou_thresh, m.percent_covered_thresh)
        boxes, conf, index = boxes[keep], conf[keep], index[keep]
        if upsample:
            boxes = pyramid.map_rects_from_upsampled(boxes, upsample)
        return boxes, conf, index

    def detect_batch(
        self, images: Sequence[np.ndarray], upsample: int = 0, adjust_threshold: float = 0.0
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``detect`` on each image (sizes may differ); one result tuple per image."""
        return [self.detect(image, upsample, adjust_threshold) for image in images]


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected an (H,W,3) RGB or (H,W) grey uint8 image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img)


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib's bilinear ``resize_image`` for uint8 RGB (truncates) or uint8 grey (SIMD columns round,
    tail columns truncate)."""
    if img.ndim == 3:
        return pyramid.resize_bilinear_rgb_u8(img, out_h, out_w)
    if out_h * out_w == 0 or img.size == 0:
        return np.zeros((out_h, out_w), np.uint8)
    v = pyramid.resize_bilinear_f32(img.astype(_F32), out_h, out_w)
    n_simd = pyramid._col_params(img.shape[1], out_w)[0]
    out = np.empty((out_h, out_w), np.uint8)
    out[:, :n_simd] = np.trunc(v[:, :n_simd] + _F32(0.5)).astype(np.uint8)
    out[:, n_simd:] = np.trunc(np.clip(v[:, n_simd:], 0, 255)).astype(np.uint8)
    return out


def _upsample(img: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        img = _resize(img, *pyramid.pyramid_up_size(*img.shape[:2]))
    return img


def pyramid_levels(img: np.ndarray, min_layer: tuple[int, int] = (64, 64), max_levels: int = 1000) -> list[np.ndarray]:
    """The scanned ``pyramid_down<6>`` levels (spec §3.2): the count comes from ``rect_down`` geometry
    (``lround((p-0.3)·5/6)`` while the rect is at least ``min_layer``), the sizes from ``(5n) div 6``."""
    h, w = img.shape[:2]
    rect = np.array([0.0, 0.0, w - 1.0, h - 1.0])
    count = 0
    while True:
        rect = pyramid.lround((rect - 0.3) * (5 / 6.0)).astype(np.float64)
        count += 1
        rw, rh = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
        if not (rw >= min_layer[0] and rh >= min_layer[1] and count < max_levels):
            break
    levels = [img]
    for _ in range(count - 1):
        prev = levels[-1]
        levels.append(_resize(prev, (5 * prev.shape[0]) // 6, (5 * prev.shape[1]) // 6))
    return levels


def _window_rects(r: np.ndarray, c: np.ndarray, level: int) -> np.ndarray:
    """fHOG window centred on cell (r, c) of ``level`` -> inclusive image rectangles (spec §7)."""

    def to_image(p: np.ndarray) -> np.ndarray:  # fhog_to_image with padding 10
        q = (p + 1 - 4) * CELL_SIZE + 1
        return np.where(q >= 0, q + 4, q - 4)

    box = np.stack([to_image(c - _HALF), to_image(r - _HALF), to_image(c + _TAIL), to_image(r + _TAIL)], axis=1)
    if level == 0:
        return box.astype(np.int64)
    d = box.astype(np.float64)
    for _ in range(level):
        d = d * (6 / 5.0) + 0.3
    return pyramid.lround(d)


@cache
def _default_detector() -> HogFaceDetector:
    data = DETECTOR_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DETECTOR_SHA256:
        raise DlibFormatError(str(DETECTOR_FILE), 0, f"sha256 {DETECTOR_SHA256}", f"sha256 {digest}")
    return HogFaceDetector.from_bytes(data, str(DETECTOR_FILE))
