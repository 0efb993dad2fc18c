"""Compiled (numba) loops of the HOG detector: dlib's bilinear resize, fHOG and separable filtering.

Each loop follows dlib-bin's x86 arithmetic operation by operation (spec ``dlib-hog-and-68.md``
§3.1, §4, §6), so the results are bit-identical to dlib's:

* float32 wherever dlib computes in float, double where it computes in double; every constant is
  passed in (or typed) as float32 so that no operation silently widens to double;
* the same association and summation order (numba compiles without ``fastmath``, so LLVM neither
  reassociates nor contracts ``a*b + c`` into an FMA; vectorising *across* independent pixels or
  cells, which it does, changes no result);
* each loop is serial and releases the GIL (``nogil``): the detector runs pyramid levels on
  several threads at once (:mod:`facestream.engines.hog`), a coarser split than ``prange`` inside
  every loop, whose per-call thread wake-ups cost more than they save on a busy machine.

Compiled code is cached on disk (``cache=True``, :mod:`facestream.engines.jit`) under the facestream cache directory
(``<cache>/numba``, see :func:`facestream.engines.cachedir.default_cache_dir`) unless
``NUMBA_CACHE_DIR`` is set, so a new process loads the machine code instead of compiling it.
"""

from __future__ import annotations

import numba
import numpy as np

from facestream.engines.jit import compiled

__all__ = ["approximate_responses", "exact_scores", "fhog_features_u8", "resize_u8"]

_F32 = np.float32
_TAPS = 10  # filter rows = columns


# -- resize_image (bilinear, align corners), spec §3.1 ------------------------------------------


# Over 60 lines: one compiled loop: numba inlines nothing across calls here, so the loop stays whole.
@compiled()
def resize_u8(src, out, top, bottom, tbf, itbf, tbd, n_simd, flat_ilr, flat_lr, left, right, lrd):
    """dlib's bilinear ``resize_image`` of an ``(H, W, C)`` uint8 image into ``out`` ``(h, w, C)``: C = 3 is
    RGB, C = 1 grey (the two differ in rounding and in the tail columns).

    Per output row: ``top``/``bottom`` source rows, ``tbf``/``itbf`` = f32(tb)/f32(1-tb), ``tbd`` = tb.
    SIMD columns ``[0, n_simd)``, flattened with their channels (index ``c*C + ch``): source columns
    ``left`` and ``left + 1`` (dlib's SIMD loop stops before a right column would leave the image) and
    float32 weights ``flat_ilr``/``flat_lr``; the blend
    ``((tl*TL + tr*TR) + bl*BL) + br*BR`` is float32, truncated for RGB and rounded (``+0.5``) for
    grey. Tail columns: source columns ``left``/``right`` and the double ``lrd``; RGB blends in double
    and truncates; grey blends x in float32 and y in double, stores to float, clamps and truncates.
    """
    H, W, C = src.shape
    out_h, out_w = out.shape[0], out.shape[1]
    flat_src = src.reshape((H, W * C))
    flat_out = out.reshape((out_h, out_w * C))
    bias = _F32(0.5) if C == 1 else _F32(0.0)  # adding +0.0 to a non-negative float changes nothing
    n = n_simd * C
    # The left/right source pixels of every SIMD column, per source row (top and bottom), as float32:
    # gathered once per source row and shared by the output rows that read it.
    top_l, top_r = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    bot_l, bot_r = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    loaded_top, loaded_bottom = -1, -1
    for r in range(out_h):
        t, b = top[r], bottom[r]
        if t != loaded_top:
            if t == loaded_bottom:
                top_l, bot_l = bot_l, top_l
                top_r, bot_r = bot_r, top_r
                loaded_bottom = -1
            else:
                _column_pairs(flat_src[t], left, n_simd, C, top_l, top_r)
            loaded_top = t
        if b != loaded_bottom:
            _column_pairs(flat_src[b], left, n_simd, C, bot_l, bot_r)
            loaded_bottom = b
        ty, iy = tbf[r], itbf[r]
        o = flat_out[r]
        for j in range(n):
            il, lr = flat_ilr[j], flat_lr[j]
            v = (((iy * il) * top_l[j] + (iy * lr) * top_r[j]) + (ty * il) * bot_l[j]) + (ty * lr) * bot_r[j]
            o[j] = np.uint8(np.int32(v + bias))
        tb = tbd[r]
        for c in range(n_simd, out_w):
            lc, rc = left[c], right[c]
            for ch in range(C):
                if C == 1:
                    lf = _F32(lrd[c])
                    ilf = _F32(1.0) - lf
                    top_x = ilf * _F32(src[t, lc, ch]) + lf * _F32(src[t, rc, ch])
                    bot_x = ilf * _F32(src[b, lc, ch]) + lf * _F32(src[b, rc, ch])
                    v = _F32((1.0 - tb) * np.float64(top_x) + tb * np.float64(bot_x))
                    out[r, c, ch] = np.uint8(np.int32(min(max(v, _F32(0.0)), _F32(255.0))))
                else:
                    lr = lrd[c]
                    top_x = (1.0 - lr) * np.float64(src[t, lc, ch]) + lr * np.float64(src[t, rc, ch])
                    bot_x = (1.0 - lr) * np.float64(src[b, lc, ch]) + lr * np.float64(src[b, rc, ch])
                    out[r, c, ch] = np.uint8(np.int64((1.0 - tb) * top_x + tb * bot_x))
    return out


@compiled()
def _column_pairs(row, left, n_simd, C, out_left, out_right):
    """The pixels of SIMD columns ``[0, n_simd)`` at source columns ``left`` and ``left + 1`` of one source
    row (``(W*C,)`` uint8, C = 1 or 3) as float32, index ``c*C + ch``. A pixel's channels and its right
    neighbour's are one run of 2*C bytes, copied as such: a gather per byte through flattened indices
    took ~75% of the resize."""
    if C == 3:
        for c in range(n_simd):
            s, k = left[c] * 3, 3 * c
            out_left[k], out_left[k + 1], out_left[k + 2] = _F32(row[s]), _F32(row[s + 1]), _F32(row[s + 2])
            out_right[k], out_right[k + 1], out_right[k + 2] = _F32(row[s + 3]), _F32(row[s + 4]), _F32(row[s + 5])
    elif C == 1:
        for c in range(n_simd):
            s = left[c]
            out_left[c], out_right[c] = _F32(row[s]), _F32(row[s + 1])
    else:
        raise ValueError("resize_u8 takes 1 (grey) or 3 (RGB) channels")


# -- fHOG, spec §4 -------------------------------------------------------------------------------


@compiled()
def _histogram(img, vis_nr, vis_nc, n_simd, bins_lut, iy, vy0, vy1, ix, vx0, vx1, hist):
    """Gradients and bilinear votes into ``hist`` (NR, NC, 18) in one raster-order pass over the pixels
    1 <= y < vis_nr, 1 <= x < vis_nc (so every bin is summed in dlib's pixel raster order).

    Per pixel row, first (branch-free, so it vectorises) the gradient's table key and magnitude
    (:func:`_row_keys`), then the votes with the orientation bin looked up in ``bins_lut``: SIMD
    columns ``x < 1 + n_simd`` weigh ``vy*(vx*v)``, tail columns ``(vy*vx)*v`` (spec §4.4).
    """
    C = img.shape[2]
    n = vis_nc + 1  # columns 0..vis_nc are read
    # Three source rows (above, this, below) as planar float32, each converted once and reused by the
    # three pixel rows that read it; planar rows make the gradient pass contiguous, so it vectorises.
    ring = np.zeros((3, C, n), dtype=np.float32)
    keys = np.zeros(vis_nc, dtype=np.int32)
    mags = np.zeros(vis_nc, dtype=np.float32)
    _planar_row(img[0], n, ring[0])
    _planar_row(img[1], n, ring[1])
    for y in range(1, vis_nr):
        _planar_row(img[y + 1], n, ring[(y + 1) % 3])
        above, row, below = ring[(y - 1) % 3], ring[y % 3], ring[(y + 1) % 3]
        if C == 1:
            _grey_keys(above[0], row[0], below[0], vis_nc, keys, mags)
        else:
            _rgb_keys(above, row, below, 1, 1 + n_simd, True, keys, mags)
            _rgb_keys(above, row, below, 1 + n_simd, vis_nc, False, keys, mags)
        h1, h2 = hist[iy[y] + 1], hist[iy[y] + 2]
        wy1, wy0 = vy1[y], vy0[y]
        for x in range(1, 1 + n_simd):
            v = mags[x]
            if v == 0:  # adds +0.0 to non-negative sums: no change, so skipped
                continue
            o, c1 = bins_lut[keys[x]], ix[x] + 1
            a, b = vx1[x] * v, vx0[x] * v
            h1[c1, o] += wy1 * a
            h2[c1, o] += wy0 * a
            h1[c1 + 1, o] += wy1 * b
            h2[c1 + 1, o] += wy0 * b
        for x in range(1 + n_simd, vis_nc):
            v = mags[x]
            if v == 0:
                continue
            o, c1 = bins_lut[keys[x]], ix[x] + 1
            h1[c1, o] += (wy1 * vx1[x]) * v
            h2[c1, o] += (wy0 * vx1[x]) * v
            h1[c1 + 1, o] += (wy1 * vx0[x]) * v
            h2[c1 + 1, o] += (wy0 * vx0[x]) * v


@numba.njit(inline="always", boundscheck=False)
def _planar_row(src, n, dst):
    """Columns 0..n-1 of an ``(W, C)`` uint8 row into ``dst`` ``(C, n)`` float32 (exact)."""
    for ch in range(src.shape[1]):
        d = dst[ch]
        for x in range(n):
            d[x] = _F32(src[x, ch])


# key = (gx + 255) * 511 + (gy + 255), written gx*511 + gy + _KEY0: exact in float32 (|.| < 2**17)
_KEY0 = 255 * 511 + 255


@numba.njit(inline="always", boundscheck=False)
def _grey_keys(above, row, below, vis_nc, keys, mags):
    """Table keys and magnitudes ``sqrtf(gx²+gy²)`` of pixels 1 <= x < vis_nc of a grey row."""
    for x in range(1, vis_nc):
        gx = row[x + 1] - row[x - 1]
        gy = below[x] - above[x]
        keys[x] = np.int32(gx * _F32(511.0) + gy) + _KEY0
        mags[x] = np.sqrt(gx * gx + gy * gy)


@numba.njit(inline="always", boundscheck=False)
def _rgb_keys(above, row, below, x0, x1, later, keys, mags):
    """Table keys and magnitudes of pixels x0 <= x < x1 of an RGB row (planar float32 rows): the gradient
    of the channel with the largest ``gx² + gy²``, ties going to the later channel in the SIMD columns
    (``later``) and to the earlier one in the tail (spec §4.2). Gradients and squared lengths are small
    integers, exact in float32, so the magnitude is dlib's ``sqrtf`` of the same value."""
    for x in range(x0, x1):
        gx0 = row[0, x + 1] - row[0, x - 1]
        gy0 = below[0, x] - above[0, x]
        gx1 = row[1, x + 1] - row[1, x - 1]
        gy1 = below[1, x] - above[1, x]
        gx2 = row[2, x + 1] - row[2, x - 1]
        gy2 = below[2, x] - above[2, x]
        l0, l1, l2 = gx0 * gx0 + gy0 * gy0, gx1 * gx1 + gy1 * gy1, gx2 * gx2 + gy2 * gy2
        if later:  # t = lenR > lenG ? R : G; then len_t > lenB ? t : B
            first = l0 > l1
            lt = l0 if first else l1
            keep = lt > l2
        else:  # start with R, switch on a strictly larger length
            first = l1 <= l0
            lt = l0 if first else l1
            keep = l2 <= lt
        gx = (gx0 if first else gx1) if keep else gx2
        gy = (gy0 if first else gy1) if keep else gy2
        keys[x] = np.int32(gx * _F32(511.0) + gy) + _KEY0
        mags[x] = np.sqrt(lt if keep else l2)


@compiled()
def _features(hist, cells_nr, cells_nc, out):
    """Block energies, the four normalisation lanes and the 31 features (spec §4.5) into ``out``
    (31, hog_nr+9, hog_nc+9), zero-initialised; feature cell (y, x) at (y+4, x+4)."""
    hog_nr, hog_nc = cells_nr - 2, cells_nc - 2
    energy = np.empty((cells_nr, cells_nc), dtype=np.float32)
    for r in range(cells_nr):
        for c in range(cells_nc):
            e = _F32(0.0)
            for o in range(9):
                s = hist[r + 1, c + 1, o] + hist[r + 1, c + 1, o + 9]
                e = s * s if o == 0 else e + s * s
            energy[r, c] = e
    eps, two_tenths, tenth, texture = _F32(1e-4), _F32(0.2), _F32(0.1), _F32(0.4714)
    for y in range(hog_nr):
        nn = np.empty(4, dtype=np.float32)
        n = np.empty(4, dtype=np.float32)
        for x in range(hog_nc):
            for k in range(4):  # lower-right, upper-right, lower-left, upper-left block
                p = y + 1 - (k & 1)
                q = x + 1 - (k >> 1)
                s = ((energy[p, q] + energy[p, q + 1]) + energy[p + 1, q]) + energy[p + 1, q + 1]
                nn[k] = two_tenths * _F32(np.sqrt(s + eps))
                n[k] = tenth / nn[k]
            for o in range(18):
                h = hist[y + 2, x + 2, o]
                q0 = min(h, nn[0]) * n[0]
                q1 = min(h, nn[1]) * n[1]
                q2 = min(h, nn[2]) * n[2]
                q3 = min(h, nn[3]) * n[3]
                out[o, y + 4, x + 4] = (q0 + q1) + (q2 + q3)
            for o in range(9):
                h = hist[y + 2, x + 2, o] + hist[y + 2, x + 2, o + 9]
                q0 = min(h, nn[0]) * n[0]
                q1 = min(h, nn[1]) * n[1]
                q2 = min(h, nn[2]) * n[2]
                q3 = min(h, nn[3]) * n[3]
                out[18 + o, y + 4, x + 4] = (q0 + q1) + (q2 + q3)
            for k in range(4):
                acc = _F32(0.0)
                for o in range(0, 18, 3):
                    a = min(hist[y + 2, x + 2, o], nn[k]) * n[k]
                    b = min(hist[y + 2, x + 2, o + 1], nn[k]) * n[k]
                    c = min(hist[y + 2, x + 2, o + 2], nn[k]) * n[k]
                    acc = acc + ((a + b) + c)
                out[27 + k, y + 4, x + 4] = acc * texture


@compiled()
def fhog_features_u8(img, cells_nr, cells_nc, bins_lut, fractions_y, fractions_x):
    """fHOG of an ``(H, W, C)`` uint8 image (C = 3 RGB or 1 grey) with ``cells_nr - 2 > 0`` and
    ``cells_nc - 2 > 0``: float32 ``(31, cells_nr+7, cells_nc+7)``. ``fractions_y``/``_x`` are the
    per-pixel ``(i, v0, v1)`` vote positions and weights (spec §4.4)."""
    h, w = img.shape[0], img.shape[1]
    vis_nr = min(cells_nr * 8, h) - 1
    vis_nc = min(cells_nc * 8, w) - 1
    hist = np.zeros((cells_nr + 2, cells_nc + 2, 18), dtype=np.float32)
    if vis_nr > 1 and vis_nc > 1:
        n_simd = 8 * max(0, (vis_nc - 1) // 8)  # x = 1, 9, 17, ... in whole blocks of 8 while x < vis_nc - 7
        iy, vy0, vy1 = fractions_y
        ix, vx0, vx1 = fractions_x
        _histogram(img, vis_nr, vis_nc, n_simd, bins_lut, iy, vy0, vy1, ix, vx0, vx1, hist)
    out = np.zeros((31, cells_nr + 7, cells_nc + 7), dtype=np.float32)
    _features(hist, cells_nr, cells_nc, out)
    return out


# -- separable filtering, spec §6 ----------------------------------------------------------------


@numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})
def approximate_responses(feats, planes, rows, cols, starts, band, out):
    """float32 responses of K filters over the interior cells of ``feats`` (31, P, Q) into ``out``
    (K, P-9, Q-9), *approximately*: the same rank-1 terms (filter k's are ``starts[k]:starts[k+1]``
    of ``planes``/``rows``/``cols``), a row pass then a column pass each, but with fused
    multiply-adds. Every value is a float32 sum of fewer than 100 rounded steps
    over products whose absolute values sum to at most ``max(feats) * sum|col|*|row|``, which bounds
    its distance from the real-number response (the caller's margin). Computed in bands of ``band``
    output rows so that the scratch rows stay in cache."""
    K = out.shape[0]
    n_r, n_c = out.shape[1], out.shape[2]
    n_bands = (n_r + band - 1) // band
    scratch = np.empty((band + _TAPS - 1, n_c), dtype=np.float32)
    for item in range(K * n_bands):  # filter-major, so each filter's taps stay in cache
        k = item // n_bands
        r0 = (item % n_bands) * band
        r1 = min(r0 + band, n_r)
        for t in range(starts[k], starts[k + 1]):
            f = feats[planes[t]]
            w0, w1, w2, w3, w4 = rows[t, 0], rows[t, 1], rows[t, 2], rows[t, 3], rows[t, 4]
            w5, w6, w7, w8, w9 = rows[t, 5], rows[t, 6], rows[t, 7], rows[t, 8], rows[t, 9]
            for r in range(r0, r1 + _TAPS - 1):
                fr, sr = f[r], scratch[r - r0]
                for j in range(n_c):  # three independent chains: vectorised across j, pipelined across taps
                    a = fr[j] * w0 + fr[j + 3] * w3 + fr[j + 6] * w6 + fr[j + 9] * w9
                    b = fr[j + 1] * w1 + fr[j + 4] * w4 + fr[j + 7] * w7
                    c = fr[j + 2] * w2 + fr[j + 5] * w5 + fr[j + 8] * w8
                    sr[j] = a + (b + c)
            c0, c1, c2, c3, c4 = cols[t, 0], cols[t, 1], cols[t, 2], cols[t, 3], cols[t, 4]
            c5, c6, c7, c8, c9 = cols[t, 5], cols[t, 6], cols[t, 7], cols[t, 8], cols[t, 9]
            first = t == starts[k]
            for r in range(r0, r1):
                i = r - r0
                s0, s1, s2, s3, s4 = scratch[i], scratch[i + 1], scratch[i + 2], scratch[i + 3], scratch[i + 4]
                s5, s6, s7, s8, s9 = scratch[i + 5], scratch[i + 6], scratch[i + 7], scratch[i + 8], scratch[i + 9]
                o = out[k, r]
                for j in range(n_c):
                    a = s0[j] * c0 + s3[j] * c3 + s6[j] * c6 + s9[j] * c9
                    b = s1[j] * c1 + s4[j] * c4 + s7[j] * c7
                    c = s2[j] * c2 + s5[j] * c5 + s8[j] * c8
                    o[j] = a + (b + c) if first else o[j] + (a + (b + c))
    return out


@compiled()
def exact_scores(feats, planes, rows, cols, start, stop, n_simd, cells_r, cells_c):
    """Filter responses at interior cells ``(cells_r[i], cells_c[i])`` (window top-left cell), exactly
    as dlib's separable filter computes them (spec §6): per rank-1 term ``start..stop-1`` a row pass
    then a column pass, each a 10-tap float32 sum with three accumulators ``A + (B + C)`` (A: taps 0,
    3, 6, then 9; B: 1, 4, 7; C: 2, 5, 8) in the 8-column SIMD blocks ``j < n_simd`` and one
    accumulator in the tail; the terms added one after another. Returns float64 scores."""
    out = np.empty(len(cells_r), dtype=np.float64)
    scratch = np.empty(_TAPS, dtype=np.float32)
    p = np.empty(_TAPS, dtype=np.float32)
    for i in range(len(cells_r)):
        r, j = cells_r[i], cells_c[i]
        simd = j < n_simd
        total = np.float32(0.0)
        for t in range(start, stop):
            f = feats[planes[t]]
            for m in range(_TAPS):
                for n in range(_TAPS):
                    p[n] = f[r + m, j + n] * rows[t, n]
                scratch[m] = _ordered_sum(p, simd)
            for m in range(_TAPS):
                p[m] = scratch[m] * cols[t, m]
            term = _ordered_sum(p, simd)
            total = term if t == start else total + term
        out[i] = np.float64(total)
    return out


@numba.njit(inline="always", boundscheck=False)
def _ordered_sum(p, simd):
    if simd:
        a = ((p[0] + p[3]) + p[6]) + p[9]
        b = (p[1] + p[4]) + p[7]
        c = (p[2] + p[5]) + p[8]
        return a + (b + c)
    return ((((((((p[0] + p[1]) + p[2]) + p[3]) + p[4]) + p[5]) + p[6]) + p[7]) + p[8]) + p[9]
