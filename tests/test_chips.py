"""Face chips (engines/chips.py) against dlib 20.0.1: golden files, saved PNG chips, dlib as oracle."""

from __future__ import annotations

import hashlib
from functools import cache

import cv2
import numpy as np
import pytest

from facestream.engines.chips import (
    extract_face_chips,
    face_chip_details,
    pyramid_down2,
    similarity_transform,
)

from conftest import DATA, GOLDEN, golden_images, golden_video, load_rgb_as_dlib, oracle_missing, require_dlib

SIZE, PADDING = 150, 0.25
# acceptance bar when not bit-identical: at most 1 grey level off, in at most 0.1 % of the values
MAX_LEVEL_DIFF, MAX_DIFF_FRACTION = 1, 0.001


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def assert_within_bar(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape, what
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    frac = np.count_nonzero(diff) / diff.size
    assert diff.max() <= MAX_LEVEL_DIFF and frac <= MAX_DIFF_FRACTION, (
        f"{what}: max diff {diff.max()}, {frac:.4%} of values differ"
    )


def rgb(img: np.ndarray) -> np.ndarray:
    """dlib.load_rgb_image returns RGB already; 32bit.png comes back RGB too, drop alpha if any."""
    return np.ascontiguousarray(img[..., :3]) if img.ndim == 3 else img


def dlib_chip(dlib, img: np.ndarray, lm: np.ndarray, size: int = SIZE, padding: float = PADDING) -> np.ndarray:
    """dlib.get_face_chip for one face (the box does not matter for 5-point chips); grey → R=G=B."""
    pts = [dlib.point(int(x), int(y)) for x, y in lm]
    det = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), pts)
    chip = np.asarray(dlib.get_face_chip(np.ascontiguousarray(img), det, size=size, padding=padding))
    return np.repeat(chip[..., None], 3, axis=2) if chip.ndim == 2 else chip


def chip_rect_size(lm: np.ndarray) -> float:
    """Side of the chip rectangle in source pixels (dlib starts a pyramid level at about 300)."""
    rect = face_chip_details(np.asarray(lm)[None])[0][0]
    return float(rect[2] - rect[0] + 1)


# ------------------------------------------------------------------------------------------------
# golden parity: every CNN face in golden/dlib-20.0.1.json


GOLDEN_IMAGES = sorted(rel for rel, rec in golden_images().items() if rec.get("cnn_faces"))


@cache
def golden_result(rel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(image, rects, angles, chips, faces) for one golden image, computed once per session."""
    img = rgb(load_rgb_as_dlib(DATA / rel))
    faces = golden_images()[rel]["cnn_faces"]
    lm = np.array([f["landmarks_5"] for f in faces], dtype=np.int64)
    rects, angles = face_chip_details(lm, SIZE, PADDING)
    chips = extract_face_chips(img, lm, SIZE, PADDING)
    return img, rects, angles, chips, faces


@pytest.mark.parametrize("rel", GOLDEN_IMAGES)
def test_golden_chip_details(rel: str) -> None:
    _, rects, angles, _, faces = golden_result(rel)
    ref_rects = np.array([f["chip_details"]["rect"] for f in faces])
    ref_angles = np.array([f["chip_details"]["angle"] for f in faces])
    assert all(f["chip_details"]["rows"] == SIZE == f["chip_details"]["cols"] for f in faces)
    np.testing.assert_allclose(rects, ref_rects, rtol=0, atol=1e-9)
    np.testing.assert_allclose(angles, ref_angles, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rel", GOLDEN_IMAGES)
def test_golden_chips_within_bar(rel: str) -> None:
    """Every golden chip: sha256-identical to dlib's, or else within the bar of dlib's pixels."""
    img, _, _, chips, faces = golden_result(rel)
    assert chips.shape == (len(faces), SIZE, SIZE, 3) and chips.dtype == np.uint8
    for i, face in enumerate(faces):
        if sha256(chips[i]) == face["chip_sha256"]:
            continue
        dlib = require_dlib()  # regenerate dlib's pixels to measure the difference
        ref = dlib_chip(dlib, img, np.array(face["landmarks_5"]))
        assert sha256(ref) == face["chip_sha256"], f"{rel} face {i}: dlib itself no longer matches golden"
        assert_within_bar(chips[i], ref, f"{rel} face {i}")


def test_golden_chips_bit_exact() -> None:
    """The stronger claim: all golden chips are byte-identical to dlib's (84 faces in 27 images)."""
    total, mismatched = 0, []
    for rel in GOLDEN_IMAGES:
        _, _, _, chips, faces = golden_result(rel)
        for i, face in enumerate(faces):
            total += 1
            if sha256(chips[i]) != face["chip_sha256"]:
                mismatched.append(f"{rel}#{i}")
    assert total >= 80
    assert not mismatched, f"{len(mismatched)}/{total} chips not bit-identical: {mismatched}"


@pytest.mark.parametrize("rel", sorted(rel for rel, rec in golden_images().items() if rec.get("saved_chip")))
def test_golden_png_chips(rel: str) -> None:
    saved = golden_images()[rel]["saved_chip"]
    ref = cv2.cvtColor(cv2.imread(str(GOLDEN / saved["png"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    _, _, _, chips, faces = golden_result(rel)
    ours = chips[saved["face_index"]]
    assert sha256(ref) == faces[saved["face_index"]]["chip_sha256"]  # the PNG is dlib's chip
    assert_within_bar(ours, ref, f"{rel} face {saved['face_index']}")
    np.testing.assert_array_equal(ours, ref)


def read_video_frames(indices: set[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(DATA / golden_video()["video"]["file"]))
    frames: dict[int, np.ndarray] = {}
    try:
        for k in range(max(indices) + 1):
            ok, bgr = cap.read()
            assert ok, f"could not decode frame {k}"
            if k in indices:
                frames[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return frames


def test_golden_video_chips() -> None:
    records = golden_video()["frames"]
    frames = read_video_frames({0, 10, 25})
    for k, frame in frames.items():
        rec = records[str(k)]
        if sha256(frame) != rec["frame_rgb_sha256"]:
            oracle_missing(f"this OpenCV decodes frame {k} differently from the golden run")
        faces = rec["cnn_faces"]
        assert faces
        lm = np.array([f["landmarks_5"] for f in faces])
        rects, angles = face_chip_details(lm)
        np.testing.assert_allclose(rects, [f["chip_details"]["rect"] for f in faces], rtol=0, atol=1e-9)
        np.testing.assert_allclose(angles, [f["chip_details"]["angle"] for f in faces], rtol=0, atol=1e-9)
        chips = extract_face_chips(frame, lm)
        assert [sha256(c) for c in chips] == [f["chip_sha256"] for f in faces], f"frame {k}"


# ------------------------------------------------------------------------------------------------
# dlib itself as the oracle on inputs it has not seen


def _variants(img: np.ndarray, lm: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Transformed images with the landmarks carried along (N, 5, 2 integer pixels)."""
    h, w = img.shape[:2]
    out = [("orig", img, lm)]
    flipped = np.ascontiguousarray(img[:, ::-1])
    mirrored = lm.copy()
    mirrored[..., 0] = w - 1 - mirrored[..., 0]
    out.append(("flip", flipped, mirrored[:, [2, 3, 0, 1, 4]]))  # still a face: swap the eyes
    out.append(("flip-unswapped", flipped, mirrored))  # a reflected template: det(cov) < 0
    for s in (0.7, 1.6):
        resized = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        out.append((f"x{s}", resized, np.floor(lm * s + 0.5).astype(np.int64)))
    # crop through the middle of the first face so that it sticks out of the image
    cx, cy = lm[0].mean(axis=0).astype(int)
    x0, y0 = max(cx - w // 3, 0), max(cy - h // 3, 0)
    out.append(("crop", np.ascontiguousarray(img[y0 : cy + 5, x0 : cx + 3]), lm - [x0, y0]))
    out.append(("grey", cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), lm))
    return out


# (image, whether some variant has a chip rect > 300 px, i.e. needs pyramid_down<2> levels)
ORACLE_IMAGES = [
    ("fr_examples/two_people.jpg", False),  # 2 faces, slight tilt, ~175 px
    ("fr_examples/obama.jpg", True),  # ~294 px chip rect: x1.6 needs a pyramid level
    ("dlib_faces/Tom_Cruise_avp_2014_4.jpg", True),  # 524 px: pyramid depth 1, x1.6 depth 2
    ("dlib_faces/bald_guys.jpg", True),  # many faces, some rotated, one of 332 px
    ("dlib_faces/2007_007763.jpg", False),  # small faces, strong upscaling
]


@pytest.mark.oracle
@pytest.mark.parametrize(("rel", "has_pyramid"), ORACLE_IMAGES)
def test_oracle_variants(rel: str, has_pyramid: bool) -> None:
    dlib = require_dlib()
    rng = np.random.default_rng(sum(map(ord, rel)))
    img = rgb(load_rgb_as_dlib(DATA / rel))
    lm0 = np.array([f["landmarks_5"] for f in golden_images()[rel]["cnn_faces"][:6]], dtype=np.int64)
    n_checked, biggest, outside = 0, 0.0, 0
    for name, im, lm in _variants(img, lm0):
        h, w = im.shape[:2]
        # perturbed and shifted copies of every face; the last one is pushed half out of the image
        jitter = rng.integers(-3, 4, size=lm.shape)
        shift = rng.integers(-15, 16, size=(lm.shape[0], 1, 2))
        half_out = lm[:1] - [lm[0, :, 0].min() - rng.integers(-30, 10), 0]
        faces = np.concatenate([lm, lm + jitter + shift, half_out])
        ours = extract_face_chips(im, faces, SIZE, PADDING)
        for i, f in enumerate(faces):
            ref = dlib_chip(dlib, im, f)
            assert_within_bar(ours[i], ref, f"{rel} {name} face {i}")
            np.testing.assert_array_equal(ours[i], ref, err_msg=f"{rel} {name} face {i}")
            n_checked += 1
            biggest = max(biggest, chip_rect_size(f))
            outside += bool((f.min(axis=0) < 0).any() or f[:, 0].max() >= w or f[:, 1].max() >= h)
    assert n_checked >= 20 and outside >= 1
    assert (biggest > 300) == has_pyramid


@pytest.mark.oracle
def test_oracle_random_geometry() -> None:
    """Arbitrary rotations (upside down too), scales from 0.2x to 5x, other sizes and paddings."""
    dlib = require_dlib()
    rel = "fr_examples/two_people.jpg"
    img = rgb(load_rgb_as_dlib(DATA / rel))
    base = np.array(golden_images()[rel]["cnn_faces"][0]["landmarks_5"], dtype=np.float64)
    h, w = img.shape[:2]
    rng = np.random.default_rng(7)
    for trial in range(40):
        th = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        pts = (base - base.mean(axis=0)) @ rot.T * rng.choice([0.2, 1.0, 2.5, 5.0])
        pts = np.round(pts + rng.uniform([-200, -200], [w + 200, h + 200])).astype(np.int64)
        size = int(rng.choice([150, 151, 64, 2]))
        padding = float(rng.choice([0.25, 0.0, 0.5]))
        ours = extract_face_chips(img, pts[None], size, padding)[0]
        ref = dlib_chip(dlib, img, pts, size, padding)
        np.testing.assert_array_equal(ours, ref, err_msg=f"trial {trial}: {size=} {padding=} {pts.tolist()}")


# ------------------------------------------------------------------------------------------------
# edge cases


def test_no_faces() -> None:
    img = np.zeros((40, 30, 3), np.uint8)
    chips = extract_face_chips(img, np.zeros((0, 5, 2), np.int64))
    assert chips.shape == (0, 150, 150, 3) and chips.dtype == np.uint8
    assert extract_face_chips(img, np.zeros((0, 5, 2)), size=64).shape == (0, 64, 64, 3)
    rects, angles = face_chip_details(np.zeros((0, 5, 2), np.int64))
    assert rects.shape == (0, 4) and angles.shape == (0,)


def test_face_entirely_outside_is_black() -> None:
    dlib = require_dlib()
    rel = "fr_examples/obama-480p.jpg"
    img = rgb(load_rgb_as_dlib(DATA / rel))
    lm = np.array(golden_images()[rel]["cnn_faces"][0]["landmarks_5"], dtype=np.int64)
    h, w = img.shape[:2]
    for off in ([w + 400, 0], [-w - 400, 0], [0, h + 400], [0, -h - 900]):
        chip = extract_face_chips(img, (lm + off)[None])[0]
        assert not chip.any()
        np.testing.assert_array_equal(chip, dlib_chip(dlib, img, lm + off))
    # big enough to need pyramid levels and still off the image
    big = (lm - lm.mean(axis=0)) * 5 + [w + 2000, 300]
    assert chip_rect_size(big) > 600
    assert not extract_face_chips(img, np.round(big).astype(np.int64)[None]).any()


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (5, 7), (8, 9), (9, 9), (12, 20)])
def test_tiny_images(shape: tuple[int, int]) -> None:
    dlib = require_dlib()
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    base = np.array([[40, 20], [31, 21], [9, 20], [18, 21], [25, 38]], np.float64) / 40 * min(shape)
    for scale in (1.0, 40.0):  # ×40: a pyramid level of a crop that is ≤ 8 px is empty
        lm = np.floor((base - base.mean(axis=0)) * scale + base.mean(axis=0) + 0.5).astype(np.int64)
        ours = extract_face_chips(img, lm[None])[0]
        np.testing.assert_array_equal(ours, dlib_chip(dlib, img, lm))


def test_grey_is_rgb_with_equal_channels() -> None:
    rel = "fr_examples/two_people.jpg"
    img = rgb(load_rgb_as_dlib(DATA / rel))
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    lm = np.array([f["landmarks_5"] for f in golden_images()[rel]["cnn_faces"]])
    a = extract_face_chips(grey, lm)
    b = extract_face_chips(np.repeat(grey[..., None], 3, axis=2), lm)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(lm), 150, 150, 3) and (a[..., 0] == a[..., 2]).all()


def test_batch_equals_single_face_calls() -> None:
    """Faces are extracted independently: a batch gives the same chips as one call per face."""
    rel = "dlib_faces/bald_guys.jpg"
    img = rgb(load_rgb_as_dlib(DATA / rel))
    lm = np.array([f["landmarks_5"] for f in golden_images()[rel]["cnn_faces"]])
    big = (lm[:1] - lm[0].mean(axis=0)) * 3 + lm[0].mean(axis=0)  # needs a pyramid, unlike the others
    faces = np.concatenate([lm, np.round(big).astype(np.int64)])
    batch = extract_face_chips(img, faces)
    for i in range(len(faces)):
        np.testing.assert_array_equal(batch[i], extract_face_chips(img, faces[i : i + 1])[0])


def test_pyramid_down2_matches_direct_formula() -> None:
    rng = np.random.default_rng(0)
    for h, w in [(9, 9), (10, 13), (23, 18)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = pyramid_down2(img)
        assert out.shape == ((h - 3) // 2, (w - 3) // 2, 3)
        k = np.array([1, 4, 6, 4, 1])
        ref = np.empty(out.shape, np.int64)
        for r in range(out.shape[0]):
            for c in range(out.shape[1]):
                block = img[2 * r : 2 * r + 5, 2 * c : 2 * c + 5].astype(np.int64)
                ref[r, c] = np.einsum("i,j,ijc->c", k, k, block) // 256
        np.testing.assert_array_equal(out, ref)
    assert (pyramid_down2(np.full((30, 40, 3), 255, np.uint8)) == 255).all()
    assert pyramid_down2(np.zeros((8, 100, 3), np.uint8)).shape == (0, 0, 3)
    assert pyramid_down2(np.zeros((100, 8), np.uint8)).shape == (0, 0)


def test_similarity_transform_recovers_a_similarity() -> None:
    rng = np.random.default_rng(3)
    src = rng.normal(size=(4, 6, 2)) * 50
    th = rng.uniform(-3, 3, size=4)
    sc = rng.uniform(0.2, 5, size=4)
    rot = np.stack([np.stack([np.cos(th), -np.sin(th)], -1), np.stack([np.sin(th), np.cos(th)], -1)], -2)
    m = sc[:, None, None] * rot
    t = rng.normal(size=(4, 2)) * 100
    dst = np.einsum("nij,nkj->nki", m, src) + t[:, None]
    M, tt = similarity_transform(src, dst)
    np.testing.assert_allclose(M, m, atol=1e-12)
    np.testing.assert_allclose(tt, t, atol=1e-10)
    # a reflection is not a similarity: the result stays a rotation (det > 0)
    M, _ = similarity_transform(src[0], src[0] * [-1, 1])
    assert np.linalg.det(M) > 0


def test_bad_inputs() -> None:
    lm = np.zeros((1, 5, 2))
    with pytest.raises(TypeError):
        extract_face_chips(np.zeros((10, 10, 3), np.float32), lm)
    with pytest.raises(ValueError):
        extract_face_chips(np.zeros((10, 10, 4), np.uint8), lm)
    with pytest.raises(ValueError):
        extract_face_chips(np.zeros((10, 10, 3), np.uint8), np.zeros((1, 6, 2)))  # 5 and 68 points only
    with pytest.raises(ValueError):
        face_chip_details(lm, size=1)
    with pytest.raises(ValueError):
        face_chip_details(lm, padding=-0.1)


def test_rounding_helpers() -> None:
    """std::lround (half away from zero) for the crop box, not numpy's half-to-even."""
    from facestream.engines.chips import _lround, _plain_copy

    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999999999999994, 2.4999999999999996, -2.5000000000000004])
    np.testing.assert_array_equal(_lround(x), [1, 2, 3, -1, -2, 0, 2, -3])
    # dlib's fast path for an unrotated chip of the rect's own size: a copy, black outside
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    chip = _plain_copy(img, np.array([-1.0, 2.5, 2.0, 5.4]))  # lround → l=-1, t=3, r=2, b=5
    assert chip.shape == (3, 4, 3)
    np.testing.assert_array_equal(chip[0, 1:], img[3, 0:3])
    assert not chip[:, 0].any() and not chip[1:].any()
