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

API (stable; the flat API and ``facestream.compat.face_recognition`` build on it)::

    from facestream.engines.hog import HogFaceDetector
    det = HogFaceDetector.default()            # the shipped detector, parsed once per process
    boxes, scores, weight_index = det.detect(image, upsample=0, adjust_threshold=0.0)
    results = det.detect_batch(images, upsample=0)   # list of the above; sizes may differ

* ``image``: ``(H, W, 3)`` uint8 RGB (channel order matters: BGR gives other features) or
  ``(H, W)`` uint8 grey (used as grey, as dlib does); anything else raises ValueError;
* ``boxes``: ``(N, 4)`` int64 ``[left, top, right, bottom]``, dlib's inclusive rectangles in input
  pixels, not clipped to the image (they may extend past it);
* ``scores``: ``(N,)`` float64, exactly what ``detector.run(img, upsample, adjust_threshold)`` returns
  as confidences (window score minus the filter's threshold; ``>= adjust_threshold``);
* ``weight_index``: ``(N,)`` int64, which of the 5 filters (0 front, 1 left looking, 2 right
  looking, 3 front rotated left, 4 front rotated right);
* order: dlib's (confidence descending, after NMS). ``dlib.get_frontal_face_detector()(img, U)``
  is ``detect(img, U)[0]``.

``upsample`` is 0..4 and the upsampled image at most ``MAX_SCAN_PIXELS``; beyond that ValueError.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from facestream.engines import pyramid
from facestream.engines.cachedir import default_cache_dir
from facestream.engines.dlib_format import ByteReader, DlibFormatError
from facestream.engines.fhog import CELL_SIZE, NUM_FEATURES, fhog_features
from facestream.engines.loops import loops as compiled_loops
from facestream.engines.npz_cache import load_arrays, save_arrays

__all__ = [
    "DETECTOR_FILE",
    "DETECTOR_SHA256",
    "HogFaceDetector",
    "HogModel",
    "load_hog_detector",
    "parse_hog_detector",
    "pyramid_levels",
]

T = TypeVar("T")
R = TypeVar("R")
DETECTOR_FILE = Path(__file__).parent / "data" / "dlib_frontal_face_detector.svm"
DETECTOR_SHA256 = "f3f7aa833fb4a14a46fc48689f45b98d85ef72d6dfaf8bdc012b7d3c522a5426"
MAX_UPSAMPLE = 4  # each step doubles both sides: bounds what a caller can make us allocate
MAX_SCAN_PIXELS = 200_000_000  # the (upsampled) image scanned; about 1.5 GB of working memory at most
_F32 = np.float32
_FILTER = 10  # filter rows = columns (80x80 window, 8-pixel cells)
_HALF = _FILTER // 2  # interior starts here (dlib: len/2) ...
_TAIL = (_FILTER - 1) // 2  # ... and ends this many cells before the edge
_BOUND_STEPS = 1024  # > rounded steps in dlib's sum (< 100) plus in the approximate one (< 100)
_BAND = 64  # output rows per block of the approximate filter pass


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


def _separable_terms(filters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``build_fhog_filterbank`` of every filter (K, 31, 10, 10) at once: each plane's SVD (one LAPACK call
    per plane, as one at a time), singular values below max(1e-4, 1e-3·max) dropped, taps ``f32(v·√s)`` and
    ``f32(u·√s)`` in descending s (spec §5); sign choices cancel exactly. Returns ``(planes, rows, cols,
    starts)``, the terms in dlib's order (filter, then plane, then descending s): filter k's are
    ``starts[k]:starts[k+1]``, rows the horizontal taps (T, 10), cols the vertical ones."""
    k, p = filters.shape[:2]
    u, s, vt = np.linalg.svd(filters.reshape(k * p, _FILTER, _FILTER))
    keep = s >= np.maximum(1e-4, 1e-3 * s.max(axis=1, initial=0.0, keepdims=True))
    matrix, j = np.nonzero(keep)  # row-major: matrix (filter-major) ascending, then s descending
    root = np.sqrt(s[matrix, j])[:, None]
    rows = np.ascontiguousarray((vt[matrix, j, :] * root).astype(_F32))
    cols = np.ascontiguousarray((u[matrix, :, j] * root).astype(_F32))
    starts = np.concatenate([[0], np.cumsum(np.bincount(matrix // p, minlength=k))]).astype(np.int64)
    return (matrix % p).astype(np.int64), rows, cols, starts


class HogFaceDetector:
    """dlib's frontal-face HOG detector: ``detect`` returns what ``run(img, upsample, adjust)`` does."""

    def __init__(self, model: HogModel) -> None:
        self.model = model
        # All filters' rank-1 terms in one set of arrays for the compiled loops; filter k owns starts[k]:starts[k+1].
        self._term_planes, self._term_rows, self._term_cols, self._term_starts = _separable_terms(model.filters)
        # sum over terms of sum|col|*|row|: with max(feature), it bounds every partial sum of a response
        mass = np.abs(self._term_cols).sum(axis=1) * np.abs(self._term_rows).sum(axis=1)
        owner = np.repeat(np.arange(self.filter_count), np.diff(self._term_starts))
        self._abs_mass = np.bincount(owner, weights=mass.astype(np.float64), minlength=self.filter_count)

    @property
    def filter_count(self) -> int:
        return len(self._term_starts) - 1

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<bytes>") -> HogFaceDetector:
        """A detector from a serialized record (e.g. dlib's ``get_frontal_face_detector().save()``)."""
        return cls(parse_hog_detector(data, path))

    @classmethod
    def default(cls) -> HogFaceDetector:
        """The detector embedded in dlib, from the shipped record (sha256-checked, parsed once)."""
        return _default_detector()

    # -- scanning -------------------------------------------------------------------------------

    def _candidates(self, feats: np.ndarray, thresholds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per filter, the interior cells whose saliency is ``>= threshold`` and their exact scores.

        Two steps, so that dlib's float32 operation order is only paid where it matters:

        1. every cell's response approximately (same rank-1 terms, fused multiply-adds, any order), and a
           rigorous bound on how far that and dlib's arithmetic can be from the real value (both are
           float32 sums of fewer than 1024 rounded steps over terms whose absolute values sum to at most
           ``max(feature) * sum|col|*|row|``);
        2. the cells within that bound of the threshold again, exactly as dlib sums them.

        Returns ``(rows, cols, scores)`` per filter: interior cell indices (cell = index + 5, raster
        order) and float64 scores, compared with the threshold in double as dlib does.
        """
        _, P, Q = feats.shape
        n_r, n_c = P - _FILTER + 1, Q - _FILTER + 1
        approx = np.empty((self.filter_count, n_r, n_c), dtype=_F32)
        loops = compiled_loops()
        loops.approximate_responses(feats, self._term_planes, self._term_rows, self._term_cols, self._term_starts,
                                    _BAND, approx)  # fmt: skip
        margin = _BOUND_STEPS * 2.0**-24 * float(feats.max(initial=0.0)) * self._abs_mass + 1e-12
        n_simd = 8 * (n_c // 8)  # dlib's SIMD blocks start at 5, 13, ... while start < last - 7
        out = []
        for k in range(self.filter_count):
            # contiguous, so the compiled scorer has one signature (each one is a cache entry loaded per process)
            rr, cc = (np.ascontiguousarray(i) for i in np.nonzero(approx[k] >= thresholds[k] - margin[k]))
            if rr.size == 0:
                out.append((rr, cc, np.zeros(0, np.float64)))
                continue
            s = self._term_starts
            scores = loops.exact_scores(feats, self._term_planes, self._term_rows, self._term_cols, s[k], s[k + 1],
                                        n_simd, rr, cc)  # fmt: skip
            hit = scores >= thresholds[k]
            out.append((rr[hit], cc[hit], scores[hit]))
        return out

    def _scan_level(
        self, level_img: np.ndarray, level: int, thresholds: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pyramid level: fHOG, the filters, and per filter with candidates ``(rects, scores, k)``."""
        feats = fhog_features(level_img)
        if feats.shape[1] < _FILTER or feats.shape[2] < _FILTER:
            return []
        found = []
        for k, (rr, cc, score) in enumerate(self._candidates(feats, thresholds)):
            if rr.size:
                found.append((_window_rects(rr + _HALF, cc + _HALF, level), score, np.full(rr.size, k, dtype=np.int64)))
        return found

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
        scanned = img.shape[0] * img.shape[1] * 4**upsample
        if scanned > MAX_SCAN_PIXELS:
            raise ValueError(f"image of {img.shape[1]}x{img.shape[0]} upsampled {upsample} times is {scanned} pixels, "
                             f"more than the {MAX_SCAN_PIXELS} this detector scans")  # fmt: skip
        img = _upsample(img, upsample)
        m = self.model
        levels = pyramid_levels(img, m.min_pyramid_layer, m.max_pyramid_levels)
        thresholds = m.thresholds + float(adjust_threshold)
        rects, scores, which = [], [], []
        # Small images: handing levels to other threads costs more than it saves.
        parallel = img.shape[0] * img.shape[1] >= _PARALLEL_PIXELS
        scan = lambda item: self._scan_level(item[1], item[0], thresholds)  # noqa: E731
        for found in _map_in_order(scan, enumerate(levels), parallel):
            for level_rects, level_scores, level_which in found:
                rects.append(level_rects)
                scores.append(level_scores)
                which.append(level_which)
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


_WORKERS = max(1, min(4, os.cpu_count() or 1))
_PARALLEL_PIXELS = 500_000  # scanned images at least this large have their levels scanned on _WORKERS threads


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="hog-level")


def _map_in_order(work: Callable[[T], R], items: Iterable[T], parallel: bool = True) -> Iterator[R]:
    """``map(work, items)`` on the level threads (the compiled loops release the GIL), results in input
    order. ``items`` is consumed lazily and at most ``_WORKERS + 2`` items are in flight, so a pyramid
    never has all its levels in memory at once."""
    if _WORKERS == 1 or not parallel:
        yield from map(work, items)
        return
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            if len(pending) > _WORKERS + 1:
                yield pending.popleft().result()
            pending.append(_pool().submit(work, item))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected an (H,W,3) RGB or (H,W) grey uint8 image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img)


@lru_cache(maxsize=64)
def _resize_rows(in_h: int, out_h: int) -> tuple[np.ndarray, ...]:
    """Per output row: top and bottom source rows, f32(tb), f32(1 - tb) and tb (cached: video frames
    repeat their pyramid sizes)."""
    top, bottom, tb = pyramid._row_params(in_h, out_h)
    # f32(1 - tb) is rounded from the double difference, as dlib's simd4f(1 - tb_frac)
    return top, bottom, tb.astype(_F32), (1.0 - tb).astype(_F32), tb


@lru_cache(maxsize=64)
def _resize_cols(in_w: int, out_w: int, channels: int) -> tuple[int, tuple[np.ndarray, ...]]:
    """``n_simd`` and the column arrays of :func:`resize_u8` (cached like :func:`_resize_rows`)."""
    n_simd, left, right, lr_s, lr_t = pyramid._col_params(in_w, out_w)
    lrd = np.zeros(out_w, np.float64)
    lrd[n_simd:] = lr_t
    flat_lr = np.repeat(lr_s, channels)
    return n_simd, (_F32(1.0) - flat_lr, flat_lr, left, right, lrd)


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib's bilinear ``resize_image`` for uint8 RGB (truncates) or uint8 grey (SIMD columns round,
    tail columns truncate), spec §3.1."""
    planar = img if img.ndim == 3 else img[:, :, None]
    channels = planar.shape[2]
    out = np.zeros((out_h, out_w, channels), np.uint8)
    if out.size and img.size:
        n_simd, cols = _resize_cols(img.shape[1], out_w, channels)
        compiled_loops().resize_u8(planar, out, *_resize_rows(img.shape[0], out_h), n_simd, *cols)
    return out if img.ndim == 3 else out[:, :, 0]


def _upsample(img: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        img = _resize(img, *pyramid.pyramid_up_size(*img.shape[:2]))
    return img


def pyramid_levels(
    img: np.ndarray, min_layer: tuple[int, int] = (64, 64), max_levels: int = 1000
) -> Iterator[np.ndarray]:
    """The scanned ``pyramid_down<6>`` levels (spec §3.2), made one at a time: the count comes from
    ``rect_down`` geometry (``lround((p-0.3)·5/6)`` while the rect is at least ``min_layer``), the sizes
    from ``(5n) div 6``."""
    h, w = img.shape[:2]
    rect = np.array([0.0, 0.0, w - 1.0, h - 1.0])
    count = 0
    while True:
        rect = pyramid.lround((rect - 0.3) * (5 / 6.0)).astype(np.float64)
        count += 1
        rw, rh = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
        if not (rw >= min_layer[0] and rh >= min_layer[1] and count < max_levels):
            break
    level = img
    yield level
    for _ in range(count - 1):
        level = _resize(level, (5 * level.shape[0]) // 6, (5 * level.shape[1]) // 6)
        yield level


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


MODEL_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_MODEL_ARRAYS = ("filters", "thresholds", "overlap", "min_pyramid_layer", "max_pyramid_levels")


def _model_from_arrays(a: dict[str, np.ndarray]) -> HogModel | None:
    filters, thresholds = a["filters"], a["thresholds"]
    k = len(thresholds)
    shapes = (filters.shape, a["overlap"].shape, a["min_pyramid_layer"].shape, a["max_pyramid_levels"].shape)
    if not 1 <= k <= 64 or shapes != ((k, NUM_FEATURES, _FILTER, _FILTER), (2,), (2,), ()):
        return None  # not what load_hog_detector writes: parsed again
    return HogModel(filters=filters, thresholds=thresholds, iou_thresh=float(a["overlap"][0]),
                    percent_covered_thresh=float(a["overlap"][1]),
                    min_pyramid_layer=(int(a["min_pyramid_layer"][0]), int(a["min_pyramid_layer"][1])),
                    max_pyramid_levels=int(a["max_pyramid_levels"]))  # fmt: skip


def load_hog_detector(
    path: str | Path = DETECTOR_FILE, sha256: str | None = DETECTOR_SHA256, cache_dir: Path | None = None
) -> HogFaceDetector:
    """A detector from a serialized record file, refused (DlibFormatError) unless its sha256 is ``sha256``
    (pass None to skip the check, e.g. for a detector trained with dlib's own tools). With `cache_dir`, the
    parsed record is kept there (``.npz`` keyed by the file's sha256) and read back by later processes."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DlibFormatError(str(path), 0, f"a file with sha256 {sha256}", f"sha256 {digest}")
    cached = Path(cache_dir) / f"hog_detector-{digest}-v{MODEL_CACHE_FORMAT}.npz" if cache_dir is not None else None
    if cached is not None:
        arrays = load_arrays(cached, digest, MODEL_CACHE_FORMAT, _MODEL_ARRAYS)
        model = _model_from_arrays(arrays) if arrays is not None else None
        if model is not None:
            return HogFaceDetector(model)
    model = parse_hog_detector(data, str(path))
    if cached is not None:
        arrays = {"filters": model.filters, "thresholds": model.thresholds,
                  "overlap": np.array([model.iou_thresh, model.percent_covered_thresh]),
                  "min_pyramid_layer": np.array(model.min_pyramid_layer),
                  "max_pyramid_levels": np.array(model.max_pyramid_levels)}  # fmt: skip
        try:
            save_arrays(cached, digest, MODEL_CACHE_FORMAT, arrays)
        except OSError:
            pass  # a read-only or full cache directory costs time, not correctness
    return HogFaceDetector(model)


@cache
def _default_detector() -> HogFaceDetector:
    return load_hog_detector(cache_dir=default_cache_dir())
