/* The CNN detector's image pyramid in C: dlib's bilinear resize of float32 planes and the input layer's
 * normalisation. Line for line the numba loops of engines/pyramid_kernels.py (the reference, and the
 * fallback where no C compiler is found): float32 where dlib's SSE lanes compute in float, double in its
 * scalar tail, no FMA contraction (built with -ffp-contract=off), so the results are bit-identical.
 */
#include <stdint.h>
#include <stdlib.h>

#include "row_pairs.h"

typedef int64_t i64;

/* Source row `row` of each of P planes (plane_stride apart): its pixels at the SIMD columns' left and right
 * source columns, into out_l/out_r (P, n) -- each index read once for all planes, copied with scalar
 * loads (vector gathers were slower here). */
static __attribute__((noinline, optimize("no-tree-vectorize"))) void gather_pairs(
    const float *restrict row, i64 P, i64 plane_stride, const i64 *restrict left, const i64 *restrict right, i64 n,
    float *restrict out_l, float *restrict out_r) {
    if (P == 3) {
        const float *r0 = row, *r1 = row + plane_stride, *r2 = row + 2 * plane_stride;
        for (i64 c = 0; c < n; c++) {
            const i64 l = left[c], rt = right[c];
            out_l[c] = r0[l], out_l[n + c] = r1[l], out_l[2 * n + c] = r2[l];
            out_r[c] = r0[rt], out_r[n + c] = r1[rt], out_r[2 * n + c] = r2[rt];
        }
        return;
    }
    for (i64 p = 0; p < P; p++) {
        const float *rp = row + p * plane_stride;
        for (i64 c = 0; c < n; c++) out_l[p * n + c] = rp[left[c]], out_r[p * n + c] = rp[right[c]];
    }
}

/* Bilinear resize of P float32 planes src (P, h, w) into out (P, oh, ow), both possibly windows of a
 * larger tensor (plane and row strides in elements; columns contiguous). Per output row: source rows
 * top/bottom, tbf/itbf = f32(tb)/f32(1-tb), tbd = tb. Per output column: source columns left/right and
 * float32 weights ilr/lr. Columns [0, n_simd) blend as dlib's SSE loop,
 * ((itb*ilr)*TL + (itb*lr)*TR) + (tb*ilr)*BL) + (tb*lr)*BR in float32; the others blend x in float32
 * and y in double, as its scalar tail. Each source row's SIMD pixel pairs are gathered once into
 * contiguous rows (shared by the output rows that read it), so the blend vectorises.
 * Returns 0, or -2 when out of memory. */
int fs_resize_f32(const float *src, i64 P, i64 src_plane, i64 src_row, float *out, i64 out_h, i64 out_w,
                  i64 out_plane, i64 out_row, const i64 *top, const i64 *bottom, const float *tbf, const float *itbf,
                  const double *tbd, i64 n_simd, const i64 *left, const i64 *right, const float *ilr,
                  const float *lr) {
    /* Per plane, the left and right pixels of the SIMD columns of the loaded top and bottom source rows. */
    float *buf = malloc(sizeof(float) * (size_t)(4 * P * n_simd + 1));
    if (!buf) return -2;
    row_pairs rows = row_pairs_init(buf, P * n_simd);
    for (i64 r = 0; r < out_h; r++) {
        const i64 t = top[r], b = bottom[r];
        int gather_top, gather_bottom;
        row_pairs_next(&rows, t, b, &gather_top, &gather_bottom);
        if (gather_top) gather_pairs(src + t * src_row, P, src_plane, left, right, n_simd, rows.top_l, rows.top_r);
        if (gather_bottom)
            gather_pairs(src + b * src_row, P, src_plane, left, right, n_simd, rows.bot_l, rows.bot_r);
        const float *top_l = rows.top_l, *top_r = rows.top_r, *bot_l = rows.bot_l, *bot_r = rows.bot_r;
        const float ty = tbf[r], iy = itbf[r];
        const double tb = tbd[r];
        for (i64 p = 0; p < P; p++) {
            float *restrict o = out + p * out_plane + r * out_row;
            const float *restrict tl = top_l + p * n_simd, *restrict tr = top_r + p * n_simd;
            const float *restrict bl = bot_l + p * n_simd, *restrict br = bot_r + p * n_simd;
            for (i64 c = 0; c < n_simd; c++) {
                const float il = ilr[c], lc = lr[c];
                o[c] = (((iy * il) * tl[c] + (iy * lc) * tr[c]) + (ty * il) * bl[c]) + (ty * lc) * br[c];
            }
            const float *row_t = src + p * src_plane + t * src_row, *row_b = src + p * src_plane + b * src_row;
            for (i64 c = n_simd; c < out_w; c++) {
                const float il = ilr[c], lc = lr[c];
                const float top_x = il * row_t[left[c]] + lc * row_t[right[c]];
                const float bot_x = il * row_b[left[c]] + lc * row_b[right[c]];
                o[c] = (float)((1.0 - tb) * (double)top_x + tb * (double)bot_x);
            }
        }
    }
    free(buf);
    return 0;
}

/* uint8 RGB images (N, H, W, 3) -> out planes (N*3, H, W) with row stride out_stride (a window of the
 * tensor): (float32(pixel) - mean) / 256 per channel, as dlib's input layer (the division is exact). */
void fs_normalize_into(const uint8_t *images, i64 N, i64 H, i64 W, const float *means, float *out,
                       i64 out_plane_stride, i64 out_row_stride) {
    const float scale = 256.0f, m0 = means[0], m1 = means[1], m2 = means[2];
    for (i64 n = 0; n < N; n++) {
        for (i64 r = 0; r < H; r++) {
            const uint8_t *restrict row = images + (n * H + r) * W * 3;
            float *restrict o0 = out + (n * 3) * out_plane_stride + r * out_row_stride;
            float *restrict o1 = o0 + out_plane_stride, *restrict o2 = o0 + 2 * out_plane_stride;
            for (i64 c = 0; c < W; c++) {  /* the three channels of a pixel at once: one pass over the row */
                o0[c] = ((float)row[3 * c] - m0) / scale;
                o1[c] = ((float)row[3 * c + 1] - m1) / scale;
                o2[c] = ((float)row[3 * c + 2] - m2) / scale;
            }
        }
    }
}
