"""dlib's fHOG features (``extract_fhog_features``, cell size 8), bit-identical.

The 31-plane Felzenszwalb HOG of ``dlib/image_transforms/fhog.h`` as dlib-bin's x86 build
computes it (spec: ``dlib-hog-and-68.md`` §4). Bit-exactness hangs on details that a plain
HOG would not care about, each reproduced here:

* the channel with the strongest gradient is chosen with ties going to the *later* channel in
  the 8-wide SIMD column blocks and to the *earlier* one in the scalar tail columns;
* the four bilinear votes of a pixel associate their float32 products differently in SIMD and
  tail columns;
* every histogram bin is a float32 sum in raster order of the voting pixels (pairwise or
  reordered reductions would not be exact);
* block energies, the four normalisation lanes and the texture features keep dlib's summation
  order (the ``dpps`` lane order ``(q0+q1)+(q2+q3)``).

Only what the frontal face detector needs is implemented: cell size 8, filter padding 10. The
per-pixel loops are compiled (:mod:`facestream.engines.hog_kernels`); the orientation table and
the vote positions are prepared here in numpy.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from facestream.engines.loops import loops

__all__ = ["CELL_SIZE", "FILTER_PADDING", "NUM_FEATURES", "fhog_cells", "fhog_features"]

CELL_SIZE = 8
FILTER_PADDING = 10  # rows and columns, as scan_fhog_pyramid passes them for a 10x10 filter
NUM_FEATURES = 31
_F32 = np.float32

# The nine unit vectors of fhog.h (float constants).
_UU = np.array([1.0, 0.9397, 0.7660, 0.500, 0.1736, -0.1736, -0.5000, -0.7660, -0.9397], dtype=_F32)
_VV = np.array([0.0, 0.3420, 0.6428, 0.8660, 0.9848, 0.9848, 0.8660, 0.6428, 0.3420], dtype=_F32)


@cache
def _orientation_lut() -> np.ndarray:
    """The bin (0..17) of every gradient ``(gx, gy)`` in [-255, 255]².

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
    return bins.ravel()


def fhog_cells(height: int, width: int) -> tuple[int, int]:
    """``(cells_nr, cells_nc)``: round-half-up of the image size over 8, as dlib computes it."""
    return (height + CELL_SIZE // 2) // CELL_SIZE, (width + CELL_SIZE // 2) // CELL_SIZE


@lru_cache(maxsize=128)
def _vote_fractions(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel coordinate 0..n-1: ``i = floor(p)``, ``v0 = p - i`` and ``v1 = 1 - v0`` (float32),
    with ``p = f32((k + 0.5)/8 - 0.5)`` computed in double."""
    p = ((np.arange(n, dtype=np.float64) + 0.5) / CELL_SIZE - 0.5).astype(_F32)
    i = np.floor(p)
    v0 = (p - i).astype(_F32)
    return i.astype(np.int64), v0, (_F32(1.0) - v0)


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
    bins_lut = _orientation_lut()
    h, w = img.shape[:2]
    planar = img if img.ndim == 3 else img[:, :, None]
    return loops().fhog_features_u8(np.ascontiguousarray(planar), cells_nr, cells_nc, bins_lut,
                            _vote_fractions(h), _vote_fractions(w))  # fmt: skip
