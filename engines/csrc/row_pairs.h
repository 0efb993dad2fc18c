/* The two source rows a bilinear resize's output row blends, kept as gathered pixel pairs between output
 * rows (shared by hog_loops.c and pyramid_loops.c). Consecutive output rows mostly read the same or the
 * next source rows: a row already gathered as the bottom one becomes the top one by swapping buffers. */
#ifndef FACESTREAM_ROW_PAIRS_H
#define FACESTREAM_ROW_PAIRS_H

#include <stdint.h>

typedef struct {
    float *top_l, *top_r, *bot_l, *bot_r; /* the left/right pixels of the loaded top and bottom rows */
    int64_t top, bottom;                  /* which source rows they are (-1: none) */
} row_pairs;

/* Buffers of n floats each, from `buf` (4n floats), nothing loaded. */
static inline row_pairs row_pairs_init(float *buf, int64_t n) {
    row_pairs rp = {buf, buf + n, buf + 2 * n, buf + 3 * n, -1, -1};
    return rp;
}

/* Makes rows t (top) and b (bottom) current; sets *gather_top / *gather_bottom where the caller must gather
 * that row into top_l/top_r or bot_l/bot_r. */
static inline void row_pairs_next(row_pairs *rp, int64_t t, int64_t b, int *gather_top, int *gather_bottom) {
    *gather_top = 0;
    if (t != rp->top) {
        if (t == rp->bottom) {
            float *swap = rp->top_l;
            rp->top_l = rp->bot_l, rp->bot_l = swap;
            swap = rp->top_r, rp->top_r = rp->bot_r, rp->bot_r = swap;
            rp->bottom = -1;
        } else {
            *gather_top = 1;
        }
        rp->top = t;
    }
    *gather_bottom = b != rp->bottom;
    rp->bottom = b;
}

#endif
