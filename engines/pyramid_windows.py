"""Windows of dlib's tiled image pyramid, computed exactly, and the network windows that read them.

The MMOD network is fully convolutional, so any window of its input tensor gives the score-map
cells whose receptive field lies inside the window exactly as the whole tensor does, provided
the window's pixels are the whole tensor's pixels and its offset is a multiple of the total
stride. This module supplies both halves (pure numpy, geometry only):

* **Level windows.** Level ``k`` of the pyramid is ``resize`` of level ``k-1`` (and level 0 the
  image after ``upsample`` ``pyramid_up`` steps). Every output pixel of dlib's bilinear resize
  reads two rows and two columns of its input, at positions fixed by the whole image's sizes,
  so a window of level ``k`` is computed from a window of level ``k-1`` with the same arithmetic
  and the same bits (``pyramid.resize_window_f32``). ``compute_levels`` propagates the needed
  windows back to the image, then resizes forward once.
* **Network windows.** The network is three 5x5 stride-2 unpadded convolutions (receptive field
  29, stride 8), then three 5x5 and one 9x9 stride-1 convolutions zero-padded by 2, 2, 2 and 4
  feature cells. Output cell ``o`` reads input rows ``[8o - 80, 8o + 108]`` (``RF_BEFORE``,
  ``RF_AFTER``); in a window starting at input row ``8j`` it is output ``o - j``, and it is exact
  when those rows lie inside the window, or when the window's edge is the tensor's own edge
  (the zero padding there is the whole tensor's padding). ``window_outputs`` gives the exact cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import pyramid

STRIDE = 8  # total stride of the three stride-2 convolutions
RF_BEFORE = 80  # output cell o reads input rows (columns) 8o - 80 ...
RF_AFTER = 108  # ... to 8o + 108 inclusive
MIN_TILE = 256  # smallest network window (a multiple of STRIDE > RF_BEFORE + RF_AFTER + STRIDE)
BAND_PIXELS = 1 << 20  # tensor pixels whose level windows are computed at once (bounds the temporaries)

Window = tuple[int, int, int, int]  # [r0, r1) x [c0, c1), half-open


def output_size(n: int) -> int:
    """Score-map length for an input length ``n`` (``pyramid.detector_output_shape`` in 1-D)."""
    return pyramid.detector_output_shape(n, n)[0]


def window_outputs(start: int, stop: int, total: int) -> tuple[int, int]:
    """Global output cells ``[o0, o1)`` that a network window over input ``[start, stop)`` of a tensor
    of length ``total`` computes exactly (``start`` a multiple of ``STRIDE``); empty when none."""
    if start % STRIDE:
        raise ValueError(f"window start {start} is not a multiple of the network stride {STRIDE}")
    j = start // STRIDE
    o0 = 0 if start == 0 else j + RF_BEFORE // STRIDE
    n_out = output_size(total)
    o1 = n_out if stop >= total else min(n_out, (stop - 1 - RF_AFTER) // STRIDE + 1)  # 8o + 108 <= stop - 1
    return o0, max(o0, o1)


def input_span(o0: int, o1: int, total: int) -> tuple[int, int]:
    """The smallest aligned input window ``[start, stop)`` whose exact outputs include cells ``[o0, o1)``."""
    start = max(0, STRIDE * o0 - RF_BEFORE)
    return start, min(total, STRIDE * (o1 - 1) + RF_AFTER + 1)


def tiles_1d(total: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Cover the outputs of a tensor axis of length ``total`` with windows of at most ``tile`` inputs:
    ``[(start, stop, o0, o1)]``, each window computing exactly cells ``[o0, o1)``, together all once."""
    n_out = output_size(total)
    if total <= tile:
        return [(0, total, 0, n_out)]
    tile = max(MIN_TILE, tile - tile % STRIDE)
    spans, o = [], 0
    while o < n_out:
        start = max(0, STRIDE * o - RF_BEFORE)
        stop = min(total, start + tile)
        o1 = min(n_out, window_outputs(start, stop, total)[1])
        spans.append((start, stop, o, o1))
        o = o1
    return spans


def merge_windows(windows: list[Window], slack: float = 1.0) -> list[Window]:
    """Network windows with overlapping ones joined: two windows become their bounding window when it
    has at most ``slack`` x their summed area (a face's windows at neighbouring pyramid levels share
    most of their receptive-field margins). A bigger window computes a superset of the exact cells of
    its parts (`window_outputs`), so the scores of every cell the parts computed are unchanged."""
    merged = [w for w in windows if not _empty(w)]
    joined = True
    while joined:
        joined = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                union = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                if _area(union) <= slack * (_area(a) + _area(b)):
                    merged[i] = union
                    del merged[j]
                    joined = True
                    break
            if joined:
                break
    return merged


def _area(w: Window) -> int:
    return (w[1] - w[0]) * (w[3] - w[2])


def clip_window(w: Window, h: int, wd: int) -> Window:
    return max(0, w[0]), min(h, w[1]), max(0, w[2]), min(wd, w[3])


def _empty(w: Window) -> bool:
    return w[1] <= w[0] or w[3] <= w[2]


@dataclass(frozen=True)
class PyramidGeometry:
    """Sizes of everything between an image and the detector's input tensor."""

    image_hw: tuple[int, int]
    times: int  # pyramid_up steps before the pyramid
    padding: int = pyramid.PYRAMID_PADDING
    outer_padding: int = pyramid.PYRAMID_OUTER_PADDING
    up_sizes: list[tuple[int, int]] = field(init=False)  # image, after 1 upsampling, ...
    layout: tuple[int, int, np.ndarray] = field(init=False)  # tensor rows, cols, level rects

    def __post_init__(self) -> None:
        sizes = [tuple(int(v) for v in self.image_hw)]
        for _ in range(self.times):
            sizes.append(pyramid.pyramid_up_size(*sizes[-1]))
        object.__setattr__(self, "up_sizes", sizes)
        object.__setattr__(self, "layout", pyramid.tiled_pyramid_layout(*sizes[-1], self.padding, self.outer_padding))

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout[0], self.layout[1]

    @property
    def rects(self) -> np.ndarray:
        return self.layout[2]

    @cached_property
    def level_sizes(self) -> list[tuple[int, int]]:
        return [(int(b - t + 1), int(r - l + 1)) for l, t, r, b in self.rects]

    @cached_property
    def first_column(self) -> int:
        """How many levels dlib stacks top-down in the first column (the rest are right-aligned)."""
        tops = self.rects[:, 1]
        k = 1
        while k < len(tops) and tops[k] > tops[k - 1]:
            k += 1
        return k

    def level_windows_in(self, window: Window) -> dict[int, tuple[Window, Window]]:
        """Levels a tensor window overlaps: level -> (window in level coordinates, same in tensor)."""
        r0, r1, c0, c1 = window
        out = {}
        for k, (l, t, r, b) in enumerate(self.rects):
            tw = (max(r0, int(t)), min(r1, int(b) + 1), max(c0, int(l)), min(c1, int(r) + 1))
            if not _empty(tw):
                out[k] = ((tw[0] - t, tw[1] - t, tw[2] - l, tw[3] - l), tw)
        return out


def compute_levels(
    images: list[np.ndarray],
    geom: PyramidGeometry,
    needs: dict[int, Window],
    means: np.ndarray,
    cached: dict[int, np.ndarray] | None = None,
) -> dict[int, tuple[Window, np.ndarray]]:
    """Exact windows of pyramid levels: ``needs`` level -> window ``[r0,r1)x[c0,c1)`` in level pixels;
    returns level -> (window computed, ``(N,3,h,w)`` float32 holding at least the needed window).

    ``images`` are the N same-size uint8 images (RGB, or grey read as R=G=B); ``cached`` holds whole
    levels already computed (used as they are, and as the source of the next levels)."""
    cached = cached or {}
    sizes = geom.level_sizes
    done: dict[int, tuple[Window, np.ndarray]] = {}

    def have(level: int) -> tuple[Window, np.ndarray] | None:
        if level in cached:
            arr = cached[level]
            return (0, arr.shape[-2], 0, arr.shape[-1]), arr
        return done.get(level)

    # Level by level, smallest index first: each window is computed from the previous level's
    # window, back to the image, unless a level already at hand contains what it reads. Windows of
    # one level are never merged into a bounding box (two far-apart windows would make it huge).
    for k in sorted(k for k, w in needs.items() if not _empty(w)):
        if have(k) is not None and _contains(have(k)[0], needs[k]):  # type: ignore[index]
            continue
        chain = {k: needs[k]}
        j = k
        source = None
        while j > 0:
            read = pyramid.resize_plan(*sizes[j - 1], *sizes[j]).source_window(*chain[j])
            source = have(j - 1)
            if source is not None and _contains(source[0], read):
                break
            source = None
            chain[j - 1] = read
            j -= 1
        for i in range(j, k + 1):
            if i == 0:
                current = (chain[0], _level0_window(images, geom, chain[0], means))
            else:
                assert source is not None
                (pr0, _, pc0, _), parr = source
                plan = pyramid.resize_plan(*sizes[i - 1], *sizes[i])
                current = (chain[i], pyramid.resize_window_f32(parr, (pr0, pc0), plan, chain[i]))
            source = current  # only the previous level is a source: at most two alive
        done[k] = source  # type: ignore[assignment]
    return {k: v for k, v in ((k, have(k)) for k in needs if not _empty(needs[k])) if v is not None}


def _contains(outer: Window, inner: Window) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]


def _level0_window(images: list[np.ndarray], geom: PyramidGeometry, win: Window, means: np.ndarray) -> np.ndarray:
    """Window of level 0 (the upsampled, normalised image) for every image: ``(N,3,h,w)`` float32."""
    wins = [win]
    for s in range(geom.times, 0, -1):
        wins.append(pyramid.resize_plan(*geom.up_sizes[s - 1], *geom.up_sizes[s]).source_window(*wins[-1]))
    wins.reverse()  # wins[s]: the window needed of the image after s upsamplings
    blocks = []
    for image in images:
        if image.ndim == 2:
            image = np.broadcast_to(image[:, :, None], (*image.shape, 3))
        r0, r1, c0, c1 = wins[0]
        block = np.ascontiguousarray(image[r0:r1, c0:c1])
        for s in range(1, geom.times + 1):
            plan = pyramid.resize_plan(*geom.up_sizes[s - 1], *geom.up_sizes[s])
            block = pyramid.resize_window_rgb_u8(block, wins[s - 1][::2], plan, wins[s])
        blocks.append(block)
    return pyramid.normalize_rgb(np.stack(blocks), means)


def fill_window(
    images: list[np.ndarray],
    geom: PyramidGeometry,
    window: Window,
    means: np.ndarray,
    cached: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """The detector's input tensor restricted to ``window`` (tensor coordinates): ``(N,3,h,w)`` float32,
    identical to the same pixels of ``pyramid.build_input_tensor``."""
    r0, r1, c0, c1 = window
    out = np.zeros((len(images), 3, r1 - r0, c1 - c0), dtype=np.float32)
    # Row bands of ~BAND_PIXELS: the level windows a band reads back to level 0 stay small.
    band = max(STRIDE, BAND_PIXELS // max(1, c1 - c0))
    for b0 in range(r0, r1, band):
        b1 = min(r1, b0 + band)
        parts = geom.level_windows_in((b0, b1, c0, c1))
        levels = compute_levels(images, geom, {k: lw for k, (lw, _) in parts.items()}, means, cached)
        for k, (lw, tw) in parts.items():
            (cr0, _, cc0, _), arr = levels[k]
            out[:, :, tw[0] - r0 : tw[1] - r0, tw[2] - c0 : tw[3] - c0] = arr[
                :, :, lw[0] - cr0 : lw[1] - cr0, lw[2] - cc0 : lw[3] - cc0
            ]
    return out


def cache_small_levels(
    images: list[np.ndarray], geom: PyramidGeometry, means: np.ndarray, rows_per_block: int
) -> dict[int, np.ndarray]:
    """Whole levels from ``first_column`` on (the right-aligned column: at most ~16% of the image's
    float pixels), computed in row blocks of the first of them, so that tensor windows anywhere
    need only windows of the first-column levels. ``rows_per_block`` bounds the level-0 rows a
    block reads."""
    first = geom.first_column
    if first >= len(geom.level_sizes):
        return {}
    h, w = geom.level_sizes[first]
    step = max(1, int(rows_per_block / (1.2**first)))
    parts = []
    for a in range(0, h, step):
        parts.append(compute_levels(images, geom, {first: (a, min(h, a + step), 0, w)}, means)[first][1])
    cached = {first: np.concatenate(parts, axis=-2)}
    for k in range(first + 1, len(geom.level_sizes)):
        cached[k] = pyramid.resize_bilinear_f32(cached[k - 1], *geom.level_sizes[k])
    return cached
