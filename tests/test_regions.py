"""Region detection and scale limits: the faces of full-frame detection, found with less of the frame.

Expected values are full-frame detection (itself equal to dlib's golden outputs, test_detector.py)
and, for the video frames, dlib's golden boxes directly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facestream.engines.detector import FaceDetector, region_levels, upsample_for_min_face
from facestream.engines.models import model_path

from conftest import DATA, QUICK_GOLDEN, golden_images, golden_video, load_rgb_as_dlib, sweep


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FaceDetector:
    return FaceDetector.from_file(model_path("detector"), tmp_path_factory.mktemp("cache"), upsample=1)


def assert_regions_match_full_frame(detector: FaceDetector, image: np.ndarray, seed: int, name: str,
                                    full: tuple[np.ndarray, np.ndarray] | None = None) -> int:  # fmt: skip
    """Regions = full-frame boxes jittered by up to 4 px: all together give exactly the full-frame
    detections; each alone (the first three faces, to bound the time) gives its own face with the
    same rectangle and score."""
    boxes, scores = detector.detect(image) if full is None else full
    jitter = np.random.default_rng(seed).integers(-4, 5, boxes.shape)
    regions = (boxes + jitter).astype(np.float64)
    together = detector.detect_regions(image, regions)
    np.testing.assert_array_equal(together[0], boxes, err_msg=name)
    np.testing.assert_array_equal(together[1], scores, err_msg=name)
    for i in range(min(3, len(boxes))):
        alone_boxes, alone_scores = detector.detect_regions(image, regions[i : i + 1])
        hit = np.flatnonzero((alone_boxes == boxes[i]).all(axis=1))
        assert len(hit) == 1, f"{name} face {i}: {boxes[i]} not in {alone_boxes}"
        assert alone_scores[hit[0]] == scores[i], f"{name} face {i}"
    return len(boxes)


@pytest.mark.parametrize("relpath", sweep(sorted(golden_images()), QUICK_GOLDEN))
def test_regions_give_the_full_frame_faces_on_golden_images(detector: FaceDetector, relpath: str) -> None:
    image = load_rgb_as_dlib(DATA / relpath)
    golden = np.array([face["rect"] for face in golden_images()[relpath]["cnn_faces"]]).reshape(-1, 5)
    full = detector.detect(image)
    np.testing.assert_array_equal(full[0], golden[:, :4].astype(np.int64))
    assert_regions_match_full_frame(detector, image, len(relpath), relpath, full)


def test_regions_give_dlibs_boxes_on_the_golden_video_frames(detector: FaceDetector) -> None:
    capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
    frames = golden_video()["frames"]
    faces, checked = 0, set(sweep(range(len(frames)), range(0, len(frames), 3)))  # every third by default
    for index in range(len(frames)):
        ok, bgr = capture.read()
        assert ok
        if index not in checked:
            continue
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        golden = np.array([face["rect"] for face in frames[str(index)]["cnn_faces"]]).reshape(-1, 5)
        boxes, scores = detector.detect_regions(frame, golden[:, :4].astype(np.float64))
        np.testing.assert_array_equal(boxes, golden[:, :4].astype(np.int64), err_msg=f"frame {index}")
        np.testing.assert_allclose(scores, golden[:, 4], atol=1e-3, err_msg=f"frame {index}")
        faces += assert_regions_match_full_frame(detector, frame, index, f"frame {index}")
    capture.release()
    assert faces >= len(checked)


def _variants(image: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "shifted": np.pad(image, ((21, 0), (37, 0), (0, 0)), mode="edge"),
        "cropped": np.ascontiguousarray(image[13:, 29:]),
        "scaled": cv2.resize(image, None, fx=0.83, fy=0.83, interpolation=cv2.INTER_AREA),
        "enlarged": cv2.resize(image, None, fx=1.37, fy=1.37, interpolation=cv2.INTER_LINEAR),
        "grey": cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
    }


@pytest.mark.parametrize(
    "relpath",
    sweep(["dlib_faces/2008_002470.jpg", "fr_examples/two_people.jpg", "dlib_faces/2008_004176.jpg"],
          ["dlib_faces/2008_002470.jpg"]),
)  # fmt: skip
def test_regions_give_the_full_frame_faces_on_generated_frames(detector: FaceDetector, relpath: str) -> None:
    faces = 0
    for name, image in _variants(load_rgb_as_dlib(DATA / relpath)).items():
        for upsample in (0, 1):
            full = detector.detect(image, upsample)
            boxes, scores = detector.detect_regions(image, full[0].astype(np.float64), upsample)
            np.testing.assert_array_equal(boxes, full[0], err_msg=f"{relpath} {name} up{upsample}")
            np.testing.assert_array_equal(scores, full[1], err_msg=f"{relpath} {name} up{upsample}")
            faces += len(boxes)
        faces += assert_regions_match_full_frame(detector, image, faces, f"{relpath} {name}")
    assert faces > 0


def test_regions_with_no_box_or_far_from_faces_find_nothing_there(detector: FaceDetector) -> None:
    image = load_rgb_as_dlib(DATA / "fr_examples/two_people.jpg")
    assert detector.detect_regions(image, np.zeros((0, 4)))[0].shape == (0, 4)
    boxes, _ = detector.detect(image)
    empty_corner = np.array([[0.0, 0.0, 30.0, 30.0]])
    assert not (boxes[:, :2] < 30).all(axis=1).any()
    found, _ = detector.detect_regions(image, empty_corner)
    assert len(found) == 0
    far_outside = np.array([[5000.0, 5000.0, 5100.0, 5100.0], [-900.0, -900.0, -800.0, -800.0]])
    assert len(detector.detect_regions(image, far_outside)[0]) == 0
    with pytest.raises(ValueError, match="finite"):
        detector.detect_regions(image, np.array([[0.0, np.nan, 10.0, 10.0]]))


def test_region_levels_follow_the_face_size() -> None:
    # A face ~80*1.2^k px wide after upsampling is found at level k.
    assert list(region_levels(np.array([0, 0, 79, 79]), 0, 30, margin=0)) == [0]
    assert list(region_levels(np.array([0, 0, 114, 114]), 0, 30, margin=1)) == [1, 2, 3]
    assert list(region_levels(np.array([10, 10, 109, 109]), 1, 30, margin=0)) == [5]  # 200 px: 80*1.2^5.03


# --------------------------------------------------------------------------------------------------
# scale limits


def test_minimum_face_size_chooses_the_upsampling() -> None:
    # dlib's 80x80 window: faces from ~80 px at upsample 0, ~40 px at 1, ~20 px at 2.
    assert [upsample_for_min_face(s) for s in (120, 80, 79.5, 40, 39, 20, 10, 1)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_kiosk_setting_does_not_upsample(detector: FaceDetector) -> None:
    kiosk = FaceDetector(detector.session, detector.params, upsample=1, min_face_size=120)
    assert kiosk.upsample == 0
    image = load_rgb_as_dlib(DATA / "fr_examples/obama-720p.jpg")
    boxes, scores = detector.detect(image, upsample=0)
    big = (boxes[:, 2] - boxes[:, 0] + 1) >= 120
    found = kiosk.detect(image)
    assert big.any()
    np.testing.assert_array_equal(found[0], boxes[big])
    np.testing.assert_array_equal(found[1], scores[big])


@pytest.mark.parametrize("relpath", sweep(["dlib_faces/bald_guys.jpg", "dlib_faces/2007_007763.jpg",
                                           "dlib_faces/2008_004176.jpg", "fr_examples/obama-1080p.jpg"],
                                          ["dlib_faces/2007_007763.jpg", "dlib_faces/2008_004176.jpg"]))  # fmt: skip
def test_scale_limits_keep_exactly_the_full_frame_faces_in_range(detector: FaceDetector, relpath: str) -> None:
    image = load_rgb_as_dlib(DATA / relpath)
    boxes, scores = detector.detect(image, upsample=1)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    lo, hi = np.percentile(widths, 30), np.percentile(widths, 80)
    for low, high in [(lo, hi), (lo, 0), (0, hi), (widths.max() + 1, 0)]:
        limited = FaceDetector(detector.session, detector.params, upsample=1, min_face_size=low, max_face_size=high)
        found = limited.detect(image, upsample=1)
        inside = (widths >= low) & ((widths <= high) if high > 0 else True)
        np.testing.assert_array_equal(found[0], boxes[inside], err_msg=f"{relpath} [{low}, {high}]")
        np.testing.assert_array_equal(found[1], scores[inside], err_msg=f"{relpath} [{low}, {high}]")
        skipped = set(range(40)) - set(limited.scale_levels(limited._geometry(image, 1)))  # type: ignore[arg-type]
        assert low <= 0 or skipped, "a lower limit skips the largest levels"


def test_overlapping_network_windows_are_merged_only_when_that_costs_no_more_pixels() -> None:
    """A face's windows at neighbouring levels overlap through their receptive-field margins: one bounding
    window computes no more pixels than the two; far-apart windows stay apart."""
    from facestream.engines.pyramid_windows import merge_windows

    a, b = (0, 300, 0, 300), (100, 400, 40, 320)  # union 400x320 = 128,000 <= 90,000 + 84,000
    far = (1000, 1300, 0, 300)
    assert merge_windows([a, b, far]) == [(0, 400, 0, 320), far]
    assert merge_windows([a, far]) == [a, far]
    assert merge_windows([(0, 0, 0, 10), a]) == [a]  # empty windows are dropped
