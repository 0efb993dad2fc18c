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
_ROW_BLOCK = 32  # pixel rows per block in the histogram pass

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


def _gradients(image: np.ndarray, y0: int, y1: int, vis_nc: int, n_simd: int) -> np.ndarray:
    """LUT key ``(gx+255)*511 + (gy+255)`` of the winning channel at pixel rows [y0, y1), columns [1, vis_nc)."""
    rows = image[y0 - 1 : y1 + 1].astype(np.int32)
    gx = rows[1:-1, 2 : vis_nc + 1] - rows[1:-1, 0 : vis_nc - 1]
    gy = rows[2:, 1:vis_nc] - rows[:-2, 1:vis_nc]
    if image.ndim == 3:
        length = gx * gx
        length += gy * gy
        lr, lg, lb = length[..., 0], length[..., 1], length[..., 2]
        gxs, gys = (gx[..., 0], gx[..., 1], gx[..., 2]), (gy[..., 0], gy[..., 1], gy[..., 2])
        out_x, out_y = np.empty(lr.shape, np.int32), np.empty(lr.shape, np.int32)
        # SIMD blocks: t = lenR > lenG ? R : G, then len_t > lenB ? t : B (ties go to the later channel).
        s = slice(0, n_simd)
        r_wins = lr[:, s] > lg[:, s]
        keep_t = np.where(r_wins, lr[:, s], lg[:, s]) > lb[:, s]
        for out, g in ((out_x, gxs), (out_y, gys)):
            out[:, s] = np.where(keep_t, np.where(r_wins, g[0][:, s], g[1][:, s]), g[2][:, s])
        # Scalar tail: start with R, switch on a strictly larger length (ties stay with the earlier channel).
        t = slice(n_simd, None)
        g_wins = lg[:, t] > lr[:, t]
        b_wins = lb[:, t] > np.where(g_wins, lg[:, t], lr[:, t])
        for out, g in ((out_x, gxs), (out_y, gys)):
            out[:, t] = np.where(b_wins, g[2][:, t], np.where(g_wins, g[1][:, t], g[0][:, t]))
        gx, gy = out_x, out_y
    key = gx * 511
    key += gy
    key += 255 * 511 + 255
    return key


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
    iy, vy0, vy1 = _vote_fractions(vis_nr)
    ix, vx0, vx1 = _vote_fractions(vis_nc)
    ix, vx0, vx1 = ix[1:], vx0[1:], vx1[1:]
    col_base = (ix + 1) * 18
    corner = np.array([0, NC * 18, 18, NC * 18 + 18])  # the four cells a pixel votes for, in dlib's order
    s, t = slice(0, n_simd), slice(n_simd, None)
    # Row blocks, top to bottom: every (cell, bin) still gets its votes in pixel raster order, and the
    # temporaries stay in cache.
    for y0 in range(1, vis_nr, _ROW_BLOCK):
        y1 = min(y0 + _ROW_BLOCK, vis_nr)
        key = _gradients(image, y0, y1, vis_nc, n_simd)
        v = mag_lut[key]
        ry = slice(y0, y1)
        # Cells [iy+1][ix+1], [iy+2][ix+1], [iy+1][ix+2], [iy+2][ix+2], with weights vy1·vx1, vy0·vx1, ...
        votes = np.empty((*v.shape, 4), dtype=_F32)
        xv1, xv0 = vx1[s] * v[:, s], vx0[s] * v[:, s]
        for k, (vy, vx, xv) in enumerate(((vy1, vx1, xv1), (vy0, vx1, xv1), (vy1, vx0, xv0), (vy0, vx0, xv0))):
            w_y = vy[ry, None]
            np.multiply(w_y, xv, out=votes[:, s, k])  # SIMD columns: vy*(vx*v)
            votes[:, t, k] = (w_y * vx[t]) * v[:, t]  # tail columns: (vy*vx)*v
        index = bins_lut[key].astype(np.intp)
        index += (iy[ry, None] + 1) * (NC * 18)
        index += col_base
        # np.add.at applies the updates one by one in index-array order (pixel raster order here).
        np.add.at(hist, (index[..., None] + corner).ravel(), votes.ravel())
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
