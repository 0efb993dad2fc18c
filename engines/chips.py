"""Face alignment: dlib's ``get_face_chip_details`` + ``get_face_chip`` re-implemented in numpy.

Bit-exact re-implementation of the 5-point face chip path of dlib 20.0.1
(``dlib/image_transforms/interpolation.h``, ``dlib/geometry/point_transforms.h``,
``dlib/image_transforms/image_pyramid.h``); see docs/dlib-model-formats.md §10 and §13.

* :func:`face_chip_details` maps 5 landmarks to dlib's ``chip_details`` (rect + angle) through a
  least-squares similarity transform (Umeyama) of the mean-face template onto the landmarks.
* :func:`extract_face_chips` cuts each chip out of the image **on its own**, exactly like the
  single-face ``dlib.get_face_chip``: its own crop of the image around the rotated rectangle, its
  own ``pyramid_down<2>`` levels when the face is much larger than the chip, then bilinear sampling
  with truncation to uint8 and black outside the source.

Everything is computed in float64 in the same operation order as dlib, so chips come out
pixel-identical (not merely close): bilinear blends of equal neighbours such as 255·(1−f) + 255·f
are not always exactly 255 in floating point, and the truncation to uint8 makes such last-bit
differences visible.
"""

from __future__ import annotations

import math

import numpy as np

from .loops import loops

__all__ = ["extract_face_chips", "face_chip_details", "pyramid_down2", "similarity_transform"]

# Mean-face template of dlib's 5-point model, in units of the unpadded chip (get_face_chip_details).
FACE_TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# dlib's ``mean_face_shape_x/y`` entries for the 68-point parts get_face_chip_details pairs with a
# 68-point shape: parts 27-54 and 60-64 (nose, eyes, upper mouth; no jaw, brows or lower lip).
FACE_TEMPLATE_68_PARTS = np.r_[27:55, 60:65]
FACE_TEMPLATE_68 = np.array(
    [
        [0.490127, 0.203352], [0.490127, 0.307009], [0.490127, 0.409805], [0.490127, 0.515625],  # 27-30
        [0.36688, 0.587326], [0.426036, 0.609345], [0.490127, 0.628106], [0.554217, 0.609345],  # 31-34
        [0.613373, 0.587326], [0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],  # 35-38
        [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077], [0.645647, 0.231733],  # 39-42
        [0.714428, 0.179852], [0.793132, 0.178758], [0.858516, 0.216423], [0.79751, 0.244077],  # 43-46
        [0.719335, 0.245099], [0.254149, 0.780233], [0.340985, 0.745405], [0.428858, 0.727388],  # 47-50
        [0.490127, 0.742578], [0.551395, 0.727388], [0.639268, 0.745405], [0.726104, 0.780233],  # 51-54
        [0.290379, 0.784792], [0.428096, 0.778746], [0.490127, 0.785343], [0.552157, 0.778746],  # 60-63
        [0.689874, 0.784792],  # 64
    ],
    dtype=np.float64,
)  # fmt: skip


def _template_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(template, image points) that dlib pairs for (N, 5, 2) or (N, 68, 2) landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim == 3 and pts.shape[1:] == (5, 2):
        return FACE_TEMPLATE_5, pts
    if pts.ndim == 3 and pts.shape[1:] == (68, 2):
        return FACE_TEMPLATE_68, pts[:, FACE_TEMPLATE_68_PARTS]
    raise ValueError(f"landmarks must be (N, 5, 2) or (N, 68, 2), got {pts.shape}")


# ------------------------------------------------------------------------------------------------
# small exact helpers


def _lround(x: np.ndarray) -> np.ndarray:
    """C ``std::lround``: round half away from zero (numpy's ``round`` is half-to-even), exactly."""
    x = np.asarray(x, dtype=np.float64)
    whole = np.trunc(x)
    frac = x - whole  # exact for doubles
    return (whole + np.where(np.abs(frac) >= 0.5, np.sign(x), 0.0)).astype(np.int64)


def _area(rect: np.ndarray) -> np.ndarray:
    """drectangle::area() of (..., 4) [l, t, r, b]: (r−l+1)·(b−t+1), or 0 when l > r or t > b."""
    x0, y0, x1, y1 = rect[..., 0], rect[..., 1], rect[..., 2], rect[..., 3]
    empty = (y0 > y1) | (x0 > x1)
    return np.where(empty, 0.0, (x1 - x0 + 1) * (y1 - y0 + 1))


def _rect_down(rect: np.ndarray) -> np.ndarray:
    """pyramid_down<2>::rect_down on (..., 4) [l, t, r, b]: p/2 − (1.25, 0.75) for both corners."""
    return rect / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])


def _rotated_corners(rect: np.ndarray, cos_a: np.ndarray, sin_a: np.ndarray) -> np.ndarray:
    """Corners tl, tr, bl, br of (N,4) rects rotated about their centres: (N,4,2).

    As dlib's ``rotate_point(center(rect), corner, angle)``: centre = (l+r, t+b)/2,
    then ``(cos·dx − sin·dy, sin·dx + cos·dy) + centre``.
    """
    x0, y0, x1, y1 = rect[:, 0], rect[:, 1], rect[:, 2], rect[:, 3]
    cx = (x0 + x1) / 2.0
    cy = (y0 + y1) / 2.0
    xs = np.stack([x0, x1, x0, x1], axis=1)
    ys = np.stack([y0, y0, y1, y1], axis=1)
    dx = xs - cx[:, None]
    dy = ys - cy[:, None]
    c = cos_a[:, None]
    s = sin_a[:, None]
    x = c * dx - s * dy
    y = s * dx + c * dy
    return np.stack([x + cx[:, None], y + cy[:, None]], axis=-1)


# ------------------------------------------------------------------------------------------------
# chip geometry


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points (Umeyama).

    ``src``, ``dst``: (..., K, 2) float, K ≥ 2, batched over the leading dimensions. Returns
    ``(M, t)`` with M (..., 2, 2) and t (..., 2) such that ``dst ≈ M @ src + t``, as dlib's
    ``find_similarity_transform`` (reflections excluded, scale c = trace(DS)/σ²_src, and c = 1 when
    all src points coincide).

    dlib takes the SVD of the 2×2 cross-covariance; in 2-D the optimal rotation and trace(DS) have
    the closed form used here (same means, variances and covariance, summed in dlib's order), which
    agrees with dlib's doubles to a few ulps.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.shape[-1] != 2 or src.shape[-2] < 2:
        raise ValueError(f"need matching (..., K>=2, 2) point sets, got {src.shape} and {dst.shape}")
    k = src.shape[-2]
    # sequential sums as in dlib (numpy's pairwise summation would reorder them)
    mean_src = src[..., 0, :].copy()
    mean_dst = dst[..., 0, :].copy()
    for i in range(1, k):
        mean_src = mean_src + src[..., i, :]
        mean_dst = mean_dst + dst[..., i, :]
    mean_src = mean_src / float(k)
    mean_dst = mean_dst / float(k)

    batch = src.shape[:-2]
    sigma_src = np.zeros(batch)
    cov = np.zeros((*batch, 2, 2))
    for i in range(k):
        ds = src[..., i, :] - mean_src
        dd = dst[..., i, :] - mean_dst
        sigma_src = sigma_src + (ds[..., 0] * ds[..., 0] + ds[..., 1] * ds[..., 1])
        cov = cov + dd[..., :, None] * ds[..., None, :]
    sigma_src = sigma_src / float(k)
    cov = cov / float(k)

    # R maximising trace(Rᵀ·cov) is the rotation by atan2(q, p) and the maximum is hypot(p, q)
    # (= d0 + d1, or d0 − d1 when det(cov) < 0), so c·R = [[p, −q], [q, p]] / σ².
    p = cov[..., 0, 0] + cov[..., 1, 1]
    q = cov[..., 1, 0] - cov[..., 0, 1]
    norm = np.hypot(p, q)
    safe = np.where(norm == 0, 1.0, norm)
    cos_r = np.where(norm == 0, 1.0, p / safe)
    sin_r = np.where(norm == 0, 0.0, q / safe)
    c = np.where(sigma_src != 0, 1.0 / np.where(sigma_src != 0, sigma_src, 1.0) * norm, 1.0)
    a = c * cos_r
    s = c * sin_r
    M = np.stack([np.stack([a, -s], axis=-1), np.stack([s, a], axis=-1)], axis=-2)
    t = np.stack(
        [
            mean_dst[..., 0] - (a * mean_src[..., 0] + (-s) * mean_src[..., 1]),
            mean_dst[..., 1] - (s * mean_src[..., 0] + a * mean_src[..., 1]),
        ],
        axis=-1,
    )
    return M, t


def _check_size(size: int, padding: float) -> None:
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not padding >= 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")


def face_chip_details(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """dlib's ``get_face_chip_details`` for 5- or 68-point landmarks, batched over faces.

    ``landmarks``: (N, 5, 2) pixel points (x, y) in dlib's 5-point order, or (N, 68, 2) in the
    iBUG 300-W order (dlib then fits its mean face to parts 27-54 and 60-64). Returns the chip
    rectangles (N, 4) float64 ``[left, top, right, bottom]`` (dlib drectangle, before rotation)
    and the angles (N,) float64 in radians. Chips are ``size × size``.
    """
    _check_size(size, padding)
    template, pts = _template_points(landmarks)
    n = pts.shape[0]
    chip_pts = (padding + template) / (2 * padding + 1) * float(size)
    M, t = similarity_transform(np.broadcast_to(chip_pts, pts.shape), pts)
    m00, m10 = M[:, 0, 0], M[:, 1, 0]
    # std::atan2 per face through libm, as dlib (numpy's SIMD transcendentals may differ in the last bit)
    angles = np.array([math.atan2(y, x) for x, y in zip(m00.tolist(), m10.tolist(), strict=True)])
    scale = np.sqrt(m00 * m00 + m10 * m10)
    half = size / 2.0
    cx = (M[:, 0, 0] * half + M[:, 0, 1] * half) + t[:, 0]
    cy = (M[:, 1, 0] * half + M[:, 1, 1] * half) + t[:, 1]
    w = size * scale - 1  # centered_drect: (width − 1)/2 either side of the centre
    rects = np.stack([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], axis=1)
    return rects.reshape(n, 4), angles.reshape(n)


# ------------------------------------------------------------------------------------------------
# pixels


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on a uint8 (H, W) or (H, W, C) image.

    Separable [1 4 6 4 1] filter evaluated only at even offsets: output pixel (r, c) uses input
    rows 2r…2r+4 and columns 2c…2c+4 (no border handling: the output is
    ((H−3) div 2) × ((W−3) div 2)), then ``sum div 256`` (truncation). Empty if H ≤ 8 or W ≤ 8.
    """
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, *img.shape[2:]), dtype=img.dtype)
    ho, wo = (h - 3) // 2, (w - 3) // 2
    a = img.astype(np.int32)
    # rows of 16-bit sums fit: 255·16 per pass, 255·256 = 65280 after both
    tmp = (
        a[:, 0 : 2 * wo : 2]
        + 4 * a[:, 1 : 2 * wo + 1 : 2]
        + 6 * a[:, 2 : 2 * wo + 2 : 2]
        + 4 * a[:, 3 : 2 * wo + 3 : 2]
        + a[:, 4 : 2 * wo + 4 : 2]
    )
    out = (
        tmp[0 : 2 * ho : 2]
        + 4 * tmp[1 : 2 * ho + 1 : 2]
        + 6 * tmp[2 : 2 * ho + 2 : 2]
        + 4 * tmp[3 : 2 * ho + 3 : 2]
        + tmp[4 : 2 * ho + 4 : 2]
    )
    return (out >> 8).astype(img.dtype)


def _bilinear(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` + black background: src (H, W, C) uint8 at float points.

    Black where floor(x) < 0, floor(y) < 0, floor(x)+1 ≥ W or floor(y)+1 ≥ H (so the last row and
    column of the source are never sampled exactly); otherwise the 4-tap blend in double, truncated.
    """
    h, w, ch = src.shape
    fx = np.floor(x)
    fy = np.floor(y)
    ok = (fx >= 0) & (fy >= 0) & (fx + 1 < w) & (fy + 1 < h)  # NaN compares false → black
    if not ok.any():
        return np.zeros((*x.shape, ch), dtype=np.uint8)
    # gather at clamped indices everywhere (no boolean compaction), blank the outside at the end
    left = np.where(ok, fx, 0).astype(np.intp)
    top = np.where(ok, fy, 0).astype(np.intp)
    lr = (x - fx)[..., None]
    tb = (y - fy)[..., None]
    flat = src.reshape(h * w, ch)
    idx = top * w + left
    tl = flat[idx].astype(np.float64)
    tr = flat[idx + 1].astype(np.float64)
    bl = flat[idx + w].astype(np.float64)
    br = flat[idx + w + 1].astype(np.float64)
    v = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    v = np.where(ok[..., None], np.minimum(v, 255.0), 0.0)  # NaN/inf weights outside: masked
    return v.astype(np.uint8)  # static_cast<unsigned char>: truncation


def _sample(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`_bilinear`, in C where the compiled loops are (:mod:`.loops`; the same bits, ~20x faster)."""
    native = loops()
    return native.chip_bilinear(src, x, y) if native.kind == "C" else _bilinear(src, x, y)


def _plain_copy(img: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """dlib's basic_extract_image_chip: copy lround(rect) with black outside the image."""
    x0, y0, x1, y1 = (int(v) for v in _lround(rect))
    h, w = img.shape[:2]
    out = np.zeros((y1 - y0 + 1, x1 - x0 + 1, img.shape[2]), dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if cx0 <= cx1 and cy0 <= cy1:
        out[cy0 - y0 : cy1 - y0 + 1, cx0 - x0 : cx1 - x0 + 1] = img[cy0 : cy1 + 1, cx0 : cx1 + 1]
    return out


def extract_face_chips(image: np.ndarray, landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Aligned face chips exactly as dlib's single-face ``get_face_chip(img, shape, size, padding)``.

    ``image``: (H, W, 3) uint8 RGB, or (H, W) uint8 grey (treated as R = G = B).
    ``landmarks``: (N, 5, 2) pixel points in dlib's 5-point order, or (N, 68, 2) 68-point shapes.
    Returns (N, size, size, 3) uint8. Each face is extracted independently (its own crop and
    pyramid), which is what ``dlib.get_face_chip`` and face_recognition's one-face-per-call
    descriptors see; dlib's multi-face ``get_face_chips`` shares one pyramid and can differ.
    """
    _check_size(size, padding)
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {img.dtype}")
    grey = img.ndim == 2
    if grey:
        img = img[:, :, None]
    elif img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got {img.shape}")
    pts = np.asarray(landmarks)
    _template_points(pts)  # raises on a shape dlib has no template for
    if pts.shape[0] == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    rects, angles = face_chip_details(pts, size, padding)
    return extract_image_chips(img, rects, angles, size)


# Over 60 lines: dlib's extract_image_chips step by step, in one piece so it reads against dlib's source.
def extract_image_chips(image: np.ndarray, rects: np.ndarray, angles: np.ndarray, size: int) -> np.ndarray:
    """dlib's ``extract_image_chip(img, chip_details(rect, chip_dims(size, size), angle))``, bilinear, per rect.

    ``image``: (H, W, 3) or (H, W, 1) uint8; ``rects``: (N, 4) float [l, t, r, b]; ``angles``: (N,) radians.
    Crop of each rotated rectangle's bounding box (grown by the pyramid margin), ``pyramid_down<2>``
    levels while the rectangle is larger than the chip, bilinear sampling truncated to uint8, black
    outside. Returns (N, size, size, 3) uint8.
    """
    img = image
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    n = len(rects)
    chips = np.zeros((n, size, size, 3), dtype=np.uint8)
    if n == 0:
        return chips
    target = float(size * size)  # chip_details::size() = rows·cols
    cos_a = np.array([math.cos(a) for a in angles.tolist()])  # libm, as dlib's std::cos/std::sin
    sin_a = np.array([math.sin(a) for a in angles.tolist()])

    # pyramid depth and crop growth: depth = #{k ≥ 1 : area(rect_down^k(rect)) > rows·cols}
    depth = np.zeros(n, dtype=np.int64)
    grow = np.full(n, 2.0)
    down = _rect_down(rects)
    active = _area(down) > target
    while active.any():
        down = np.where(active[:, None], _rect_down(down), down)
        depth += active
        grow = np.where(active, grow * 2 + 2, grow)
        active &= _area(down) > target

    # crop: bounding box of the rotated rect, grown, clipped to the image, each edge lround-ed
    h, w = img.shape[:2]
    corners = _rotated_corners(rects, cos_a, sin_a)
    lo = corners.min(axis=1) - grow[:, None]
    hi = corners.max(axis=1) + grow[:, None]
    box = _lround(
        np.stack(
            [np.maximum(lo[:, 0], 0.0), np.maximum(lo[:, 1], 0.0),
             np.minimum(hi[:, 0], w - 1.0), np.minimum(hi[:, 1], h - 1.0)],
            axis=1,
        )
    )  # fmt: skip

    # chip rect in the crop's coordinates, brought down to the level it is sampled from
    local = rects - np.concatenate([box[:, :2], box[:, :2]], axis=1).astype(np.float64)
    level = np.full(n, -1, dtype=np.int64)
    active = _area(_rect_down(local)) > target
    while active.any():
        local = np.where(active[:, None], _rect_down(local), local)
        level += active
        active &= _area(_rect_down(local)) > target

    # affine map chip → source through chip (0,0), (size−1,0), (0,size−1) and the rotated
    # tl, tr, bl corners of the local rect; evaluated as m·p + b in dlib's order
    lc = _rotated_corners(local, cos_a, sin_a)
    tl, tr, bl = lc[:, 0], lc[:, 1], lc[:, 2]
    col_x = (tr - tl) / float(size - 1)  # (N, 2): d(source)/d(chip column)
    col_y = (bl - tl) / float(size - 1)  # d(source)/d(chip row)
    grid = np.arange(size, dtype=np.float64)
    cc = grid[None, None, :]
    rr = grid[None, :, None]
    xs = (col_x[:, 0, None, None] * cc + col_y[:, 0, None, None] * rr) + tl[:, 0, None, None]
    ys = (col_x[:, 1, None, None] * cc + col_y[:, 1, None, None] * rr) + tl[:, 1, None, None]

    for i in range(n):
        l0, t0, r0, b0 = rects[i]
        if angles[i] == 0 and t0 <= b0 and l0 <= r0 and b0 - t0 + 1 == size and r0 - l0 + 1 == size:
            chip = _plain_copy(img, rects[i])
        else:
            x0, y0, x1, y1 = (int(v) for v in box[i])
            src = img[y0 : y1 + 1, x0 : x1 + 1] if (x0 <= x1 and y0 <= y1) else img[:0, :0]
            for _ in range(int(level[i]) + 1):
                src = pyramid_down2(src)
            chip = _sample(src, xs[i], ys[i])
        chips[i] = chip  # broadcasts a grey (…, 1) chip to R = G = B
    return chips
