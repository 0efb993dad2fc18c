"""engines/pyramid.py: the MMOD detector's input pyramid and output decoding, against dlib 20.0.1.

Oracles, strongest first:
* dlib's CNN detector itself, loaded with *synthetic* model files written here (same architecture
  as mmod_human_face_detector.dat, chosen weights). A "constant" model scores every output cell
  the same and never suppresses, so dlib returns every cell mapped to the image: this pins the
  tiled layout, nearest_rect, point_up and lround for any image size. A "passthrough" model scores
  a cell exactly ``T[a] + 2**-8*T[b] + bias`` where T is the input tensor at the cell's point
  (8c+14, 8r+14), so the tensor values, upsampling, to_label, NMS and rect_down are all checked
  bit for bit, also for a batch;
* dlib's Python ``resize_image`` (the same SIMD code as the tensor fill and pyramid_up), and
  ``pyramid_down`` point/rect mappings;
* the spec's worked examples, libm's ``lround``, and hand-built NMS cases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from facestream.engines import pyramid as pyr

from conftest import require_dlib

DATA = Path(__file__).parent / "data"
REAL_IMAGES = ["fr_examples/obama-240p.jpg", "dlib_faces/2008_002506.jpg", "dlib_faces/2007_007763.jpg"]


def _dlib():
    return require_dlib()


def _load(rel: str) -> np.ndarray:
    return np.ascontiguousarray(_dlib().load_rgb_image(str(DATA / rel)))


# --------------------------------------------------------------------------------------------------
# spec examples, level sizes, layout


@pytest.mark.parametrize(
    ("h", "w", "levels", "tensor", "output"),
    [(480, 360, 24, (1782, 382), (220, 45)), (720, 1280, 26, (2644, 1302), None),
     (1080, 1920, 28, (3937, 1942), None)],
)  # fmt: skip
def test_spec_examples(h: int, w: int, levels: int, tensor: tuple, output: tuple | None) -> None:
    nr, nc, rects = pyr.tiled_pyramid_layout(h, w)
    assert (nr, nc) == tensor
    assert len(pyr.pyramid_level_sizes(h, w)) == levels == len(rects)
    if output is not None:
        assert pyr.detector_output_shape(nr, nc) == output


def test_spec_480x360_levels_and_columns() -> None:
    sizes = pyr.pyramid_level_sizes(480, 360)
    assert sizes[:6] == [(480, 360), (400, 300), (333, 250), (277, 208), (230, 173), (191, 144)]
    assert sizes[-1] == (5, 3)
    _, _, rects = pyr.tiled_pyramid_layout(480, 360)
    assert [tuple(r) for r in rects[:2]] == [(11, 11, 370, 490), (11, 501, 310, 900)]
    assert (rects[:5, 0] == 11).all()  # first column, top-down
    assert (rects[5:, 2] == 370).all()  # second column, right-aligned ...
    assert (np.diff(rects[5:, 1]) < 0).all()  # ... and stacked bottom-up
    assert rects[5, 3] == rects[4, 3] == 1770
    hw = np.stack([rects[:, 3] - rects[:, 1] + 1, rects[:, 2] - rects[:, 0] + 1], axis=1)
    assert [tuple(x) for x in hw] == sizes


@given(st.integers(1, 100_000), st.integers(1, 100_000))
@settings(max_examples=300, deadline=None)
def test_level_sizes_rule(h: int, w: int) -> None:
    sizes = pyr.pyramid_level_sizes(h, w)
    assert sizes[0] == (h, w)
    for (h0, w0), (h1, w1) in itertools.pairwise(sizes):
        assert (h1, w1) == ((5 * h0) // 6, (5 * w0) // 6)
        assert h1 >= 5 and w1 >= 1
    nh, nw = (5 * sizes[-1][0]) // 6, (5 * sizes[-1][1]) // 6
    assert nh < 5 or nh * nw == 0  # the next level would have been refused


@given(st.integers(25, 5000), st.integers(25, 5000))
@settings(max_examples=300, deadline=None)
def test_layout_properties(h: int, w: int) -> None:
    nr, nc, rects = pyr.tiled_pyramid_layout(h, w)
    assert nc == w + 22
    assert tuple(rects[0]) == (11, 11, 11 + w - 1, 11 + h - 1)
    hw = [(b - t + 1, r - l + 1) for l, t, r, b in rects]
    assert hw == pyr.pyramid_level_sizes(h, w)[: len(rects)]
    assert (rects[:, :2] >= 11).all() and (rects[:, 2] < nc - 11).all() and (rects[:, 3] < nr - 11).all()
    lo = np.maximum(rects[:, None, :2], rects[None, :, :2])
    hi = np.minimum(rects[:, None, 2:], rects[None, :, 2:])
    overlap = (lo <= hi).all(-1)
    assert not overlap[~np.eye(len(rects), dtype=bool)].any()


def test_layout_uses_unsigned_arithmetic_like_dlib() -> None:
    """dlib compares `unsigned long` widths with `w0 - prev_w - padding`, which wraps. For narrow
    images this moves levels to the second column earlier than a signed reading would (checked
    against dlib by test_layout_and_mapping_match_dlib)."""
    nr, nc, rects = pyr.tiled_pyramid_layout(12, 40)
    # a signed reading stacks all five levels in one column (103 rows); dlib moves level 2 right
    # and drops levels 3 and 4, which would overlap level 0
    assert (nr, nc) == (54, 62)
    assert [tuple(r) for r in rects] == [(11, 11, 50, 22), (11, 33, 43, 42), (24, 35, 50, 42)]
    # padding 0 (or an image narrower than the padding) gives dlib an empty pyramid
    assert len(pyr.tiled_pyramid_layout(100, 100, padding=0)[2]) == 0
    with pytest.raises(ValueError, match="no level"):
        pyr.tiled_pyramid(np.zeros((3, 100, 100), np.float32), padding=0)


def test_detector_output_shape() -> None:
    assert pyr.detector_output_shape(1782, 382) == (220, 45)
    for n in range(29, 200):
        assert pyr.detector_output_shape(n, n)[0] == ((((n - 5) // 2 + 1 - 5) // 2 + 1) - 5) // 2 + 1
    assert pyr.detector_output_shape(28, 1000)[0] == 0  # a 5x5 window no longer fits: dlib refuses


# --------------------------------------------------------------------------------------------------
# rounding and normalisation


def _c_lround():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    fn = libm.lround
    fn.restype, fn.argtypes = ctypes.c_long, [ctypes.c_double]
    return fn


def test_lround_half_away_from_zero() -> None:
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -36.5, 42.5, 0.49999999999999994, -0.49999999999999994])
    assert pyr.lround(x).tolist() == [-3, -2, -1, 1, 2, 3, -37, 43, 0, 0]
    assert np.round(2.5) == 2  # why np.round must not be used


@given(st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(10**6), 10**6).map(lambda i: i / 2))
@settings(max_examples=500, deadline=None)
def test_lround_matches_libm(x: float) -> None:
    assert int(pyr.lround(x)) == _c_lround()(x)


def test_normalize_rgb() -> None:
    # the stored means: 16093282, 15335555, 13670547 times 2**-17
    assert pyr.RGB_MEANS.tolist() == [m * 2.0**-17 for m in (16093282, 15335555, 13670547)]
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = pyr.normalize_rgb(img)
    assert out.shape == (3, 7, 5) and out.dtype == np.float32
    for c in range(3):
        expect = ((img[:, :, c].astype(np.float32) - pyr.RGB_MEANS[c]) / np.float32(256)).astype(np.float32)
        assert np.array_equal(out[c], expect)
    assert out[0, 0, 0] == np.float32((np.float32(img[0, 0, 0]) - np.float32(122.782)) / 256.0)
    grey = img[:, :, 1]
    assert np.array_equal(pyr.normalize_rgb(grey), pyr.normalize_rgb(np.repeat(grey[:, :, None], 3, 2)))
    assert np.array_equal(pyr.normalize_rgb(np.stack([img, img]))[1], out)


# --------------------------------------------------------------------------------------------------
# bilinear resizing and upsampling against dlib.resize_image


SIZES_IN, SIZES_OUT, SEEDS = st.integers(1, 70), st.integers(1, 150), st.integers(0, 2**32 - 1)


@given(SIZES_IN, SIZES_IN, SIZES_OUT, SIZES_OUT, SEEDS)
@settings(max_examples=150, deadline=None)
def test_resize_float_matches_dlib(h: int, w: int, oh: int, ow: int, seed: int) -> None:
    dlib = _dlib()
    a = np.random.default_rng(seed).normal(0, 0.3, (h, w)).astype(np.float32)
    assert np.array_equal(pyr.resize_bilinear_f32(a, oh, ow), dlib.resize_image(a, oh, ow))


@given(SIZES_IN, SIZES_IN, SIZES_OUT, SIZES_OUT, SEEDS)
@settings(max_examples=150, deadline=None)
def test_resize_rgb_matches_dlib(h: int, w: int, oh: int, ow: int, seed: int) -> None:
    dlib = _dlib()
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(pyr.resize_bilinear_rgb_u8(img, oh, ow), dlib.resize_image(img, oh, ow))


def test_pyramid_levels_are_dlibs_float_resize_of_the_previous_level() -> None:
    """The CPU fill: each level is dlib's SIMD float resize of the level above (bit-exact)."""
    dlib = _dlib()
    img = _load(REAL_IMAGES[0])
    norm = pyr.normalize_rgb(img)
    tensor, rects = pyr.tiled_pyramid(norm)
    assert tensor.shape == (1, 3, *pyr.tiled_pyramid_layout(*img.shape[:2])[:2])
    l, t, r, b = rects[0]
    assert np.array_equal(tensor[0, :, t : b + 1, l : r + 1], norm)
    inside = np.zeros(tensor.shape[2:], bool)
    for i, (l, t, r, b) in enumerate(rects):
        inside[t : b + 1, l : r + 1] = True
        if i == 0:
            continue
        pl, pt, pr, pb = rects[i - 1]
        for c in range(3):
            src = np.ascontiguousarray(tensor[0, c, pt : pb + 1, pl : pr + 1])
            expect = dlib.resize_image(src, b - t + 1, r - l + 1)
            assert np.array_equal(tensor[0, c, t : b + 1, l : r + 1], expect)
    assert not tensor[0][:, ~inside].any()  # zero (the mean colour) everywhere else


def test_tiled_pyramid_batch_is_per_sample() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 61, 83, 3), dtype=np.uint8)
    batch, rects = pyr.tiled_pyramid(pyr.normalize_rgb(imgs))
    for i in range(3):
        single, rects1 = pyr.tiled_pyramid(pyr.normalize_rgb(imgs[i]))
        assert np.array_equal(batch[i], single[0]) and np.array_equal(rects, rects1)


@pytest.mark.parametrize("rel", REAL_IMAGES)
def test_upsample_matches_dlib_pyramid_up(rel: str) -> None:
    dlib = _dlib()
    img = _load(rel)
    h, w = img.shape[:2]
    up_rect = dlib.pyramid_down(2).rect_up(dlib.rectangle(0, 0, w - 1, h - 1))
    assert pyr.pyramid_up_size(h, w) == (up_rect.bottom() + 1, up_rect.right() + 1) == (2 * h + 1, 2 * w + 2)
    up = pyr.upsample_image(img, 1)
    assert np.array_equal(up, dlib.resize_image(img, 2 * h + 1, 2 * w + 2))
    crop = np.ascontiguousarray(img[:60, :90])
    twice = dlib.resize_image(dlib.resize_image(crop, 121, 182), 243, 366)
    assert np.array_equal(pyr.upsample_image(crop, 2), twice)
    grey = crop[:, :, 0]
    assert np.array_equal(pyr.upsample_image(grey, 1), pyr.upsample_image(np.dstack([grey] * 3), 1))
    assert np.array_equal(pyr.upsample_image(img, 0), img)


def test_map_rects_from_upsampled_matches_dlib_rect_down() -> None:
    dlib = _dlib()
    down2 = dlib.pyramid_down(2)
    rng = np.random.default_rng(2)
    rects = rng.integers(-500, 3000, (200, 4))
    for times in range(4):
        got = pyr.map_rects_from_upsampled(rects, times)
        for (l, t, r, b), g in zip(rects, got):
            d = down2.rect_down(dlib.rectangle(int(l), int(t), int(r), int(b)), times)
            assert (d.left(), d.top(), d.right(), d.bottom()) == tuple(g)


# --------------------------------------------------------------------------------------------------
# tensor -> image mapping, candidates


def test_nearest_level() -> None:
    rects = np.array([[0, 0, 9, 9], [19, 0, 28, 9], [40, 0, 49, 9], [19, 0, 28, 9]])
    pts = np.array([[5, 5], [25, 5], [14, 5], [15, 5], [13, 5], [34, 5], [100, 100], [-3, -4], [34, 7]])
    # contained; contained in 1 and 3 -> 1; equidistant (5, 5) -> first; closer to 1; closer to 0;
    # equidistant between 1 and 2 (6, 6) -> 1; far right -> 2; far left -> 0; (6, 6): 1
    assert pyr.nearest_level(rects, pts).tolist() == [0, 1, 0, 1, 0, 1, 2, 0, 1]


def test_candidate_in_every_level_and_in_a_gap() -> None:
    dlib = _dlib()
    down6 = dlib.pyramid_down(6)
    nr, nc, rects = pyr.tiled_pyramid_layout(480, 360)
    ho, wo = pyr.detector_output_shape(nr, nc)
    rr, cc = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    px, py = 8 * cc + 14, 8 * rr + 14
    seen = set()
    for lvl, (l, t, r, b) in enumerate(rects):
        cells = np.argwhere((px >= l) & (px <= r) & (py >= t) & (py <= b))
        if len(cells) == 0:
            continue  # the smallest levels lie between output points
        seen.add(lvl)
        score = np.zeros((ho, wo), np.float32)
        score[tuple(cells[len(cells) // 2])] = 1.0
        got, sc = pyr.output_to_image_rects(score, rects)
        y, x = 8.0 * cells[len(cells) // 2] + 14
        tl = down6.point_up(dlib.dpoint(x - 39.5 - l, y - 39.5 - t), lvl)
        br = down6.point_up(dlib.dpoint(x + 39.5 - l, y + 39.5 - t), lvl)
        expect = pyr.lround(np.array([tl.x, tl.y, br.x, br.y])).tolist()
        assert got.tolist() == [expect] and sc.tolist() == [1.0]
    assert len(seen) >= 15
    # y = 8*60+14 = 494 lies in the 10-row gap between level 0 (rows 11..490) and level 1 (501..900):
    # nearest is level 0 (4 rows away), so no point_up at all
    score = np.zeros((ho, wo), np.float32)
    score[60, 20] = 2.0
    got, _ = pyr.output_to_image_rects(score, rects)
    x, y = 8 * 20 + 14, 494
    assert got.tolist() == [pyr.lround(np.array([x - 39.5, y - 39.5, x + 39.5, y + 39.5]) - 11).tolist()]
    score[60, 20], score[61, 20] = 0.0, 2.0  # y = 502: inside level 1
    got, _ = pyr.output_to_image_rects(score, rects)
    p = [down6.point_up(dlib.dpoint(x + d - 11, 502 + d - 501), 1) for d in (-39.5, 39.5)]
    assert got.tolist() == [pyr.lround(np.array([p[0].x, p[0].y, p[1].x, p[1].y])).tolist()]


def test_candidates_threshold_and_lround_at_level0() -> None:
    nr, nc, rects = pyr.tiled_pyramid_layout(480, 360)
    score = np.full(pyr.detector_output_shape(nr, nc), -1.0, np.float32)
    score[0, 0] = 0.25
    score[0, 5] = 0.5
    score[3, 3] = 0.0  # not > 0
    score[4, 4] = np.float32(1e-38)  # > 0
    got, sc = pyr.output_to_image_rects(score, rects)
    # cell (0,0): point (14,14), edges 14 -+ 39.5 - 11 = -36.5 / 42.5 -> lround -37 / 43: 81 px wide
    # cell (0,5): x = 54 -> 3.5 / 82.5 -> 4 / 83: 80 px wide
    assert got.tolist() == [[-37, -37, 43, 43], [4, -37, 83, 43], [-5, -5, 75, 75]]
    assert sc.tolist() == [0.25, 0.5, float(np.float32(1e-38))]
    assert len(pyr.output_to_image_rects(score, rects, threshold=0.25)[1]) == 1
    # a (width, height) window: 60 wide, 90 tall -> +-29.5 and +-44.5 around (54, 14)
    got, _ = pyr.output_to_image_rects(score, rects, threshold=0.3, window=(60, 90))
    assert got.tolist() == [[14, -42, 73, 48]]  # 54-11 -+ 29.5 -> 13.5/72.5; 14-11 -+ 44.5 -> -41.5/47.5


def test_tensor_rects_to_image_uses_dlib_point_up() -> None:
    dlib = _dlib()
    down6 = dlib.pyramid_down(6)
    _, _, rects = pyr.tiled_pyramid_layout(720, 1280)
    rng = np.random.default_rng(3)
    for lvl in range(len(rects)):
        l, t, r, b = rects[lvl]
        cx, cy = rng.uniform(l, r), rng.uniform(t, b)
        d = np.array([[cx - 39.5, cy - 39.5, cx + 39.5, cy + 39.5]])
        got = pyr.tensor_rects_to_image(d, rects)[0]
        tl = down6.point_up(dlib.dpoint(d[0, 0] - l, d[0, 1] - t), lvl)
        br = down6.point_up(dlib.dpoint(d[0, 2] - l, d[0, 3] - t), lvl)
        assert got.tolist() == [tl.x, tl.y, br.x, br.y]


# --------------------------------------------------------------------------------------------------
# overlap test and NMS


def test_overlap_uses_the_enclosing_box_not_the_union() -> None:
    a, b = np.array([0, 0, 9, 9]), np.array([1, 1, 5, 13])
    # inner 45, union 120 (IoU 0.375 > thresh), enclosing box 10x14 = 140 (0.321 < thresh)
    assert not pyr.overlaps_nms(a, b)
    assert pyr.overlaps_nms(a, b, iou_thresh=0.32)
    assert not pyr.overlaps_nms(a, np.array([10, 0, 19, 9]))  # touching, no shared pixel


def test_overlap_comparisons_are_strict() -> None:
    a, b = np.array([0, 0, 9, 9]), np.array([0, 0, 9, 19])  # inner 100, enclosing 200: exactly 0.5
    assert not pyr.overlaps_nms(a, b, iou_thresh=0.5)
    assert pyr.overlaps_nms(a, b, iou_thresh=0.4999)
    small, big = np.array([2, 2, 5, 5]), np.array([0, 0, 9, 9])  # small fully covered, IoU 0.16
    assert not pyr.overlaps_nms(small, big) and not pyr.overlaps_nms(big, small)  # 1.0 is not > 1.0
    assert pyr.overlaps_nms(small, big, percent_covered_thresh=0.99)
    assert pyr.overlaps_nms(big, small, percent_covered_thresh=0.99)
    # broadcasting
    assert pyr.overlaps_nms(big, np.array([small, [50, 50, 60, 60]]), 0.5, 0.99).tolist() == [True, False]


def test_nms_is_greedy_over_kept_boxes_only() -> None:
    a, b, c = [0, 0, 9, 9], [3, 0, 12, 9], [6, 0, 15, 9]  # a~b (0.54), b~c (0.54), a/c 0.25
    keep = pyr.nms(np.array([c, a, b]), np.array([0.7, 0.9, 0.8]))
    assert keep.tolist() == [1, 0]  # a, then c: b was suppressed, so it suppresses nothing
    assert pyr.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    assert pyr.nms(np.array([a, [0, 0, 9, 10]]), np.array([0.5, 0.6]), 0.95, 0.95).tolist() == [1]


@given(
    st.lists(
        st.tuples(*[st.integers(0, 60)] * 2, *[st.integers(1, 40)] * 2, st.floats(0, 1)),
        max_size=40,
    ),
    st.sampled_from([(pyr.NMS_IOU_THRESH, 1.0), (0.5, 0.8), (0.0, 1.0)]),
)
@settings(max_examples=200, deadline=None)
def test_nms_properties(boxes: list, thresholds: tuple) -> None:  # fmt: skip
    rects = np.array([[x, y, x + w - 1, y + h - 1] for x, y, w, h, _ in boxes], dtype=np.int64).reshape(-1, 4)
    scores = np.array([s for *_, s in boxes])
    keep = pyr.nms(rects, scores, *thresholds)
    assert (np.diff(scores[keep]) <= 0).all()
    for i, k in enumerate(keep):
        assert not pyr.overlaps_nms(rects[keep[:i]], rects[k], *thresholds).any()
    dropped = np.setdiff1d(np.arange(len(rects)), keep)
    for d in dropped:  # suppressed by a kept box that comes first in the (stable) score order
        earlier = [k for k in keep if scores[k] > scores[d] or (scores[k] == scores[d] and k < d)]
        assert pyr.overlaps_nms(rects[earlier], rects[d], *thresholds).any()


# --------------------------------------------------------------------------------------------------
# end to end against dlib's CNN detector with synthetic model files


def _pint(v: int) -> bytes:
    mag = abs(int(v)).to_bytes(8, "little").rstrip(b"\0") or b"\0"
    return bytes([len(mag) | (0x80 if v < 0 else 0)]) + mag


def _preal(v: float, digits: int) -> bytes:
    m, e = math.frexp(v)
    return _pint(int(m * 2**digits)) + _pint(e - digits)


def _pstr(s: str) -> bytes:
    return _pint(len(s)) + s.encode()


def _ptensor(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype="<f4")
    return _pint(2) + b"".join(_pint(d) for d in a.shape) + a.tobytes()


def _palias(*shape: int) -> bytes:
    return _pint(1) + b"".join(_pint(d) for d in shape)


_LAYER_TAIL = b"110" + _ptensor(np.zeros((0, 0, 0, 0))) * 3  # setup, stale, disabled; 3 empty tensors


def _con(filters: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> bytes:
    f, c, kh, kw = filters.shape
    params = np.concatenate([filters.ravel(), bias.ravel()]).reshape(-1, 1, 1, 1)
    return (_pstr("con_4") + _ptensor(params) + _pint(f) + _pint(kh) + _pint(kw) + _pint(stride) * 2
            + _pint(pad) * 2 + _palias(f, c, kh, kw) + _palias(1, f, 1, 1) + _preal(1.0, 53) * 4)  # fmt: skip


def _affine(c: int) -> bytes:  # gamma 1, beta 0
    params = np.concatenate([np.ones(c), np.zeros(c)]).reshape(-1, 1, 1, 1)
    return _pstr("affine_") + _ptensor(params) + _palias(1, c, 1, 1) * 2 + _pint(0)


def _centre_taps(f: int, c: int, k: int, taps: list[tuple[int, int, float]]) -> np.ndarray:
    """(f, c, k, k) filters, zero but for ``filters[f_i, c_i, k//2, k//2] = v_i``."""
    w = np.zeros((f, c, k, k), np.float32)
    for fi, ci, v in taps:
        w[fi, ci, k // 2, k // 2] = v
    return w


def synthetic_detector(
    ch_a: int = 0,
    ch_b: int = 1,
    w_b: float = 2.0**-8,
    bias: float = 0.0,
    window: tuple[int, int] = (80, 80),
    nms: tuple[float, float] = (pyr.NMS_IOU_THRESH, 1.0),
    means: tuple[float, float, float] = (122.782, 117.001, 104.298),
    padding: tuple[int, int] | None = None,
) -> bytes:
    """A .dat file with the detector's architecture whose score at output cell (r, c) is exactly
    ``f32(f32(T[ch_a] + w_b*T[ch_b]) + bias)`` at tensor point (8c+14, 8r+14): each layer passes
    ``relu(x)`` and ``relu(-x)`` of the two channels on through centre taps of 1/-1 (exact), the
    stride-2 5x5 convs take input 2r+2, so the chain samples 8r+14; the last conv recombines.
    With ``w_b = 0`` and ``bias > 0`` every cell scores ``bias``."""
    keep4 = [(j, j, 1.0) for j in range(4)]
    first = _centre_taps(16, 3, 5, [(0, ch_a, 1.0), (1, ch_a, -1.0), (2, ch_b, 1.0), (3, ch_b, -1.0)])
    w_a = 1.0 if w_b else 0.0
    last = _centre_taps(1, 45, 9, [(0, 0, w_a), (0, 1, -w_a), (0, 2, w_b), (0, 3, -w_b)])
    z = lambda n: np.zeros(n, np.float32)  # noqa: E731
    relu = _pstr("relu_")
    details = [  # outermost first; the last one owns the input layer
        _con(last, np.array([bias], np.float32), 1, 4), relu, _affine(45),
        _con(_centre_taps(45, 45, 5, keep4), z(45), 1, 2), relu, _affine(45),
        _con(_centre_taps(45, 45, 5, keep4), z(45), 1, 2), relu, _affine(45),
        _con(_centre_taps(45, 32, 5, keep4), z(45), 1, 2), relu, _affine(32),
        _con(_centre_taps(32, 32, 5, keep4), z(32), 2, 0), relu, _affine(32),
        _con(_centre_taps(32, 16, 5, keep4), z(32), 2, 0), relu, _affine(16),
        _con(first, z(16), 2, 0),
    ]  # fmt: skip
    options = [1.0, 1.0, 0.5, *nms, 0.5, 1.0]  # losses, truth IoU, overlaps_nms, overlaps_ignore
    loss = _pstr("loss_mmod_") + _pint(1) + _pint(window[0]) + _pint(window[1])
    loss += b"".join(_preal(v, 53) for v in options)
    avgs = b"".join(_preal(float(m), 24) for m in np.float32(means))
    if padding is None:
        inp = _pstr("input_rgb_image_pyramid") + avgs
    else:
        inp = _pstr("input_rgb_image_pyramid2") + avgs + _pint(padding[0]) + _pint(padding[1])
    out = _pint(1) + loss + _pint(2) * 18 + _pint(3) + inp + details[-1] + _LAYER_TAIL + _pint(1)
    for d in reversed(details[:-1]):
        out += d + _LAYER_TAIL
    return out


@pytest.fixture(scope="session")
def load_detector(tmp_path_factory: pytest.TempPathFactory):
    dlib = _dlib()
    folder = tmp_path_factory.mktemp("synthetic_mmod")
    cache: dict[bytes, object] = {}

    def load(data: bytes):
        key = hashlib.sha256(data).digest()
        if key not in cache:
            path = folder / f"{key.hex()[:16]}.dat"
            path.write_bytes(data)
            cache[key] = dlib.cnn_face_detection_model_v1(str(path))
        return cache[key]

    return load


def _as_arrays(dets) -> tuple[np.ndarray, np.ndarray]:
    rects = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in dets]
    return np.array(rects, dtype=np.int64).reshape(-1, 4), np.array([d.confidence for d in dets])


def _canonical(rects: np.ndarray, scores: np.ndarray) -> tuple[list, list]:
    """Order by score, then rectangle: dlib's std::sort leaves the order of equal scores open."""
    order = np.lexsort((*rects.T[::-1], -scores))
    return rects[order].tolist(), scores[order].tolist()


def _tied_pairs_overlap(cand: np.ndarray, sc: np.ndarray, nms: tuple[float, float]) -> bool:
    """True if two candidates with equal scores overlap: then dlib's result depends on sort order."""
    values, counts = np.unique(sc, return_counts=True)
    for s in values[counts > 1]:
        group = cand[sc == s]
        if pyr.overlaps_nms(group[:, None], group[None, :], *nms)[~np.eye(len(group), dtype=bool)].any():
            return True
    return False


@given(
    st.integers(1, 150),
    st.integers(1, 150),
    st.sampled_from([(10, 11), (1, 0), (5, 3), (14, 14), (12, 2)]),
    st.sampled_from([(80, 80), (1, 1), (60, 90), (33, 20)]),
)
@settings(max_examples=60, deadline=None)
def test_layout_and_mapping_match_dlib(load_detector, h: int, w: int, pad: tuple, window: tuple) -> None:
    """Every output cell is a detection (score 0.25, no suppression): dlib returns all of them
    mapped to the image, so the multiset of rectangles pins NR, NC, levels and mapping."""
    nr, nc, rects = pyr.tiled_pyramid_layout(h, w, *pad)
    ho, wo = pyr.detector_output_shape(nr, nc)
    # where dlib fails (no level, no output) or misbehaves (levels outside the tensor)
    assume(not pyr.is_degenerate_layout(nr, nc, rects) and ho * wo > 0)
    det = load_detector(synthetic_detector(w_b=0.0, bias=0.25, window=window, nms=(1.0, 1.0), padding=pad))
    ref, ref_sc = _as_arrays(det(np.zeros((h, w, 3), np.uint8), 0))
    got, sc = pyr.output_to_image_rects(np.full((ho, wo), 0.25, np.float32), rects, window=window)
    assert len(ref) == ho * wo == len(got)
    assert _canonical(ref, ref_sc) == _canonical(got, sc)


CASES = [  # seed, (h, w), upsample, (ch_a, ch_b), bias, window, nms, means, padding, grey
    (0, (96, 128), 0, (0, 1), -0.02, (80, 80), (pyr.NMS_IOU_THRESH, 1.0), None, None, False),
    (1, (70, 90), 1, (2, 0), -0.1, (80, 80), (pyr.NMS_IOU_THRESH, 1.0), None, None, False),
    (2, (41, 57), 2, (1, 2), -0.2, (80, 80), (pyr.NMS_IOU_THRESH, 1.0), None, None, False),
    (3, (120, 77), 1, (0, 2), -0.05, (50, 70), (0.5, 0.8), (100.5, 50.25, 200.0), (7, 3), False),
    (4, (88, 140), 0, (2, 1), -0.15, (30, 30), (0.25, 1.0), (0.0, 255.0, 128.0), (12, 14), False),
    (9, (90, 110), 1, (0, 1), -0.35, (80, 80), (pyr.NMS_IOU_THRESH, 1.0), None, None, True),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"case{c[0]}" for c in CASES])
def test_detections_match_dlib_passthrough_model(load_detector, case: tuple) -> None:
    seed, (h, w), up, (ch_a, ch_b), bias, window, nms, means, padding, grey = case
    means = means or tuple(float(m) for m in pyr.RGB_MEANS)
    pad = padding or (pyr.PYRAMID_PADDING, pyr.PYRAMID_OUTER_PADDING)
    det = load_detector(synthetic_detector(ch_a, ch_b, 2.0**-8, bias, window, nms, means, padding))
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)

    tensor, rects = pyr.build_input_tensor(img, up, means=means, padding=pad[0], outer_padding=pad[1])
    ho, wo = pyr.detector_output_shape(*tensor.shape[2:])
    t = tensor[0, :, 14::8, 14::8][:, :ho, :wo]
    score = (t[ch_a] + np.float32(2.0**-8) * t[ch_b]) + np.float32(bias)
    cand, sc = pyr.output_to_image_rects(score, rects, window=window)
    assert len(cand) > 5 and not _tied_pairs_overlap(cand, sc, nms)  # the case is informative and fair
    got = pyr.detections_from_output(score, rects, up, 0.0, window, *nms)
    ref = _as_arrays(det(img, up))
    assert len(got[0]) > 2
    assert _canonical(*ref) == _canonical(*got)


def test_batch_matches_dlib_detect_mult(load_detector) -> None:
    means = (100.5, 50.25, 200.0)
    det = load_detector(synthetic_detector(2, 0, 2.0**-8, -0.05, (80, 80), (0.35, 1.0), means))
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (90, 110, 3), dtype=np.uint8) for _ in range(3)]
    for up in (0, 1):
        tensor, rects = pyr.build_input_tensor(imgs, up, means=means)
        assert tensor.shape[0] == 3
        ho, wo = pyr.detector_output_shape(*tensor.shape[2:])
        t = tensor[:, :, 14::8, 14::8][:, :, :ho, :wo]
        out = ((t[:, 2] + np.float32(2.0**-8) * t[:, 0]) + np.float32(-0.05))[:, None]
        got = pyr.detections_from_batch_output(out, rects, up, iou_thresh=0.35)
        ref = det(imgs, up, batch_size=3)
        assert len(ref) == len(got) == 3
        for r, g in zip(ref, got):
            assert len(g[0]) > 2
            assert _canonical(*_as_arrays(r)) == _canonical(*g)
