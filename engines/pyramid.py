"""Geometry and decoding around dlib's MMOD CNN face detector (everything except the network).

Pure numpy, reproducing dlib 20.0.1 (spec: ``dlib-model-formats.md`` §4, §6, §7, §13):

* input side: colour normalisation, ``pyramid_up`` upsampling, the tiled image pyramid of
  ``input_rgb_image_pyramid<pyramid_down<6>>`` (layout and filling, including the float32
  arithmetic of dlib's x86 SIMD ``resize_image``);
* output side: ``loss_mmod_::to_label`` (score map -> candidate rectangles in image space, sort,
  greedy NMS with ``test_box_overlap``) and the ``rect_down`` mapping back from upsampled images.

Conventions: images are ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey); tensors are NCHW float32;
rectangles are dlib's inclusive integer rectangles as int64 rows ``[left, top, right, bottom]``;
points are ``(x, y)``. Sizes are given as ``(rows, cols)``, i.e. ``(height, width)``; detector
windows as ``(width, height)`` like dlib's ``detector_window_details``.

A batch of N images of the same size is tiled exactly as dlib's ``to_tensor`` does it: every
sample gets the same layout (one list of level rectangles) and its own ``(3, NR, NC)`` slab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .loops import loops

__all__ = [
    "NMS_IOU_THRESH",
    "NMS_PERCENT_COVERED_THRESH",
    "PYRAMID_OUTER_PADDING",
    "PYRAMID_PADDING",
    "RGB_MEANS",
    "WINDOW",
    "build_input_tensor",
    "detections_from_batch_output",
    "detections_from_output",
    "detector_output_shape",
    "is_degenerate_layout",
    "lround",
    "map_rects_from_upsampled",
    "nearest_level",
    "nms",
    "normalize_rgb",
    "output_to_image_rects",
    "output_to_input_points",
    "overlaps_nms",
    "pyramid_level_sizes",
    "pyramid_up_size",
    "resize_bilinear_f32",
    "resize_bilinear_rgb_u8",
    "resize_plan",
    "resize_window_f32",
    "resize_window_rgb_u8",
    "tensor_rects_to_image",
    "tiled_pyramid",
    "tiled_pyramid_layout",
    "upsample_image",
]

# Stored in mmod_human_face_detector.dat (§3, §7); exactly representable as float32 / double.
RGB_MEANS = np.array([122.782, 117.001, 104.298], dtype=np.float32)
PYRAMID_PADDING = 10
PYRAMID_OUTER_PADDING = 11
WINDOW = (80, 80)  # (width, height) of the single detector window
NMS_IOU_THRESH = 0.3382761351109955
NMS_PERCENT_COVERED_THRESH = 1.0

_PYR_RATE = 5.0 / 6.0  # pyramid_down<6>: (N-1.0)/N
_PYR_UP = 6 / 5.0  # pyramid_down<6>::point_up: p*N/(N-1.0) + 0.3
_MIN_LEVEL_HEIGHT = 5
_POINT_CHUNK = 1 << 16  # candidates per block in nearest_level


# --------------------------------------------------------------------------------------------------
# rounding



def lround(x: np.ndarray | float) -> np.ndarray:
    """C ``std::lround``: round half away from zero, as int64 (exact, unlike ``floor(x + 0.5)``)."""
    x = np.asarray(x, dtype=np.float64)
    whole = np.trunc(x)
    frac = x - whole  # exact for |x| < 2**52
    return (whole + np.where(np.abs(frac) >= 0.5, np.sign(x), 0.0)).astype(np.int64)


def _u64(x: int) -> int:
    """C++ conversion of a (signed) integer result to ``unsigned long`` (64-bit wrap-around)."""
    return x % (1 << 64)


def _to_point(x: np.ndarray) -> np.ndarray:
    """dlib's ``dpoint`` -> ``point`` conversion: ``floor(x + 0.5)`` (with its double rounding)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# colour normalisation


def normalize_rgb(image: np.ndarray, means: Sequence[float] | np.ndarray = RGB_MEANS) -> np.ndarray:
    """uint8 RGB ``(H,W,3)`` (or grey ``(H,W)``, or a batch ``(N,H,W,3)``) -> float32 ``(3,H,W)``
    (``(N,3,H,W)``): ``(float32(pixel) - mean) / 256`` per channel, R,G,B order."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"expected (H,W), (H,W,3) or (N,H,W,3), got shape {img.shape}")
    m = np.asarray(means, dtype=np.float32)
    # uchar - float is a float32 subtraction; the /256 is exact.
    out = (img.astype(np.float32) - m) / np.float32(256.0)
    return np.ascontiguousarray(np.moveaxis(out, -1, -3))


# --------------------------------------------------------------------------------------------------
# bilinear resizing (dlib's resize_image with interpolate_bilinear, x86 SSE code paths)


def _row_params(in_h: int, out_h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output row: top, bottom, tb_frac (double), with dlib's accumulated ``y += y_scale``."""
    ys = (in_h - 1) / float(max(out_h - 1, 1))
    acc = np.full(out_h + 1, ys, dtype=np.float64)
    acc[0] = -ys
    y = np.add.accumulate(acc)[1:]  # sequential double additions, as in the C++ loop
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    return top, bottom, y - top


def _col_params(in_w: int, out_w: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output column: the SIMD part (float32 lanes) and the scalar tail (double x).

    Returns ``(n_simd, left, right, lr_simd_f32, lr_tail_f64)`` where columns ``[0, n_simd)`` use
    the float32 ``lr_simd`` and columns ``[n_simd, out_w)`` the double ``lr_tail``.
    """
    xs = (in_w - 1) / float(max(out_w - 1, 1))
    x0 = -4.0 * xs
    # simd4f _x(x, x+x_scale, x+2*x_scale, x+3*x_scale): double expressions rounded to float.
    init = np.array([x0, x0 + xs, x0 + 2.0 * xs, x0 + 3.0 * xs], dtype=np.float64).astype(np.float32)
    n_groups = out_w // 4 + 2
    lanes = np.empty((4, n_groups + 1), dtype=np.float32)
    lanes[:, 0] = init
    lanes[:, 1:] = np.float32(4.0 * xs)
    lanes = np.add.accumulate(lanes, axis=1)[:, 1:]  # float32 lane additions, group by group
    left_lanes = lanes.astype(np.int32)  # _mm_cvttps_epi32: truncation
    stop = np.nonzero(left_lanes[3] + 1 >= in_w)[0]  # `if (fright[3] >= in_img.nc()) break;`
    if stop.size == 0:  # cannot happen: a lane past the last column always reads past the input
        raise AssertionError("resize: SIMD loop did not terminate")
    n_simd = min(4 * int(stop[0]), out_w)
    x_simd = lanes.T.reshape(-1)[:n_simd]
    left_simd = x_simd.astype(np.int64)
    lr_simd = x_simd - left_simd.astype(np.float32)  # simd4f - simd4i -> float32

    n_tail = out_w - n_simd
    acc = np.full(n_tail + 1, xs, dtype=np.float64)
    acc[0] = -xs + n_simd * xs  # x = -x_scale + c*x_scale
    x_tail = np.add.accumulate(acc)[1:]
    left_tail = np.floor(x_tail).astype(np.int64)
    lr_tail = x_tail - left_tail
    left = np.concatenate([left_simd, left_tail])
    right = np.concatenate([left_simd + 1, np.minimum(left_tail + 1, in_w - 1)])
    return n_simd, left, right, lr_simd, lr_tail


class _ResizePlan:
    """Row and column parameters of one dlib ``resize_image`` from ``(in_h, in_w)`` to ``(out_h, out_w)``.

    Computed for the whole image (the SIMD/scalar column split and the accumulated coordinates
    depend on it) so that any window of the output can be computed bit-identically on its own.
    """

    def __init__(self, in_h: int, in_w: int, out_h: int, out_w: int) -> None:
        self.in_h, self.in_w, self.out_h, self.out_w = in_h, in_w, out_h, out_w
        self.top, self.bottom, self.tb = _row_params(in_h, out_h)
        self.n_simd, self.left, self.right, self.lr_s, self.lr_t = _col_params(in_w, out_w)

    def source_window(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """Input rows ``[ir0, ir1)`` and columns ``[ic0, ic1)`` that output window ``[r0,r1) x [c0,c1)`` reads."""
        return (int(self.top[r0]), int(self.bottom[r1 - 1]) + 1,
                int(self.left[c0:c1].min()), int(self.right[c0:c1].max()) + 1)  # fmt: skip


_plans: dict[tuple[int, int, int, int], _ResizePlan] = {}


def resize_plan(in_h: int, in_w: int, out_h: int, out_w: int) -> _ResizePlan:
    """A (memoised: frames of one stream share their sizes) ``_ResizePlan``."""
    key = (in_h, in_w, out_h, out_w)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) > 4096:  # bound the memo for processes that see many sizes
            _plans.clear()
        plan = _plans[key] = _ResizePlan(*key)
    return plan


def resize_bilinear_f32(planes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib ``resize_image`` on float32 grey planes (the path ``tt::resize_bilinear`` takes on CPU).

    ``planes`` is ``(..., H, W)`` float32; returns ``(..., out_h, out_w)`` float32. Align-corners
    bilinear. Columns handled by the SSE loop use float32 lane arithmetic (x accumulated in
    float32, float32 weights, ``((tl*TL + tr*TR) + bl*BL) + br*BR``); the remaining columns blend
    x in float32 and y in double, as the C++ does. Bit-identical to ``dlib.resize_image``.
    """
    src = np.asarray(planes, dtype=np.float32)
    in_h, in_w = src.shape[-2:]
    if out_h * out_w == 0 or src.size == 0:
        return np.zeros((*src.shape[:-2], out_h, out_w), dtype=np.float32)
    return resize_window_f32(src, (0, 0), resize_plan(in_h, in_w, out_h, out_w), (0, out_h, 0, out_w))


def resize_window_f32(
    src: np.ndarray, origin: tuple[int, int], plan: _ResizePlan, window: tuple[int, int, int, int]
) -> np.ndarray:
    """Output window ``[r0,r1) x [c0,c1)`` of ``resize_bilinear_f32`` (bit-identical to the same pixels
    of the whole resize) from ``src``, the part of the input ``(..., h, w)`` whose top-left pixel is
    input pixel ``origin`` = (row, col); it must cover ``plan.source_window(*window)``."""
    r0, r1, c0, c1 = window
    lead = src.shape[:-2]
    out = np.zeros((*lead, r1 - r0, c1 - c0), dtype=np.float32)
    if out.size == 0:
        return out
    rows, cols = _window_weights(plan, origin, window)
    planes = np.ascontiguousarray(src, dtype=np.float32).reshape(-1, *src.shape[-2:])
    loops().resize_f32(planes, out.reshape(-1, r1 - r0, c1 - c0), *rows, *cols)
    return out


def _window_weights(
    plan: _ResizePlan, origin: tuple[int, int], window: tuple[int, int, int, int]
) -> tuple[tuple[np.ndarray, ...], tuple]:
    """The kernels' row arguments ``(top, bottom, f32(tb), f32(1-tb), tb)`` and column arguments
    ``(n_simd, left, right, f32(1-lr), f32(lr))`` of an output window, source indices relative to
    ``origin``. SIMD columns carry dlib's float32 lane weights, tail columns ``float(lr)``."""
    r0, r1, c0, c1 = window
    oy, ox = origin
    tb = plan.tb[r0:r1]
    rows = (plan.top[r0:r1] - oy, plan.bottom[r0:r1] - oy, tb.astype(np.float32), (1.0 - tb).astype(np.float32), tb)
    n_simd = int(np.clip(plan.n_simd - c0, 0, c1 - c0))
    tail = slice(max(c0, plan.n_simd) - plan.n_simd, max(c1, plan.n_simd) - plan.n_simd)
    lr = np.concatenate([plan.lr_s[c0 : c0 + n_simd], plan.lr_t[tail].astype(np.float32)])
    cols = (n_simd, plan.left[c0:c1] - ox, plan.right[c0:c1] - ox, np.float32(1.0) - lr, lr)
    return rows, cols


def resize_bilinear_rgb_u8(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib ``resize_image`` on an RGB uint8 image ``(H,W,3)`` (the rgb_pixel SSE path).

    SIMD columns: float32 weights and blend, truncated to int; tail columns: double, truncated.
    Bit-identical to ``dlib.resize_image``.
    """
    src = np.asarray(image)
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"expected (H,W,3) uint8, got {src.shape} {src.dtype}")
    in_h, in_w = src.shape[:2]
    if out_h * out_w == 0 or src.size == 0:
        return np.zeros((out_h, out_w, 3), dtype=np.uint8)
    return resize_window_rgb_u8(src, (0, 0), resize_plan(in_h, in_w, out_h, out_w), (0, out_h, 0, out_w))


def resize_window_rgb_u8(
    src: np.ndarray, origin: tuple[int, int], plan: _ResizePlan, window: tuple[int, int, int, int]
) -> np.ndarray:
    """Output window ``[r0,r1) x [c0,c1)`` of ``resize_bilinear_rgb_u8`` from ``src`` ``(h, w, 3)``, the
    part of the input whose top-left pixel is input pixel ``origin``; as ``resize_window_f32``.
    SIMD columns: float32 weights and blend, truncated; tail columns: double, truncated."""
    r0, r1, c0, c1 = window
    out = np.zeros((r1 - r0, c1 - c0, 3), dtype=np.uint8)
    if out.size == 0:
        return out
    rows, (n_simd, left, right, ilr, lr) = _window_weights(plan, origin, window)
    lrd = np.zeros(c1 - c0, dtype=np.float64)
    lrd[n_simd:] = plan.lr_t[max(c0, plan.n_simd) - plan.n_simd : max(c1, plan.n_simd) - plan.n_simd]
    weights = np.repeat(ilr[:n_simd], 3), np.repeat(lr[:n_simd], 3)
    loops().resize_u8(np.ascontiguousarray(src), out, *rows, n_simd, *weights, left, right, lrd)
    return out


# --------------------------------------------------------------------------------------------------
# upsampling before the network (Python API upsample_num_times, pyramid_up with pyramid_down<2>)


def pyramid_up_size(h: int, w: int) -> tuple[int, int]:
    """Output size of ``pyramid_up(img, pyramid_down<2>)``: ``rect_up`` of the image rectangle,
    ``(p + (1.25, 0.75))*2`` then lround -> ``(2h+1, 2w+2)``; ``(0, 0)`` for an empty image."""
    if h * w == 0:
        return 0, 0
    right = int(lround((w - 1 + 1.25) * 2))
    bottom = int(lround((h - 1 + 0.75) * 2))
    return bottom + 1, right + 1


def upsample_image(image: np.ndarray, times: int) -> np.ndarray:
    """``pyramid_up(img, pyramid_down<2>)`` applied ``times`` times, on RGB uint8 (a grey input
    is expanded to R=G=B first, as the Python CNN detector does)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if times < 0:
        raise ValueError("times must be >= 0")
    for _ in range(times):
        oh, ow = pyramid_up_size(*img.shape[:2])
        img = resize_bilinear_rgb_u8(img, oh, ow)
    return img


def map_rects_from_upsampled(rects: np.ndarray, times: int) -> np.ndarray:
    """``pyramid_down<2>::rect_down(rect, times)``: ``p <- p/2 - (1.25, 0.75)`` ``times`` times on both
    corners in double, then lround each edge (one rounding at the end). ``(K,4)`` int64. Like
    dlib, the result is the bounding box of the two mapped corners."""
    r = np.asarray(rects, dtype=np.float64).reshape(-1, 4).copy()
    off = np.array([1.25, 0.75, 1.25, 0.75])
    for _ in range(times):
        r = r / 2.0 - off
    return lround(_corners_box(r))


def _corners_box(r: np.ndarray) -> np.ndarray:
    """``drectangle(p1, p2)``: the bounding box of two corner points (swaps inverted edges)."""
    return np.concatenate([np.minimum(r[:, :2], r[:, 2:]), np.maximum(r[:, :2], r[:, 2:])], axis=1)


# --------------------------------------------------------------------------------------------------
# tiled pyramid: layout and filling


def pyramid_level_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Level sizes ``(rows, cols)`` of pyramid_down<6>: ``floor(5/6 * n)`` while ``rows >= 5`` and
    ``rows*cols > 0`` (before any level is dropped by the layout)."""
    if h * w == 0:
        return []
    sizes = [(int(h), int(w))]
    while True:
        h = math.floor(_PYR_RATE * h)
        w = math.floor(_PYR_RATE * w)
        if h * w == 0 or h < _MIN_LEVEL_HEIGHT:
            return sizes
        sizes.append((h, w))


def tiled_pyramid_layout(
    h: int, w: int, padding: int = PYRAMID_PADDING, outer_padding: int = PYRAMID_OUTER_PADDING
) -> tuple[int, int, np.ndarray]:
    """``compute_tiled_image_pyramid_details``: ``(tensor_rows, tensor_cols, rects)``.

    ``rects`` is ``(L,4)`` int64 inclusive ``[l,t,r,b]`` of the levels that fit; level 0 at
    ``(outer, outer)``, the first column top-down, the rest right-aligned bottom-up in a second
    column; levels that would overlap level 0 are dropped.
    """
    sizes = pyramid_level_sizes(h, w)
    if not sizes:
        return 0, 0, np.zeros((0, 4), dtype=np.int64)
    h0, w0 = sizes[0]
    total = sum(hi + padding for hi, _ in sizes) - 2 * padding
    height = 0
    prev_w = 0
    for hi, wi in sizes:
        # C++ mixes `unsigned long` (rectangle::width/height) with `long`: both tests are done in
        # unsigned 64-bit arithmetic, so negative differences wrap to huge values. For level 1 the
        # width test is therefore always true, and for narrow images (w0 < ~70) later ones too.
        if wi <= _u64(w0 - prev_w - padding) and _u64(2 * _u64(height - h0)) >= _u64(total - h0):
            break
        height += hi + padding
        prev_w = wi
    height -= padding
    nr, nc = height + 2 * outer_padding, w0 + 2 * outer_padding

    # Each level starts as rectangle(w_i, h_i) at the origin and is moved in place, like dlib's
    # vector (this matters only in degenerate cases where level 0 is never placed).
    cur = [(0, 0, wi - 1, hi - 1) for hi, wi in sizes]
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        hi, wi = sizes[i]
        cur[i] = (outer_padding, y, outer_padding + wi - 1, y + hi - 1)
        y += hi + padding
        i += 1
    y -= padding
    while i < len(sizes):
        hi, wi = sizes[i]
        x1, y1 = outer_padding + w0 - 1, y - 1
        rect = (x1 - wi + 1, y1 - hi + 1, x1, y1)
        l0, t0, r0, b0 = cur[0]
        if max(l0, rect[0]) <= min(r0, rect[2]) and max(t0, rect[1]) <= min(b0, rect[3]):
            break  # would intersect the original image: drop this and the remaining levels
        cur[i] = rect
        y -= hi + padding
        i += 1
    return nr, nc, np.array(cur[:i], dtype=np.int64).reshape(-1, 4)


def is_degenerate_layout(nr: int, nc: int, rects: np.ndarray) -> bool:
    """True when dlib's layout cannot be filled sanely: no level, a level outside the tensor, or a
    level overlapping the one it is resized from (only images below ~25 px, or odd paddings)."""
    if len(rects) == 0:
        return True
    outside = rects[:, :2].min() < 0 or rects[:, 2].max() >= nc or rects[:, 3].max() >= nr
    lo, hi = np.maximum(rects[1:, :2], rects[:-1, :2]), np.minimum(rects[1:, 2:], rects[:-1, 2:])
    return bool(outside or (lo <= hi).all(axis=1).any())


def tiled_pyramid(
    normalized: np.ndarray, padding: int = PYRAMID_PADDING, outer_padding: int = PYRAMID_OUTER_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Tile normalised planes ``(C,H,W)`` or a batch ``(N,C,H,W)`` (float32) into the detector's
    input tensor ``(N,C,NR,NC)`` float32, zeros outside the levels; returns ``(tensor, rects)``.

    Level 0 is a copy; level i is ``resize_bilinear_f32`` of level i-1 (dlib's CPU path; the GPU
    path differs by ~1e-5 and gave the same detections).
    """
    x = np.asarray(normalized, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected (C,H,W) or (N,C,H,W), got shape {x.shape}")
    n, k, h, w = x.shape
    tensor, planes, rects = _empty_tensor(n, k, h, w, padding, outer_padding)
    l, t, r, b = rects[0]
    planes[:, t : b + 1, l : r + 1] = x.reshape(n * k, h, w)
    _resize_levels(planes, rects)
    return tensor, rects


def _empty_tensor(
    n: int, k: int, h: int, w: int, padding: int, outer_padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The zeroed input tensor ``(n,k,NR,NC)`` for ``h x w`` level-0 planes, its ``(n*k,NR,NC)`` view, and
    the level rectangles; refuses the layouts dlib cannot build."""
    nr, nc, rects = tiled_pyramid_layout(h, w, padding, outer_padding)
    if len(rects) == 0:
        raise ValueError(f"dlib's tiled pyramid has no level for a {h}x{w} image (dlib fails too)")
    if is_degenerate_layout(nr, nc, rects):  # dlib would write outside the tensor or resize in place
        raise ValueError(f"degenerate dlib pyramid layout for a {h}x{w} image")
    tensor = np.zeros((n, k, nr, nc), dtype=np.float32)
    return tensor, tensor.reshape(n * k, nr, nc), rects


def _resize_levels(planes: np.ndarray, rects: np.ndarray) -> None:
    """Levels 1... of a tensor whose level 0 is in place: each resized from the one before, straight
    into its place in the tensor."""
    previous = None
    for l, t, r, b in rects:
        level = planes[:, t : b + 1, l : r + 1]
        if previous is not None:
            plan = resize_plan(*previous.shape[-2:], *level.shape[-2:])
            rows, cols = _window_weights(plan, (0, 0), (0, plan.out_h, 0, plan.out_w))
            loops().resize_f32(previous, level, *rows, *cols)
        previous = level


def build_input_tensor(
    images: np.ndarray | Sequence[np.ndarray],
    upsample_num_times: int = 0,
    means: Sequence[float] | np.ndarray = RGB_MEANS,
    padding: int = PYRAMID_PADDING,
    outer_padding: int = PYRAMID_OUTER_PADDING,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image ``(H,W[,3])`` or same-size images ``(N,H,W,3)`` / list (grey frames: a list)
    -> ``(tensor, rects)``: upsample, normalise, tile -- what dlib's Python CNN detector feeds its
    network (``detect_mult`` for a batch). Equal to ``tiled_pyramid(normalize_rgb(upsampled))``, with
    level 0 normalised straight into the tensor."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    ups = [upsample_image(im, upsample_num_times) for im in images]
    if len({u.shape for u in ups}) != 1:
        raise ValueError("all images in a batch must have the same size")
    stack = np.stack(ups)
    n, h, w, _ = stack.shape
    tensor, planes, rects = _empty_tensor(n, 3, h, w, padding, outer_padding)
    l, t, r, b = rects[0]
    loops().normalize_into(stack, np.asarray(means, dtype=np.float32), planes[:, t : b + 1, l : r + 1])
    _resize_levels(planes, rects)
    return tensor, rects


# --------------------------------------------------------------------------------------------------
# network output -> image rectangles


def detector_output_shape(tensor_h: int, tensor_w: int) -> tuple[int, int]:
    """Score-map size for an input tensor: three 5x5 stride-2 unpadded convs (the others keep size)."""

    def f(n: int) -> int:
        for _ in range(3):
            if n < 5:  # the 5x5 window no longer fits: dlib's conv refuses to run
                return 0
            n = (n - 5) // 2 + 1
        return n

    return f(tensor_h), f(tensor_w)


def output_to_input_points(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output cell ``(r, c)`` -> input-tensor point ``(x, y) = (8c+14, 8r+14)`` (float64)."""
    return 8.0 * np.asarray(cols) + 14.0, 8.0 * np.asarray(rows) + 14.0


def nearest_level(level_rects: np.ndarray, points: np.ndarray) -> np.ndarray:
    """dlib ``nearest_rect`` for integer points ``(K,2)``: the first level containing the point,
    else the first one at minimum Euclidean distance. Returns ``(K,)`` int64 level indices."""
    rr = np.asarray(level_rects, dtype=np.int64).reshape(-1, 4)
    p = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(p), dtype=np.int64)
    for a in range(0, len(p), _POINT_CHUNK):  # (points x levels) temporaries: bounded in chunks
        px, py = p[a : a + _POINT_CHUNK, :1], p[a : a + _POINT_CHUNK, 1:]
        dx = np.clip(px, rr[:, 0], rr[:, 2]) - px
        dy = np.clip(py, rr[:, 1], rr[:, 3]) - py
        # distance 0 <=> contained; argmin keeps the first minimum like the strict `<` in C++
        out[a : a + _POINT_CHUNK] = np.argmin(dx * dx + dy * dy, axis=1)
    return out


def tensor_rects_to_image(drects: np.ndarray, level_rects: np.ndarray) -> np.ndarray:
    """``tiled_pyramid_to_image<pyramid_down<6>>`` on float rectangles ``(K,4)`` -> float64 ``(K,4)``.

    Level = ``nearest_level`` of the centre rounded with ``floor(x+0.5)``; subtract the level's
    top-left; apply ``p*1.2 + 0.3`` ``level`` times (double).
    """
    d = np.asarray(drects, dtype=np.float64).reshape(-1, 4)
    rr = np.asarray(level_rects, dtype=np.int64).reshape(-1, 4)
    if len(rr) == 0:
        raise ValueError("no pyramid levels")
    centre = np.stack([(d[:, 0] + d[:, 2]) / 2.0, (d[:, 1] + d[:, 3]) / 2.0], axis=1)
    lvl = nearest_level(rr, _to_point(centre))
    origin = rr[lvl][:, [0, 1, 0, 1]].astype(np.float64)
    out = d - origin
    for i in range(int(lvl.max(initial=0))):
        m = lvl > i
        out[m] = out[m] * _PYR_UP + 0.3
    return _corners_box(out)


def output_to_image_rects(
    score_map: np.ndarray,
    level_rects: np.ndarray,
    threshold: float = 0.0,
    window: tuple[int, int] = WINDOW,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of ``loss_mmod_::tensor_to_dets`` for one window channel ``(Ho,Wo)``.

    Cells with ``score > threshold`` (strict, in double), in raster order, each an 80x80 (``window``
    = (width, height)) ``centered_drect`` around ``(8c+14, 8r+14)``, mapped to image space and
    rounded with lround. Returns ``(rects (K,4) int64, scores (K,) float64)``, unsorted.
    """
    s = np.asarray(score_map)
    if s.ndim != 2:
        raise ValueError(f"expected a (rows, cols) score map, got shape {s.shape}")
    rows, cols = np.nonzero(s.astype(np.float64) > threshold)
    scores = s[rows, cols].astype(np.float64)
    px, py = output_to_input_points(rows, cols)
    hw, hh = (window[0] - 1.0) / 2.0, (window[1] - 1.0) / 2.0
    drects = np.stack([px - hw, py - hh, px + hw, py + hh], axis=1)
    if len(scores) == 0:
        return np.zeros((0, 4), dtype=np.int64), scores
    return lround(tensor_rects_to_image(drects, level_rects)), scores


def _area(r: np.ndarray) -> np.ndarray:
    """Area of inclusive integer rectangles (0 when empty), as float64."""
    w = r[..., 2] - r[..., 0] + 1
    h = r[..., 3] - r[..., 1] + 1
    return np.where((w > 0) & (h > 0), w * h, 0).astype(np.float64)


def overlaps_nms(
    a: np.ndarray,
    b: np.ndarray,
    iou_thresh: float = NMS_IOU_THRESH,
    percent_covered_thresh: float = NMS_PERCENT_COVERED_THRESH,
) -> np.ndarray:
    """dlib ``test_box_overlap(a, b)``, broadcast over ``(...,4)`` int rectangles.

    ``inner = area(a ∩ b)``; false if 0; else true when ``inner/area(enclosing box of a and b) >
    iou_thresh`` or ``inner/area(a)`` or ``inner/area(b) > percent_covered_thresh`` (all strict).
    The enclosing box, not the union area, is dlib's "outer".
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inner = _area(np.concatenate(np.broadcast_arrays(lo, hi), axis=-1))
    area_a, area_b = _area(a), _area(b)
    enc = np.concatenate([np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:])], axis=-1)
    # rectangle::operator+ returns the other operand when one is empty
    outer = np.where(area_a == 0, area_b, np.where(area_b == 0, area_a, _area(enc)))
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (
            (inner / outer > iou_thresh)
            | (inner / area_a > percent_covered_thresh)
            | (inner / area_b > percent_covered_thresh)
        )
    return (inner != 0) & hit


def nms(
    rects: np.ndarray,
    scores: np.ndarray,
    iou_thresh: float = NMS_IOU_THRESH,
    percent_covered_thresh: float = NMS_PERCENT_COVERED_THRESH,
) -> np.ndarray:
    """Sort by score descending and keep greedily (``overlaps_any_box_nms``): a candidate survives
    unless ``overlaps_nms(kept, candidate)`` for some already kept rectangle. Returns indices into
    the inputs, best first. Ties keep input order (dlib's ``std::sort`` leaves them unspecified)."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    r = r[order]
    alive = np.ones(len(r), dtype=bool)
    keep = []
    i = 0
    while True:
        nxt = np.flatnonzero(alive[i:])
        if nxt.size == 0:
            break
        i += int(nxt[0])
        keep.append(i)
        alive[i + 1 :] &= ~overlaps_nms(r[i], r[i + 1 :], iou_thresh, percent_covered_thresh)
        i += 1
    return order[np.array(keep, dtype=np.int64)]


def detections_from_output(
    score_map: np.ndarray,
    level_rects: np.ndarray,
    upsample_num_times: int = 0,
    threshold: float = 0.0,
    window: tuple[int, int] = WINDOW,
    iou_thresh: float = NMS_IOU_THRESH,
    percent_covered_thresh: float = NMS_PERCENT_COVERED_THRESH,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's score map ``(Ho,Wo)`` -> dlib's detections ``(rects (K,4) int64, scores (K,)
    float64)``, best first, in the coordinates of the image before upsampling (not clipped)."""
    cand, sc = output_to_image_rects(score_map, level_rects, threshold, window)
    keep = nms(cand, sc, iou_thresh, percent_covered_thresh)
    return map_rects_from_upsampled(cand[keep], upsample_num_times), sc[keep]


def detections_from_batch_output(
    output: np.ndarray, level_rects: np.ndarray, upsample_num_times: int = 0, **kwargs: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``detections_from_output`` per sample of a network output ``(N,1,Ho,Wo)`` (or ``(N,Ho,Wo)``);
    ``kwargs`` are its threshold, window and NMS parameters."""
    out = np.asarray(output)
    if out.ndim == 4:
        if out.shape[1] != 1:
            raise ValueError(f"expected one window channel, got {out.shape[1]}")
        out = out[:, 0]
    return [detections_from_output(o, level_rects, upsample_num_times, **kwargs) for o in out]
