"""The MMOD detector and the full chain (detect -> landmarks -> chip -> descriptor) against dlib."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from facestream.engines.detector import FaceDetector
from facestream.engines.faces import FaceAnalyzer
from facestream.engines.models import model_path
from facestream.pipeline.config import Config

from conftest import (
    DATA,
    FULL_SWEEP,
    distinct_golden_images,
    golden_images,
    golden_video,
    load_rgb_as_dlib,
    require_dlib,
    sweep,
)


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory) -> FaceAnalyzer:
    config = Config(cache_dir=str(tmp_path_factory.mktemp("cache")))
    return FaceAnalyzer.from_config(config)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.maximum(0, np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]) + 1).prod()
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def assert_chain_matches(analyzer: FaceAnalyzer, image: np.ndarray, golden_faces: list[dict], name: str) -> None:
    faces = analyzer.analyze(image, upsample=1)
    expected = np.array([face["rect"] for face in golden_faces]).reshape(-1, 5)
    assert len(faces) == len(expected), f"{name}: {len(faces)} faces, dlib found {len(expected)}"
    for i, face in enumerate(golden_faces):
        # Same order as dlib (score descending); identical rectangles.
        assert iou(faces.boxes[i], expected[i, :4]) >= 0.999, f"{name} face {i}: {faces.boxes[i]} vs {expected[i]}"
        np.testing.assert_array_equal(faces.boxes[i], expected[i, :4].astype(np.int64))
        assert abs(faces.scores[i] - expected[i, 4]) < 1e-3, name
        np.testing.assert_allclose(faces.landmarks[i], face["landmarks_5"], atol=0.01, err_msg=name)
        assert hashlib.sha256(faces.chips[i].tobytes()).hexdigest() == face["chip_sha256"], f"{name} chip {i}"
        distance = float(np.linalg.norm(faces.descriptors[i] - np.array(face["descriptor"])))
        assert distance < 1e-4, f"{name} face {i}: descriptor {distance:.2e} from dlib's"


# Every distinct golden image under FACESTREAM_FULL_SWEEP=1; by default a representative part that keeps each
# kind: several faces (7, 25), none (dogs), a partial face, grey-ish 32-bit PNG, small and large single faces
# up to 2 MP (bald_guys: 3 MP, 25 faces). The API, compat, CLI and region tests run other golden images too.
QUICK_CHAIN = [
    "dlib_faces/2007_007763.jpg", "dlib_faces/2008_001009.jpg", "dlib_faces/2008_004176.jpg",
    "dlib_faces/bald_guys.jpg", "dlib_faces/dogs.jpg", "fr_examples/obama-240p.jpg", "fr_examples/obama-720p.jpg",
    "fr_examples/two_people.jpg", "fr_test_images/32bit.png", "fr_examples/biden.jpg",
    "fr_test_images/obama_partial_face.jpg", "video/gallery/Alex_Lacamoire/alex-lacamoire.png",
]  # fmt: skip
FULL_CHAIN = sweep(distinct_golden_images(), [p for p in distinct_golden_images() if p in QUICK_CHAIN])


@pytest.mark.parametrize("relpath", FULL_CHAIN)
def test_full_chain_matches_dlib_on_golden_images(analyzer: FaceAnalyzer, relpath: str) -> None:
    image = load_rgb_as_dlib(DATA / relpath)
    assert_chain_matches(analyzer, image, golden_images()[relpath]["cnn_faces"], relpath)


def _video_frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
    frames = []
    for _ in range(count):
        ok, bgr = capture.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def test_first_30_video_frames_match_dlib(analyzer: FaceAnalyzer) -> None:
    """The clip's first 30 frames under the full sweep, every third one by default."""
    golden = golden_video()["frames"]
    for index, frame in enumerate(_video_frames(30)):
        if not FULL_SWEEP and index % 3:
            continue
        record = golden[str(index)]
        assert hashlib.sha256(frame.tobytes()).hexdigest() == record["frame_rgb_sha256"], "decoder differs"
        assert_chain_matches(analyzer, frame, record["cnn_faces"], f"frame {index}")


def test_batched_frames_give_the_same_detections(analyzer: FaceAnalyzer) -> None:
    frames = _video_frames(3)
    together = analyzer.detector.detect_batch(frames, upsample=1)
    for frame, (boxes, scores) in zip(frames, together):
        alone_boxes, alone_scores = analyzer.detector.detect(frame, upsample=1)
        np.testing.assert_array_equal(boxes, alone_boxes)
        np.testing.assert_allclose(scores, alone_scores, atol=1e-5)


def test_no_face_and_tiny_images(analyzer: FaceAnalyzer) -> None:
    for shape in [(1, 1, 3), (4, 7, 3), (30, 30), (60, 90, 3)]:
        boxes, scores = analyzer.detector.detect(np.zeros(shape, np.uint8), upsample=0)
        assert boxes.shape == (0, 4) and scores.shape == (0,)
    faces = analyzer.analyze(load_rgb_as_dlib(DATA / "dlib_faces/dogs.jpg"))
    assert len(faces) == 0 and faces.descriptors.shape == (0, 128)


def test_grey_image_is_read_as_rgb(analyzer: FaceAnalyzer) -> None:
    image = load_rgb_as_dlib(DATA / "fr_examples/obama-240p.jpg")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    from_grey = analyzer.detector.detect(grey, upsample=1)
    from_rgb = analyzer.detector.detect(np.repeat(grey[:, :, None], 3, axis=2), upsample=1)
    np.testing.assert_array_equal(from_grey[0], from_rgb[0])
    assert len(from_grey[0]) == 1


def test_threshold_is_configurable(analyzer: FaceAnalyzer) -> None:
    image = load_rgb_as_dlib(DATA / "dlib_faces/2007_007763.jpg")
    strict = FaceDetector(analyzer.detector.session, analyzer.detector.params, upsample=1, threshold=0.5)
    boxes, scores = strict.detect(image)
    golden_scores = [face["rect"][4] for face in golden_images()["dlib_faces/2007_007763.jpg"]["cnn_faces"]]
    assert len(boxes) == sum(s > 0.5 for s in golden_scores) and scores.min() > 0.5


@pytest.mark.oracle
@pytest.mark.parametrize("variant", ["flipped", "scaled", "cropped-up0"])
def test_dlib_oracle_on_unseen_images(analyzer: FaceAnalyzer, variant: str) -> None:
    """dlib-bin's own CNN detector on images it has not seen (small, to keep its seconds down)."""
    dlib = require_dlib()
    cnn = dlib.cnn_face_detection_model_v1(str(model_path("detector")))
    predictor = dlib.shape_predictor(str(model_path("landmarks")))
    recogniser = dlib.face_recognition_model_v1(str(model_path("embedder")))
    base = load_rgb_as_dlib(DATA / "dlib_faces/2008_002470.jpg")
    upsample = 1
    if variant == "flipped":
        image = np.ascontiguousarray(base[40:300, ::-1][:, 60:380])
    elif variant == "scaled":
        image = cv2.resize(load_rgb_as_dlib(DATA / "dlib_faces/2008_001009.jpg"), None, fx=0.7, fy=0.7)
    else:
        image = np.ascontiguousarray(cv2.resize(load_rgb_as_dlib(DATA / "fr_examples/two_people.jpg"), None,
                                                fx=0.6, fy=0.6)[20:170, 100:640])  # fmt: skip
        upsample = 0
    theirs = cnn(image, upsample)
    ours = analyzer.analyze(image, upsample=upsample)
    assert len(theirs) >= 1, "the variant should contain a face dlib finds"
    assert len(ours) == len(theirs)
    for i, detection in enumerate(theirs):
        r = detection.rect
        assert ours.boxes[i].tolist() == [r.left(), r.top(), r.right(), r.bottom()]
        assert abs(ours.scores[i] - detection.confidence) < 1e-3
        shape = predictor(image, r)
        assert ours.landmarks[i].tolist() == [[shape.part(k).x, shape.part(k).y] for k in range(5)]
        descriptor = np.array(recogniser.compute_face_descriptor(image, shape))
        assert np.linalg.norm(ours.descriptors[i] - descriptor) < 1e-4
