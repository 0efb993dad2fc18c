"""dlib's HOG frontal-face detector re-implemented (engines/hog.py, engines/fhog.py) against dlib.

Expected values come from dlib-bin 20.0.1: the golden file golden/dlib-20.0.1-hog.json (made by
tests/data/make_hog_golden.py) and, in the `oracle` tests, dlib-bin itself on image variants that
the golden file does not hold. Boxes, scores and filter indices must be identical (scores compared
with ==: the implementation follows dlib's float32 summation order, so no tolerance is needed).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

import numpy as np
import pytest

from facestream.engines import hog
from facestream.engines.dlib_format import DlibFormatError
from facestream.engines.hog import HogFaceDetector

from conftest import DATA, GOLDEN, load_rgb_as_dlib


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "dlib-20.0.1-hog.json").read_text())


@pytest.fixture(scope="module")
def det() -> HogFaceDetector:
    return HogFaceDetector.default()


def assert_same_as_dlib(result: tuple[np.ndarray, np.ndarray, np.ndarray], expected: dict, name: str) -> None:
    boxes, scores, index = result
    want = np.array(expected["rects"], dtype=np.int64).reshape(-1, 4)
    assert boxes.dtype == np.int64 and scores.dtype == np.float64 and index.dtype == np.int64
    assert len(boxes) == len(want), f"{name}: {len(boxes)} faces, dlib found {len(want)}: {boxes} vs {want}"
    np.testing.assert_array_equal(boxes, want, err_msg=name)
    np.testing.assert_array_equal(index, np.array(expected["weight_index"], dtype=np.int64), err_msg=name)
    # Exact equality: dlib's float32 arithmetic is reproduced operation by operation.
    np.testing.assert_array_equal(scores, np.array(expected["scores"], dtype=np.float64), err_msg=name)


def test_shipped_record_is_dlibs_detector() -> None:
    data = hog.DETECTOR_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == hog.DETECTOR_SHA256
    model = hog.parse_hog_detector(data)
    assert model.filters.shape == (5, 31, 10, 10)
    # Values stated in dlib's record (spec dlib-hog-and-68.md §2).
    assert model.thresholds[0] == 3.2744957766996508
    assert (model.iou_thresh, model.percent_covered_thresh) == (0.33008212188056446, 0.7885714285714286)
    assert model.min_pyramid_layer == (64, 64)
    # Every filter takes dlib's separable path: 61/58/54/66/66 rank-1 terms (spec §5).
    assert [len(t) for t in HogFaceDetector(model)._terms] == [61, 58, 54, 66, 66]


def test_bad_records_are_refused() -> None:
    data = hog.DETECTOR_FILE.read_bytes()
    with pytest.raises(DlibFormatError, match="truncated"):
        hog.parse_hog_detector(data[:-10])
    with pytest.raises(DlibFormatError, match="end of the detector record"):
        hog.parse_hog_detector(data + b"\x01\x00")
    with pytest.raises(DlibFormatError):
        hog.parse_hog_detector(b"\x01\x05" + data[2:])


def test_bad_images_are_refused(det: HogFaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((100, 100, 4), np.uint8))
    with pytest.raises(ValueError, match="upsample"):
        det.detect(np.zeros((100, 100), np.uint8), upsample=-1)


def test_tiny_and_empty_images_give_no_faces(det: HogFaceDetector) -> None:
    for shape in [(0, 0, 3), (1, 1, 3), (20, 30), (79, 79, 3)]:
        boxes, scores, index = det.detect(np.full(shape, 128, np.uint8))
        assert boxes.shape == (0, 4) and scores.shape == (0,) and index.shape == (0,)


def test_pyramid_level_counts_from_rect_geometry() -> None:
    # dlib's level count comes from rect_down geometry (spec §3.2 examples), not from the image sizes.
    for (h, w), count in [((480, 640), 12), ((1137, 910), 15), ((1080, 1920), 16), ((76, 76), 1), ((77, 77), 2)]:
        assert len(hog.pyramid_levels(np.zeros((h, w), np.uint8))) == count, (h, w)


def test_golden_file_pixels_match_dlib_decoder() -> None:
    rel = "fr_examples/obama-480p.jpg"
    image = load_rgb_as_dlib(DATA / rel)
    assert hashlib.sha256(image.tobytes()).hexdigest() == golden()["images"][rel]["pixels_sha256"]


@pytest.mark.parametrize("run", ["up0_adj0", "up1_adj-0.5"])
def test_same_as_dlib_on_one_photo(det: HogFaceDetector, run: str) -> None:
    rel = "dlib_faces/2008_002470.jpg"
    upsample, adjust = (1, -0.5) if run == "up1_adj-0.5" else (0, 0.0)
    image = load_rgb_as_dlib(DATA / rel)
    assert_same_as_dlib(det.detect(image, upsample, adjust), golden()["images"][rel]["runs"][run], f"{rel} {run}")
