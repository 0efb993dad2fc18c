/* The HOG detector's loops in C: dlib's bilinear resize, fHOG and the exact separable filter scores.
 *
 * Line for line the numba loops of engines/hog_kernels.py (the reference, and the fallback where no C
 * compiler is found), so the results are bit-identical to dlib's: float32 wherever dlib computes in
 * float, double where it computes in double, the same association order. Built with
 * -ffp-contract=off and without -ffast-math: no FMA contraction, no reassociation. Arrays are
 * C-contiguous; indices are int64. Called through ctypes, which releases the GIL, so pyramid levels run
 * on several threads at once.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "row_pairs.h"

typedef int64_t i64;

#define KEY0 (255 * 511 + 255) /* key = gx*511 + gy + KEY0: exact in float32 (|.| < 2**17) */
#define TAPS 10

/* Python's min/max on floats (numba follows them): the first argument unless the second is strictly
 * smaller (larger). */
static inline float py_minf(float a, float b) { return b < a ? b : a; }
static inline float py_maxf(float a, float b) { return b > a ? b : a; }

/* -- resize_image (bilinear, align corners), spec 3.1 ------------------------------------------- */

/* The pixels of SIMD columns [0, n_simd) at source columns left and left + 1 of one source row (W*C uint8)
 * as float32, index c*C + ch: the row is converted once (a vectorised pass), then each column's pixel and
 * its right neighbour copied as floats (converting per copied byte took most of the resize). */
static void column_pairs(const uint8_t *restrict row, i64 row_len, const i64 *restrict left, i64 n_simd, i64 C,
                         float *restrict row_f, float *restrict out_left, float *restrict out_right) {
    for (i64 i = 0; i < row_len; i++) row_f[i] = (float)row[i];
    if (C == 3) {
        for (i64 c = 0; c < n_simd; c++) {
            const float *p = row_f + left[c] * 3;
            float *l = out_left + 3 * c, *r = out_right + 3 * c;
            l[0] = p[0], l[1] = p[1], l[2] = p[2];
            r[0] = p[3], r[1] = p[4], r[2] = p[5];
        }
    } else {
        for (i64 c = 0; c < n_simd; c++) {
            const i64 s = left[c];
            out_left[c] = row_f[s], out_right[c] = row_f[s + 1];
        }
    }
}

/* Returns 0, -1 for a channel count other than 1 or 3, -2 when out of memory. */
int fs_resize_u8(const uint8_t *src, i64 H, i64 W, i64 C, uint8_t *out, i64 out_h, i64 out_w,
                 const i64 *top, const i64 *bottom, const float *tbf, const float *itbf, const double *tbd,
                 i64 n_simd, const float *flat_ilr, const float *flat_lr, const i64 *left, const i64 *right,
                 const double *lrd) {
    (void)H;
    if (C != 1 && C != 3) return -1;
    const float bias = C == 1 ? 0.5f : 0.0f; /* adding +0.0 to a non-negative float changes nothing */
    const i64 n = n_simd * C, row_len = W * C;
    float *buf = malloc(sizeof(float) * (size_t)(4 * n + row_len + 1));
    if (!buf) return -2;
    float *row_f = buf + 4 * n;
    row_pairs rows = row_pairs_init(buf, n);
    for (i64 r = 0; r < out_h; r++) {
        const i64 t = top[r], b = bottom[r];
        int gather_top, gather_bottom;
        row_pairs_next(&rows, t, b, &gather_top, &gather_bottom);
        if (gather_top) column_pairs(src + t * row_len, row_len, left, n_simd, C, row_f, rows.top_l, rows.top_r);
        if (gather_bottom) column_pairs(src + b * row_len, row_len, left, n_simd, C, row_f, rows.bot_l, rows.bot_r);
        const float *top_l = rows.top_l, *top_r = rows.top_r, *bot_l = rows.bot_l, *bot_r = rows.bot_r;
        const float ty = tbf[r], iy = itbf[r];
        uint8_t *o = out + r * out_w * C;
        for (i64 j = 0; j < n; j++) {
            const float il = flat_ilr[j], lr = flat_lr[j];
            const float v = (((iy * il) * top_l[j] + (iy * lr) * top_r[j]) + (ty * il) * bot_l[j]) + (ty * lr) * bot_r[j];
            o[j] = (uint8_t)(int32_t)(v + bias);
        }
        const double tb = tbd[r];
        const uint8_t *st = src + t * row_len, *sb = src + b * row_len;
        for (i64 c = n_simd; c < out_w; c++) {
            const i64 lc = left[c] * C, rc = right[c] * C;
            for (i64 ch = 0; ch < C; ch++) {
                if (C == 1) {
                    const float lf = (float)lrd[c], ilf = 1.0f - lf;
                    const float top_x = ilf * (float)st[lc + ch] + lf * (float)st[rc + ch];
                    const float bot_x = ilf * (float)sb[lc + ch] + lf * (float)sb[rc + ch];
                    const float v = (float)((1.0 - tb) * (double)top_x + tb * (double)bot_x);
                    o[c * C + ch] = (uint8_t)(int32_t)py_minf(py_maxf(v, 0.0f), 255.0f);
                } else {
                    const double lr = lrd[c];
                    const double top_x = (1.0 - lr) * (double)st[lc + ch] + lr * (double)st[rc + ch];
                    const double bot_x = (1.0 - lr) * (double)sb[lc + ch] + lr * (double)sb[rc + ch];
                    o[c * C + ch] = (uint8_t)(int64_t)((1.0 - tb) * top_x + tb * bot_x);
                }
            }
        }
    }
    free(buf);
    return 0;
}

/* -- fHOG, spec 4 ---------------------------------------------------------------------------------- */

/* Columns 0..n-1 of an (W, C) uint8 row into dst (C, n) float32 (exact). Kept out of line with its own
 * restrict pointers: inlined, the compiler kept the destination pointer in memory (uint8 may alias). */
static __attribute__((noinline)) void planar_row(const uint8_t *restrict src, i64 C, i64 n, float *restrict dst) {
    if (C == 3) {
        float *restrict d0 = dst, *restrict d1 = dst + n, *restrict d2 = dst + 2 * n;
        for (i64 x = 0; x < n; x++) {
            d0[x] = (float)src[3 * x];
            d1[x] = (float)src[3 * x + 1];
            d2[x] = (float)src[3 * x + 2];
        }
    } else {
        for (i64 x = 0; x < n; x++) dst[x] = (float)src[x];
    }
}

static void grey_keys(const float *restrict above, const float *restrict row, const float *restrict below, i64 vis_nc,
                      int32_t *restrict keys, float *restrict mags) {
    for (i64 x = 1; x < vis_nc; x++) {
        const float gx = row[x + 1] - row[x - 1];
        const float gy = below[x] - above[x];
        keys[x] = (int32_t)(gx * 511.0f + gy) + KEY0;
        mags[x] = sqrtf(gx * gx + gy * gy);
    }
}

/* Planar rows (C = 3, n columns each): the channel with the largest gx^2 + gy^2, ties to the later
 * channel in the SIMD columns (LATER 1) and to the earlier one in the tail (LATER 0) (spec 4.2). One
 * branch-free loop per tie rule, so that each vectorises. */
#define RGB_KEYS(NAME, LATER)                                                                                  \
    static void NAME(const float *restrict above, const float *restrict row, const float *restrict below,      \
                     i64 n, i64 x0, i64 x1, int32_t *restrict keys, float *restrict mags) {                   \
        const float *r0 = row, *r1 = row + n, *r2 = row + 2 * n;                                               \
        const float *a0 = above, *a1 = above + n, *a2 = above + 2 * n;                                         \
        const float *b0 = below, *b1 = below + n, *b2 = below + 2 * n;                                         \
        for (i64 x = x0; x < x1; x++) {                                                                        \
            const float gx0 = r0[x + 1] - r0[x - 1], gy0 = b0[x] - a0[x];                                      \
            const float gx1 = r1[x + 1] - r1[x - 1], gy1 = b1[x] - a1[x];                                      \
            const float gx2 = r2[x + 1] - r2[x - 1], gy2 = b2[x] - a2[x];                                      \
            const float l0 = gx0 * gx0 + gy0 * gy0, l1 = gx1 * gx1 + gy1 * gy1, l2 = gx2 * gx2 + gy2 * gy2;  \
            /* LATER: t = lenR > lenG ? R : G, then len_t > lenB ? t : B; else start with R and switch on  \
             * a strictly larger length */                                                                     \
            const int first = LATER ? l0 > l1 : l1 <= l0;                                                      \
            const float lt = first ? l0 : l1;                                                                  \
            const int keep = LATER ? lt > l2 : l2 <= lt;                                                       \
            const float gxt = first ? gx0 : gx1, gyt = first ? gy0 : gy1;                                      \
            const float gx = keep ? gxt : gx2, gy = keep ? gyt : gy2, len = keep ? lt : l2;                   \
            keys[x] = (int32_t)(gx * 511.0f + gy) + KEY0;                                                      \
            mags[x] = sqrtf(len);                                                                              \
        }                                                                                                      \
    }
RGB_KEYS(rgb_keys_later, 1)
RGB_KEYS(rgb_keys_earlier, 0)
#undef RGB_KEYS

/* Gradients and bilinear votes into hist (NR, NC, 18), one raster-order pass over 1 <= y < vis_nr,
 * 1 <= x < vis_nc. Returns 0 or -2 when out of memory. */
static int histogram(const uint8_t *img, i64 W, i64 C, i64 vis_nr, i64 vis_nc, i64 n_simd, const uint8_t *bins_lut,
                     const i64 *iy, const float *vy0, const float *vy1, const i64 *ix, const float *vx0,
                     const float *vx1, float *hist, i64 hist_nc) {
    const i64 n = vis_nc + 1, row_len = W * C, stride = hist_nc * 18;
    float *ring = calloc((size_t)(3 * C * n), sizeof(float));
    int32_t *keys = calloc((size_t)vis_nc, sizeof(int32_t));
    float *mags = calloc((size_t)vis_nc, sizeof(float));
    if (!ring || !keys || !mags) {
        free(ring), free(keys), free(mags);
        return -2;
    }
    planar_row(img, C, n, ring);
    planar_row(img + row_len, C, n, ring + C * n);
    for (i64 y = 1; y < vis_nr; y++) {
        planar_row(img + (y + 1) * row_len, C, n, ring + ((y + 1) % 3) * C * n);
        const float *above = ring + ((y - 1) % 3) * C * n, *row = ring + (y % 3) * C * n;
        const float *below = ring + ((y + 1) % 3) * C * n;
        if (C == 1) {
            grey_keys(above, row, below, vis_nc, keys, mags);
        } else {
            rgb_keys_later(above, row, below, n, 1, 1 + n_simd, keys, mags);
            rgb_keys_earlier(above, row, below, n, 1 + n_simd, vis_nc, keys, mags);
        }
        float *h1 = hist + (iy[y] + 1) * stride, *h2 = hist + (iy[y] + 2) * stride;
        const float wy1 = vy1[y], wy0 = vy0[y];
        for (i64 x = 1; x < 1 + n_simd; x++) {
            const float v = mags[x];
            if (v == 0) continue; /* adds +0.0 to non-negative sums: no change */
            const i64 o = bins_lut[keys[x]], c1 = (ix[x] + 1) * 18 + o, c2 = c1 + 18;
            const float a = vx1[x] * v, b = vx0[x] * v;
            h1[c1] += wy1 * a;
            h2[c1] += wy0 * a;
            h1[c2] += wy1 * b;
            h2[c2] += wy0 * b;
        }
        for (i64 x = 1 + n_simd; x < vis_nc; x++) {
            const float v = mags[x];
            if (v == 0) continue;
            const i64 o = bins_lut[keys[x]], c1 = (ix[x] + 1) * 18 + o, c2 = c1 + 18;
            h1[c1] += (wy1 * vx1[x]) * v;
            h2[c1] += (wy0 * vx1[x]) * v;
            h1[c2] += (wy1 * vx0[x]) * v;
            h2[c2] += (wy0 * vx0[x]) * v;
        }
    }
    free(ring), free(keys), free(mags);
    return 0;
}

/* Block energies, the four normalisation lanes and the 31 features (spec 4.5) into out
 * (31, cells_nr+7, cells_nc+7), zero-initialised; feature cell (y, x) at (y+4, x+4). */
static int features(const float *hist, i64 cells_nr, i64 cells_nc, float *out) {
    const i64 hog_nr = cells_nr - 2, hog_nc = cells_nc - 2, hist_nc = cells_nc + 2;
    const i64 out_nr = cells_nr + 7, out_nc = cells_nc + 7, plane = out_nr * out_nc;
    float *energy = malloc(sizeof(float) * (size_t)(cells_nr * cells_nc));
    if (!energy) return -2;
#define HIST(r, c, o) hist[((r) * hist_nc + (c)) * 18 + (o)]
    for (i64 r = 0; r < cells_nr; r++) {
        for (i64 c = 0; c < cells_nc; c++) {
            float e = 0.0f;
            for (int o = 0; o < 9; o++) {
                const float s = HIST(r + 1, c + 1, o) + HIST(r + 1, c + 1, o + 9);
                e = o == 0 ? s * s : e + s * s;
            }
            energy[r * cells_nc + c] = e;
        }
    }
    const float eps = 1e-4f, two_tenths = 0.2f, tenth = 0.1f, texture = 0.4714f;
    float nn[4], n[4];
    for (i64 y = 0; y < hog_nr; y++) {
        for (i64 x = 0; x < hog_nc; x++) {
            for (int k = 0; k < 4; k++) { /* lower-right, upper-right, lower-left, upper-left block */
                const i64 p = y + 1 - (k & 1), q = x + 1 - (k >> 1);
                const float *e0 = energy + p * cells_nc + q, *e1 = e0 + cells_nc;
                const float s = ((e0[0] + e0[1]) + e1[0]) + e1[1];
                nn[k] = two_tenths * sqrtf(s + eps);
                n[k] = tenth / nn[k];
            }
            float *o_cell = out + (y + 4) * out_nc + (x + 4);
            for (int o = 0; o < 18; o++) {
                const float h = HIST(y + 2, x + 2, o);
                const float q0 = py_minf(h, nn[0]) * n[0], q1 = py_minf(h, nn[1]) * n[1];
                const float q2 = py_minf(h, nn[2]) * n[2], q3 = py_minf(h, nn[3]) * n[3];
                o_cell[o * plane] = (q0 + q1) + (q2 + q3);
            }
            for (int o = 0; o < 9; o++) {
                const float h = HIST(y + 2, x + 2, o) + HIST(y + 2, x + 2, o + 9);
                const float q0 = py_minf(h, nn[0]) * n[0], q1 = py_minf(h, nn[1]) * n[1];
                const float q2 = py_minf(h, nn[2]) * n[2], q3 = py_minf(h, nn[3]) * n[3];
                o_cell[(18 + o) * plane] = (q0 + q1) + (q2 + q3);
            }
            for (int k = 0; k < 4; k++) {
                float acc = 0.0f;
                for (int o = 0; o < 18; o += 3) {
                    const float a = py_minf(HIST(y + 2, x + 2, o), nn[k]) * n[k];
                    const float b = py_minf(HIST(y + 2, x + 2, o + 1), nn[k]) * n[k];
                    const float c = py_minf(HIST(y + 2, x + 2, o + 2), nn[k]) * n[k];
                    acc = acc + ((a + b) + c);
                }
                o_cell[(27 + k) * plane] = acc * texture;
            }
        }
    }
#undef HIST
    free(energy);
    return 0;
}

/* fHOG of an (H, W, C) uint8 image into hist (cells_nr+2, cells_nc+2, 18) and out
 * (31, cells_nr+7, cells_nc+7), both zero-initialised by the caller. Returns 0 or -2. */
int fs_fhog_features_u8(const uint8_t *img, i64 H, i64 W, i64 C, i64 cells_nr, i64 cells_nc,
                        const uint8_t *bins_lut, const i64 *iy, const float *vy0, const float *vy1, const i64 *ix,
                        const float *vx0, const float *vx1, float *hist, float *out) {
    const i64 vis_nr = (cells_nr * 8 < H ? cells_nr * 8 : H) - 1;
    const i64 vis_nc = (cells_nc * 8 < W ? cells_nc * 8 : W) - 1;
    if (vis_nr > 1 && vis_nc > 1) {
        const i64 blocks = (vis_nc - 1) / 8;
        const i64 n_simd = 8 * (blocks > 0 ? blocks : 0); /* x = 1, 9, 17, ... while x < vis_nc - 7 */
        if (histogram(img, W, C, vis_nr, vis_nc, n_simd, bins_lut, iy, vy0, vy1, ix, vx0, vx1, hist, cells_nc + 2))
            return -2;
    }
    return features(hist, cells_nr, cells_nc, out);
}

/* -- exact separable filter scores, spec 6 --------------------------------------------------------- */

static inline float ordered_sum(const float *p, int simd) {
    if (simd) {
        const float a = ((p[0] + p[3]) + p[6]) + p[9];
        const float b = (p[1] + p[4]) + p[7];
        const float c = (p[2] + p[5]) + p[8];
        return a + (b + c);
    }
    return ((((((((p[0] + p[1]) + p[2]) + p[3]) + p[4]) + p[5]) + p[6]) + p[7]) + p[8]) + p[9];
}

/* Responses at interior cells (cells_r[i], cells_c[i]) of feats (31, P, Q) for the rank-1 terms
 * start..stop-1, as dlib's separable filter computes them, into out (float64). */
void fs_exact_scores(const float *feats, i64 P, i64 Q, const i64 *planes, const float *rows, const float *cols,
                     i64 start, i64 stop, i64 n_simd, const i64 *cells_r, const i64 *cells_c, i64 n_cells,
                     double *out) {
    float scratch[TAPS], p[TAPS];
    for (i64 i = 0; i < n_cells; i++) {
        const i64 r = cells_r[i], j = cells_c[i];
        const int simd = j < n_simd;
        float total = 0.0f;
        for (i64 t = start; t < stop; t++) {
            const float *f = feats + planes[t] * P * Q;
            const float *row_w = rows + t * TAPS, *col_w = cols + t * TAPS;
            for (int m = 0; m < TAPS; m++) {
                const float *fr = f + (r + m) * Q + j;
                for (int k = 0; k < TAPS; k++) p[k] = fr[k] * row_w[k];
                scratch[m] = ordered_sum(p, simd);
            }
            for (int m = 0; m < TAPS; m++) p[m] = scratch[m] * col_w[m];
            const float term = ordered_sum(p, simd);
            total = t == start ? term : total + term;
        }
        out[i] = (double)total;
    }
}
