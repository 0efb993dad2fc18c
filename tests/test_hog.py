"""dlib's HOG frontal-face detector re-implemented (engines/hog.py, engines/fhog.py, engines/hog_kernels.py)
against dlib.

Expected values come from dlib-bin 20.0.1: the golden file golden/dlib-20.0.1-hog.json (made by
tests/data/make_hog_golden.py) and, in the `oracle` tests, dlib-bin itself on image variants that
the golden file does not hold. Boxes, scores and filter indices must be identical (scores compared
with ==: the implementation follows dlib's float32 summation order, so no tolerance is needed).

The default run checks a representative part of the golden file (about a minute on two shared
cores): every photo up to 0.3 MP at upsample 0, a large group photo, and a few photos and video
frames at upsample 1. ``FACESTREAM_HOG_FULL=1`` checks every golden run (26 photos and 5 frames x
upsample 0/1 x adjust_threshold 0/-0.5; several minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import cv2
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
    assert np.diff(HogFaceDetector(model)._term_starts).tolist() == [61, 58, 54, 66, 66]


def test_bad_records_are_refused() -> None:
    data = hog.DETECTOR_FILE.read_bytes()
    with pytest.raises(DlibFormatError, match="truncated"):
        hog.parse_hog_detector(data[:-10])
    with pytest.raises(DlibFormatError, match="end of the detector record"):
        hog.parse_hog_detector(data + b"\x01\x00")
    with pytest.raises(DlibFormatError):
        hog.parse_hog_detector(b"\x01\x05" + data[2:])


def test_runs_without_dlib() -> None:
    # The run-time path reads the shipped record and never imports dlib (a fresh interpreter).
    code = (
        "import sys, numpy as np\n"
        "sys.modules['dlib'] = None  # any 'import dlib' now raises\n"
        "from facestream.engines.hog import HogFaceDetector\n"
        "boxes, scores, index = HogFaceDetector.default().detect(np.full((90, 100, 3), 90, np.uint8))\n"
        "print(len(boxes))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_compiled_kernels_are_cached_under_the_facestream_cache(tmp_path: Path) -> None:
    # A fresh process loads the machine code from <FACESTREAM_CACHE>/numba instead of compiling it;
    # an explicit NUMBA_CACHE_DIR wins.
    code = "import numba, facestream.engines.hog_kernels; print(numba.config.CACHE_DIR)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def cache_dir(**extra: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**env, "FACESTREAM_CACHE": str(tmp_path), **extra})  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert cache_dir() == str(tmp_path / "numba")
    assert cache_dir(NUMBA_CACHE_DIR=str(tmp_path / "own")) == str(tmp_path / "own")


def test_shipped_record_is_checked_at_load(tmp_path: Path) -> None:
    data = bytearray(hog.DETECTOR_FILE.read_bytes())
    data[-5] ^= 1  # one bit of the last filter's weights: still parses, but not dlib's detector
    tampered = tmp_path / "detector.svm"
    tampered.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match="sha256"):
        hog.load_hog_detector(tampered)
    assert hog.load_hog_detector(tampered, sha256=None).model.filters.shape == (5, 31, 10, 10)


def test_bad_images_are_refused(det: HogFaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((100, 100, 4), np.uint8))
    with pytest.raises(ValueError, match="upsample"):
        det.detect(np.zeros((100, 100), np.uint8), upsample=-1)
    # Upsampling multiplies the pixels by 4 each time: refused before anything is allocated.
    with pytest.raises(ValueError, match="more than"):
        det.detect(np.zeros((4000, 3500), np.uint8), upsample=2)


def test_tiny_and_empty_images_give_no_faces(det: HogFaceDetector) -> None:
    for shape in [(0, 0, 3), (1, 1, 3), (20, 30), (79, 79, 3)]:
        boxes, scores, index = det.detect(np.full(shape, 128, np.uint8))
        assert boxes.shape == (0, 4) and scores.shape == (0,) and index.shape == (0,)


def test_pyramid_level_counts_from_rect_geometry() -> None:
    # dlib's level count comes from rect_down geometry (spec §3.2 examples), not from the image sizes.
    for (h, w), count in [((480, 640), 12), ((1137, 910), 15), ((1080, 1920), 16), ((76, 76), 1), ((77, 77), 2)]:
        assert len(list(hog.pyramid_levels(np.zeros((h, w), np.uint8)))) == count, (h, w)


def golden_image(rel: str) -> np.ndarray:
    image = load_rgb_as_dlib(DATA / rel)
    assert hashlib.sha256(image.tobytes()).hexdigest() == golden()["images"][rel]["pixels_sha256"], rel
    return image


@cache
def video_frames() -> dict[str, np.ndarray]:
    wanted = {int(k) for k in golden()["video_frames"]}
    capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
    frames, index = {}, 0
    while index <= max(wanted):
        ok, bgr = capture.read()
        assert ok, f"frame {index}"
        if index in wanted:
            frames[str(index)] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    for key, frame in frames.items():
        assert hashlib.sha256(frame.tobytes()).hexdigest() == golden()["video_frames"][key]["pixels_sha256"], key
    return frames


def parse_run(run: str) -> tuple[int, float]:
    upsample, adjust = run.removeprefix("up").split("_adj")
    return int(upsample), float(adjust)


SMALL = sorted(rel for rel, rec in golden()["images"].items() if rec["shape"][0] * rec["shape"][1] <= 300_000)
QUICK = [(rel, "up0_adj-0.5") for rel in SMALL] + [
    ("dlib_faces/2008_001322.jpg", "up0_adj0"),
    ("dlib_faces/bald_guys.jpg", "up0_adj-0.5"),  # 25 faces, 3 MP: NMS across many boxes and filters
    ("dlib_faces/2007_007763.jpg", "up1_adj-0.5"),
    ("dlib_faces/2008_002470.jpg", "up1_adj-0.5"),
    ("dlib_faces/2008_004176.jpg", "up1_adj-0.5"),
    ("dlib_faces/2008_007676.jpg", "up1_adj0"),
    ("fr_examples/obama-240p.jpg", "up1_adj0"),
]
QUICK_FRAMES = [("100", "up1_adj-0.5"), ("250", "up1_adj-0.5"), ("0", "up0_adj0")]
FULL = os.environ.get("FACESTREAM_HOG_FULL") == "1"
ALL = [(rel, run) for rel in sorted(golden()["images"]) for run in golden()["runs"]]
ALL_FRAMES = [(key, run) for key in sorted(golden()["video_frames"], key=int) for run in golden()["runs"]]


@pytest.mark.parametrize(("rel", "run"), ALL if FULL else QUICK)
def test_same_as_dlib_on_golden_photos(det: HogFaceDetector, rel: str, run: str) -> None:
    upsample, adjust = parse_run(run)
    result = det.detect(golden_image(rel), upsample, adjust)
    assert_same_as_dlib(result, golden()["images"][rel]["runs"][run], f"{rel} {run}")


@pytest.mark.parametrize(("key", "run"), ALL_FRAMES if FULL else QUICK_FRAMES)
def test_same_as_dlib_on_video_frames(det: HogFaceDetector, key: str, run: str) -> None:
    upsample, adjust = parse_run(run)
    result = det.detect(video_frames()[key], upsample, adjust)
    assert_same_as_dlib(result, golden()["video_frames"][key]["runs"][run], f"frame {key} {run}")


def test_detect_batch_is_detect_per_image(det: HogFaceDetector) -> None:
    rels = ["fr_examples/obama-240p.jpg", "dlib_faces/2008_001322.jpg"]  # different sizes
    results = det.detect_batch([golden_image(rel) for rel in rels], upsample=0, adjust_threshold=-0.5)
    assert len(results) == 2
    for rel, result in zip(rels, results):
        assert_same_as_dlib(result, golden()["images"][rel]["runs"]["up0_adj-0.5"], rel)


# -- dlib-bin as the oracle on variants the golden file does not hold ----------------------------


def variants() -> list[tuple[str, np.ndarray, int, float]]:
    a = golden_image("dlib_faces/2008_002470.jpg")
    b = golden_image("dlib_faces/2007_007763.jpg")
    c = golden_image("fr_examples/obama-240p.jpg")
    return [
        ("2008_002470 flipped", np.ascontiguousarray(a[:, ::-1]), 1, -0.5),
        ("2007_007763 crop at odd offsets", np.ascontiguousarray(b[13:340, 7:451]), 1, -1.0),
        ("obama-240p rescaled 0.83", cv2.resize(c, (355, 199), interpolation=cv2.INTER_AREA), 1, 0.0),
        ("2008_002470 grey", np.ascontiguousarray(a.mean(axis=2).astype(np.uint8)), 1, -0.5),
        ("2007_007763 grey, transposed", np.ascontiguousarray(b.mean(axis=2).astype(np.uint8).T), 0, -1.0),
    ]


@pytest.mark.oracle
def test_same_as_dlib_bin_on_unseen_variants(det: HogFaceDetector) -> None:
    dlib = pytest.importorskip("dlib")
    theirs = dlib.get_frontal_face_detector()
    found = 0
    for name, image, upsample, adjust in variants():
        rects, scores, index = theirs.run(image, upsample, adjust)
        expected = {
            "rects": [[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
            "scores": list(scores),
            "weight_index": list(index),
        }
        assert_same_as_dlib(det.detect(image, upsample, adjust), expected, name)
        found += len(rects)
    assert found >= 10  # the variants do contain faces, so boxes and scores were really compared


def test_the_parsed_record_is_cached_and_a_bad_cache_entry_is_parsed_again(tmp_path: Path) -> None:
    """The record's floats need dlib's decoding (slow in Python): the parsed arrays are kept as .npz keyed by
    the file's sha256 and read back; an entry that is not what it should be is ignored and rewritten."""
    photo = load_rgb_as_dlib(DATA / "fr_examples" / "two_people.jpg")
    fresh = hog.load_hog_detector()
    first = hog.load_hog_detector(cache_dir=tmp_path)
    (entry,) = tmp_path.glob("hog_detector-*.npz")
    written = entry.stat().st_mtime_ns
    again = hog.load_hog_detector(cache_dir=tmp_path)
    assert entry.stat().st_mtime_ns == written  # read back, not parsed and written again
    for detector in (first, again):
        for field in ("filters", "thresholds"):
            np.testing.assert_array_equal(getattr(detector.model, field), getattr(fresh.model, field))
        for field in ("iou_thresh", "percent_covered_thresh", "min_pyramid_layer", "max_pyramid_levels"):
            assert getattr(detector.model, field) == getattr(fresh.model, field), field
    assert repr(again.detect(photo, upsample=0)) == repr(fresh.detect(photo, upsample=0))

    entry.write_bytes(b"not a zip file")
    assert hog.load_hog_detector(cache_dir=tmp_path).model.max_pyramid_levels == fresh.model.max_pyramid_levels
    np.savez(entry, sha256=np.array(hog.DETECTOR_SHA256), format=np.array(hog.MODEL_CACHE_FORMAT),
             filters=np.zeros((5, 31, 10, 10)), thresholds=np.zeros(5), overlap=np.zeros(2),
             min_pyramid_layer=np.zeros(1), max_pyramid_levels=np.array(1000))  # fmt: skip
    reparsed = hog.load_hog_detector(cache_dir=tmp_path)  # wrong shape: parsed again, not trusted
    np.testing.assert_array_equal(reparsed.model.filters, fresh.model.filters)
    assert reparsed.model.max_pyramid_levels == fresh.model.max_pyramid_levels

