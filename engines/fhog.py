"""dlib's fHOG features (``extract_fhog_features``, cell size 8), bit-identical, in numpy.

The 31-plane Felzenszwalb HOG of ``dlib/image_transforms/fhog.h`` as dlib-bin's x86 build
computes it (spec: ``dlib-hog-and-68.md`` §4). Bit-exactness hangs on details that a plain
HOG would not care about, each reproduced here:

* the channel with the strongest gradient is chosen with ties going to the *later* channel in
  the 8-wide SIMD column blocks and to the *earlier* one in the scalar tail columns;
* the four bilinear votes of a pixel associate their float32 products differently in SIMD and
  tail columns;
* every histogram bin is a float32 sum in raster order of the voting pixels (``np.add.at``
  applies its updates in index order, so one call with a raster-ordered index list is exact;
  numpy's pairwise reductions would not be);
* block energies, the four normalisation lanes and the texture features keep dlib's summation
  order (the ``dpps`` lane order ``(q0+q1)+(q2+q3)``).

Only what the frontal face detector needs is implemented: cell size 8, filter padding 10.
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["CELL_SIZE", "FILTER_PADDING", "NUM_FEATURES", "fhog_cells", "fhog_features"]

CELL_SIZE = 8
FILTER_PADDING = 10  # rows and columns, as scan_fhog_pyramid passes them for a 10x10 filter
NUM_FEATURES = 31
_F32 = np.float32

# The nine unit vectors of fhog.h (float constants).
_UU = np.array([1.0, 0.9397, 0.7660, 0.500, 0.1736, -0.1736, -0.5000, -0.7660, -0.9397], dtype=_F32)
_VV = np.array([0.0, 0.3420, 0.6428, 0.8660, 0.9848, 0.9848, 0.8660, 0.6428, 0.3420], dtype=_F32)


@cache
def _orientation_lut() -> tuple[np.ndarray, np.ndarray]:
    """Bin (0..17) and magnitude ``sqrtf(gx²+gy²)`` for every ``(gx, gy)`` in [-255, 255]².

    Indexed by ``(gx + 255) * 511 + (gy + 255)``. The bin search is dlib's: float32 dot products
    (no FMA), the first strictly larger ``d`` or ``-d`` wins.
    """
    g = np.arange(-255, 256, dtype=_F32)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    best = np.zeros(gx.shape, dtype=_F32)
    bins = np.zeros(gx.shape, dtype=np.uint8)
    for o in range(9):
        d = gx * _UU[o] + gy * _VV[o]  # two float32 products, then a float32 add
        m = d > best
        best[m], bins[m] = d[m], o
        m = -d > best
        best[m], bins[m] = -d[m], o + 9
    mag = np.sqrt(gx * gx + gy * gy)  # exact integers below 2**24, then a correctly rounded sqrtf
    return bins.ravel(), mag.ravel()


def fhog_cells(height: int, width: int) -> tuple[int, int]:
    """``(cells_nr, cells_nc)``: round-half-up of the image size over 8, as dlib computes it."""
    return (height + CELL_SIZE // 2) // CELL_SIZE, (width + CELL_SIZE // 2) // CELL_SIZE


def _gradients(image: np.ndarray, vis_nr: int, vis_nc: int, n_simd: int) -> np.ndarray:
    """LUT key ``(gx+255)*511 + (gy+255)`` of the winning channel at pixels [1,vis_nr) x [1,vis_nc)."""
    # planar int32 copy: contiguous rows per channel
    planes = (image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)).astype(np.int32)
    gx = planes[:, 1:vis_nr, 2 : vis_nc + 1] - planes[:, 1:vis_nr, 0 : vis_nc - 1]
    gy = planes[:, 2 : vis_nr + 1, 1:vis_nc] - planes[:, 0 : vis_nr - 1, 1:vis_nc]
    key = gx * 511 + gy
    key += 255 * 511 + 255
    if image.ndim == 2:
        return key[0]
    length = gx * gx
    length += gy * gy
    out = np.empty(key.shape[1:], dtype=np.int32)
    # SIMD blocks: t = lenR > lenG ? R : G, then len_t > lenB ? t : B (ties go to the later channel).
    s = slice(0, n_simd)
    lr, lg, lb = length[0, :, s], length[1, :, s], length[2, :, s]
    r_wins = lr > lg
    t_key = np.where(r_wins, key[0, :, s], key[1, :, s])
    t_len = np.where(r_wins, lr, lg)
    out[:, s] = np.where(t_len > lb, t_key, key[2, :, s])
    # Scalar tail: start with R, switch on a strictly larger length (ties stay with the earlier channel).
    t = slice(n_simd, None)
    lr, lg, lb = length[0, :, t], length[1, :, t], length[2, :, t]
    g_wins = lg > lr
    s_key = np.where(g_wins, key[1, :, t], key[0, :, t])
    s_len = np.where(g_wins, lg, lr)
    out[:, t] = np.where(lb > s_len, key[2, :, t], s_key)
    return out


def _vote_fractions(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel coordinate 0..n-1: ``i = floor(p)``, ``v0 = p - i`` and ``v1 = 1 - v0`` (float32),
    with ``p = f32((k + 0.5)/8 - 0.5)`` computed in double."""
    p = ((np.arange(n, dtype=np.float64) + 0.5) / CELL_SIZE - 0.5).astype(_F32)
    i = np.floor(p)
    v0 = (p - i).astype(_F32)
    return i.astype(np.int64), v0, (_F32(1.0) - v0)


def _histogram(image: np.ndarray, cells_nr: int, cells_nc: int) -> np.ndarray:
    """The float32 ``(cells_nr+2, cells_nc+2, 18)`` orientation histogram with dlib's vote order."""
    h, w = image.shape[:2]
    vis_nr = min(cells_nr * CELL_SIZE, h) - 1
    vis_nc = min(cells_nc * CELL_SIZE, w) - 1
    NR, NC = cells_nr + 2, cells_nc + 2
    hist = np.zeros(NR * NC * 18, dtype=_F32)
    if vis_nr <= 1 or vis_nc <= 1:
        return hist.reshape(NR, NC, 18)
    # Columns 1, 9, 17, ... in whole blocks of 8 while x < vis_nc - 7 are the SIMD columns.
    n_simd = 8 * max(0, (vis_nc - 1) // 8)  # counted from x = 1
    bins_lut, mag_lut = _orientation_lut()
    key = _gradients(image, vis_nr, vis_nc, n_simd)
    v = mag_lut[key]
    iy, vy0, vy1 = _vote_fractions(vis_nr)
    ix, vx0, vx1 = _vote_fractions(vis_nc)
    iy, vy0, vy1 = iy[1:, None], vy0[1:, None], vy1[1:, None]
    ix, vx0, vx1 = ix[1:], vx0[1:], vx1[1:]
    # A pixel's four votes, in dlib's order: cells [iy+1][ix+1], [iy+2][ix+1], [iy+1][ix+2], [iy+2][ix+2].
    votes = np.empty((*v.shape, 4), dtype=_F32)
    s, t = slice(0, n_simd), slice(n_simd, None)
    for k, (vy, vx) in enumerate(((vy1, vx1), (vy0, vx1), (vy1, vx0), (vy0, vx0))):
        votes[:, s, k] = vy * (vx[s] * v[:, s])  # SIMD columns: vy*(vx*v)
        votes[:, t, k] = (vy * vx[t]) * v[:, t]  # tail columns: (vy*vx)*v
    index = ((iy + 1) * NC + (ix + 1)) * 18 + bins_lut[key]
    index = index[..., None] + np.array([0, NC * 18, 18, NC * 18 + 18])
    # Each (cell, bin) must sum its votes in raster order of the pixels: np.add.at applies the
    # updates one by one in index-array order, and the arrays are in pixel raster order.
    np.add.at(hist, index.ravel(), votes.ravel())
    return hist.reshape(NR, NC, 18)


def fhog_features(image: np.ndarray) -> np.ndarray:
    """dlib's ``extract_fhog_features(img, hog, 8, 10, 10)``: float32 ``(31, hog_nr+9, hog_nc+9)``.

    ``image`` is ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8 grey. Feature cell ``(y, x)`` is
    stored at ``(y+4, x+4)``; the 4 leading and 5 trailing rows/columns are zero. An image too
    small for one feature cell gives ``(31, 0, 0)``.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected (H,W) or (H,W,3) uint8, got {img.shape} {img.dtype}")
    cells_nr, cells_nc = fhog_cells(*img.shape[:2])
    hog_nr, hog_nc = cells_nr - 2, cells_nc - 2
    if hog_nr <= 0 or hog_nc <= 0:
        return np.zeros((NUM_FEATURES, 0, 0), dtype=_F32)
    hist = _histogram(img, cells_nr, cells_nc)
    # Energy of cell (r, c) = hist[r+1][c+1]: sequential float32 sum of squared (o, o+9) sums.
    inner = hist[1 : cells_nr + 1, 1 : cells_nc + 1]
    folded = inner[..., :9] + inner[..., 9:]
    sq = folded * folded
    energy = sq[..., 0].copy()
    for o in range(1, 9):
        energy += sq[..., o]
    E = energy

    def block(p0: int, q0: int) -> np.ndarray:  # S(p, q) for p = p0 + y, q = q0 + x
        e00 = E[p0 : p0 + hog_nr, q0 : q0 + hog_nc]
        e01 = E[p0 : p0 + hog_nr, q0 + 1 : q0 + 1 + hog_nc]
        e10 = E[p0 + 1 : p0 + 1 + hog_nr, q0 : q0 + hog_nc]
        e11 = E[p0 + 1 : p0 + 1 + hog_nr, q0 + 1 : q0 + 1 + hog_nc]
        return ((e00 + e01) + e10) + e11

    # Lanes: lower-right, upper-right, lower-left, upper-left blocks of feature cell (y, x).
    S = np.stack([block(1, 1), block(0, 1), block(1, 0), block(0, 0)])  # (4, hog_nr, hog_nc)
    nn = _F32(0.2) * np.sqrt(S + _F32(1e-4))
    n = _F32(0.1) / nn
    nn, n = nn[..., None], n[..., None]
    h = hist[2 : hog_nr + 2, 2 : hog_nc + 2]  # (hog_nr, hog_nc, 18)
    q = np.minimum(h[None], nn) * n  # (4, hog_nr, hog_nc, 18)
    feats = np.zeros((hog_nr, hog_nc, NUM_FEATURES), dtype=_F32)
    feats[..., :18] = (q[0] + q[1]) + (q[2] + q[3])
    hf = h[..., :9] + h[..., 9:]
    qi = np.minimum(hf[None], nn) * n
    feats[..., 18:27] = (qi[0] + qi[1]) + (qi[2] + qi[3])
    t = np.zeros(q.shape[:3], dtype=_F32)
    for o in range(0, 18, 3):
        t = t + ((q[..., o] + q[..., o + 1]) + q[..., o + 2])
    t = t * _F32(0.4714)
    feats[..., 27:] = np.moveaxis(t, 0, -1)
    pad = (FILTER_PADDING - 1) // 2
    out = np.zeros((NUM_FEATURES, hog_nr + FILTER_PADDING - 1, hog_nc + FILTER_PADDING - 1), dtype=_F32)
    out[:, pad : pad + hog_nr, pad : pad + hog_nc] = np.moveaxis(feats, -1, 0)
    return out
