/* Face-chip sampling in C: dlib's interpolate_bilinear with a black background, as engines/chips.py's
 * _bilinear computes it in numpy (the reference, and the path where no C compiler is found): the 4-tap
 * blend in double (no FMA contraction: built with -ffp-contract=off), clamped to 255 and truncated. */
#include <math.h>
#include <stdint.h>

typedef int64_t i64;

/* src (H, W, C) uint8 sampled at n points (x[i], y[i]) into out (n, C). Black where floor(x) < 0,
 * floor(y) < 0, floor(x)+1 >= W or floor(y)+1 >= H (NaN and infinities included: they compare false). */
void fs_chip_bilinear(const uint8_t *src, i64 H, i64 W, i64 C, const double *x, const double *y, i64 n,
                      uint8_t *out) {
    for (i64 i = 0; i < n; i++) {
        const double fx = floor(x[i]), fy = floor(y[i]);
        uint8_t *o = out + i * C;
        if (!(fx >= 0 && fy >= 0 && fx + 1 < (double)W && fy + 1 < (double)H)) {
            for (i64 ch = 0; ch < C; ch++) o[ch] = 0;
            continue;
        }
        const double lr = x[i] - fx, tb = y[i] - fy;
        const uint8_t *p = src + ((i64)fy * W + (i64)fx) * C, *q = p + W * C;
        for (i64 ch = 0; ch < C; ch++) {
            const double tl = p[ch], tr = p[C + ch], bl = q[ch], br = q[C + ch];
            const double v = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br);
            o[ch] = (uint8_t)(v > 255.0 ? 255.0 : v);
        }
    }
}
