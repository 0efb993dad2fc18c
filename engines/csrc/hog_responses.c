/* Approximate filter responses of the HOG detector (engines/hog_kernels.py approximate_responses, line for
 * line). Built apart from hog_loops.c, with FMA contraction allowed: every value is a float32 sum of
 * fewer than 100 rounded steps whose distance from the real-number response the caller bounds, whatever
 * the rounding; exact scores are recomputed (fs_exact_scores) wherever a window may be a detection. */
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;
#define TAPS 10
/* Column pass of output column j: scratch rows i..i+9 (s, n_c apart) weighed by the column taps cw. */
#define COLUMN_PASS(j)                                                                                     \
    ((s[(j)] * cw[0] + s[(j) + 3 * n_c] * cw[3] + s[(j) + 6 * n_c] * cw[6] + s[(j) + 9 * n_c] * cw[9]) +     \
     ((s[(j) + n_c] * cw[1] + s[(j) + 4 * n_c] * cw[4] + s[(j) + 7 * n_c] * cw[7]) +                         \
      (s[(j) + 2 * n_c] * cw[2] + s[(j) + 5 * n_c] * cw[5] + s[(j) + 8 * n_c] * cw[8])))

/* K filters over the interior cells of feats (31, P, Q) into out (K, n_r, n_c) = (K, P-9, Q-9): filter k's rank-1 terms
 * are starts[k]..starts[k+1]-1 of planes/rows/cols, a row pass then a column pass each, in bands of
 * `band` output rows so the scratch rows stay in cache. Returns 0 or -2 when out of memory. */
int fs_approximate_responses(const float *feats, i64 P, i64 Q, const i64 *planes, const float *rows,
                             const float *cols, const i64 *starts, i64 band, float *out, i64 K, i64 n_r, i64 n_c) {
    if (n_r <= 0 || n_c <= 0) return 0;
    const i64 n_bands = (n_r + band - 1) / band;
    float *scratch = malloc(sizeof(float) * (size_t)((band + TAPS - 1) * n_c));
    if (!scratch) return -2;
    for (i64 item = 0; item < K * n_bands; item++) { /* filter-major: each filter's taps stay in cache */
        const i64 k = item / n_bands, r0 = (item % n_bands) * band;
        const i64 r1 = r0 + band < n_r ? r0 + band : n_r;
        for (i64 t = starts[k]; t < starts[k + 1]; t++) {
            const float *f = feats + planes[t] * P * Q;
            const float *w = rows + t * TAPS, *cw = cols + t * TAPS;
            for (i64 r = r0; r < r1 + TAPS - 1; r++) {
                const float *restrict fr = f + r * Q;
                float *restrict sr = scratch + (r - r0) * n_c;
                for (i64 j = 0; j < n_c; j++) {
                    const float a = fr[j] * w[0] + fr[j + 3] * w[3] + fr[j + 6] * w[6] + fr[j + 9] * w[9];
                    const float b = fr[j + 1] * w[1] + fr[j + 4] * w[4] + fr[j + 7] * w[7];
                    const float c = fr[j + 2] * w[2] + fr[j + 5] * w[5] + fr[j + 8] * w[8];
                    sr[j] = a + (b + c);
                }
            }
            const int first = t == starts[k];
            for (i64 r = r0; r < r1; r++) {
                const float *restrict s = scratch + (r - r0) * n_c;
                float *restrict o = out + (k * n_r + r) * n_c;
                if (first) {
                    for (i64 j = 0; j < n_c; j++) o[j] = COLUMN_PASS(j);
                } else {
                    for (i64 j = 0; j < n_c; j++) o[j] = o[j] + COLUMN_PASS(j);
                }
            }
        }
    }
    free(scratch);
    return 0;
}
