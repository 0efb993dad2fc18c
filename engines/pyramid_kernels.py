"""Compiled (numba) loops of the MMOD detector's image pyramid: dlib's bilinear ``resize_image``.

The float32 planes of the tiled pyramid (each level resized from the one before) and the RGB
upsampling (``pyramid_up``) dominate the cost of building the detector's input; in numpy they took
a gather per weight and per chunk. These loops do the same arithmetic operation by operation
(float32 where dlib's SSE lanes compute in float, double in its scalar tail; no ``fastmath``, so no
FMA contraction or reassociation), so the results stay bit-identical to dlib's (``tests/test_pyramid.py``).
The RGB uint8 resize is the HOG detector's (`hog_kernels.resize_u8`): dlib runs the same code for both. The
same loops in C (`csrc/pyramid_loops.c`) run instead where a C compiler is found (:mod:`facestream.engines.loops`).
Machine code is cached on disk (:mod:`facestream.engines.jit`).
"""

from __future__ import annotations

import numpy as np

from facestream.engines.jit import compiled

__all__ = ["normalize_into", "resize_f32"]


@compiled()
def resize_f32(src, out, top, bottom, tbf, itbf, tbd, n_simd, left, right, ilr, lr):  # pragma: no cover - compiled
    """Bilinear resize of float32 planes ``src`` ``(P, h, w)`` into ``out`` ``(P, oh, ow)``.

    Per output row: source rows ``top``/``bottom``, ``tbf``/``itbf`` = f32(tb)/f32(1-tb), ``tbd`` = tb.
    Per output column: source columns ``left``/``right`` and float32 weights ``ilr``/``lr``. Columns
    ``[0, n_simd)`` blend as dlib's SSE loop, ``((itb*ilr)*TL + (itb*lr)*TR) + (tb*ilr)*BL) + (tb*lr)*BR``
    in float32; the others blend x in float32 and y in double, as its scalar tail.
    """
    planes, out_h, out_w = out.shape
    for p in range(planes):
        for r in range(out_h):
            t, b = top[r], bottom[r]
            ty, iy = tbf[r], itbf[r]
            row_t, row_b, o = src[p, t], src[p, b], out[p, r]
            for c in range(n_simd):
                il, lc = ilr[c], lr[c]
                o[c] = (((iy * il) * row_t[left[c]] + (iy * lc) * row_t[right[c]]) + (ty * il) * row_b[left[c]]) + (
                    ty * lc
                ) * row_b[right[c]]
            tb = tbd[r]
            for c in range(n_simd, out_w):
                il, lc = ilr[c], lr[c]
                top_x = il * row_t[left[c]] + lc * row_t[right[c]]
                bot_x = il * row_b[left[c]] + lc * row_b[right[c]]
                o[c] = np.float32((1.0 - tb) * np.float64(top_x) + tb * np.float64(bot_x))
    return out


@compiled()
def normalize_into(images, means, out):  # pragma: no cover - compiled
    """uint8 RGB ``images`` ``(N, H, W, 3)`` -> ``out`` planes ``(N*3, H, W)`` (a view into the tensor):
    ``(float32(pixel) - mean) / 256`` per channel, as dlib's input layer (the division is exact)."""
    n_images, height, width, _ = images.shape
    scale = np.float32(256.0)
    for n in range(n_images):
        for ch in range(3):
            m = means[ch]
            for r in range(height):
                o = out[n * 3 + ch, r]
                row = images[n, r]
                for c in range(width):
                    o[c] = (np.float32(row[c, ch]) - m) / scale
    return out
