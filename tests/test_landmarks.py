"""engines/landmarks.py: dlib's 5-point shape predictor, checked for exact (integer) parity.

* golden: every face of golden/dlib-20.0.1.json and of the 30 golden video frames;
* oracle: dlib itself on unseen images (flipped, rescaled, cropped, grey) and awkward boxes;
* the two details exactness hangs on (dlib's pinv rounding, sequential float32 leaf sums);
* loading: wrong model files, and the .npz cache (corrupt or stale entries are rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from facestream.engines import landmarks
from facestream.engines.dlib_format import DlibFormatError, ShapePredictorModel
from facestream.engines.landmarks import ShapePredictor, default_model_path, load_model

from conftest import DATA, GOLDEN, golden_images, golden_video, load_rgb_as_dlib, require_dlib

MODEL = default_model_path()
DETECTOR = MODEL.parent / "mmod_human_face_detector.dat"
ORACLE_IMAGES = ["dlib_faces/bald_guys.jpg", "fr_examples/two_people.jpg", "fr_test_images/obama.jpg"]

# A box where a feature pixel lands exactly on x = -0.5 (u = 0.75 in the unit box, l = -128,
# r - l = 170): dlib's pseudo-inverse rounding puts it just outside the image, the exact closed
# form l + u (r - l) just inside, and the first landmark moves. dlib 20.0.1's answer, on obama.jpg
# cropped to [10:-7, 5:-20]:
TIE_IMAGE, TIE_BOX = "fr_test_images/obama.jpg", (-128, -28, 42, 126)
TIE_CROP = (slice(10, -7), slice(5, -20))
TIE_DLIB = [[4, 33], [-15, 30], [-69, 23], [-44, 26], [-25, 73]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("landmark-cache")


@pytest.fixture(scope="module")
def predictor(cache_dir) -> ShapePredictor:
    return ShapePredictor.from_file(MODEL, cache_dir)


def golden_faces(record: dict) -> tuple[np.ndarray, np.ndarray]:
    faces = record["cnn_faces"]
    boxes = np.array([face["rect"][:4] for face in faces], np.int64).reshape(-1, 4)
    points = np.array([face["landmarks_5"] for face in faces], np.int64).reshape(-1, 5, 2)
    return boxes, points


def mismatches(name: str, boxes: np.ndarray, got: np.ndarray, want: np.ndarray) -> list[str]:
    return [
        f"{name} box {box.tolist()}: got {g.tolist()}, dlib {w.tolist()}"
        for box, g, w in zip(boxes, got, want)
        if not np.array_equal(g, w)
    ]


# ---------------------------------------------------------------------------------------------
# Golden parity
# ---------------------------------------------------------------------------------------------


def test_model_is_the_golden_one():
    expected = json.loads((GOLDEN / "dlib-20.0.1.json").read_text())["models"]["shape_predictor_5"]["sha256"]
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == expected


def test_golden_images_exact(predictor):
    failures, count = [], 0
    for relpath, record in golden_images().items():
        boxes, want = golden_faces(record)
        got = predictor.predict(load_rgb_as_dlib(DATA / relpath), boxes)
        assert got.shape == want.shape and got.dtype == np.int64
        failures += mismatches(relpath, boxes, got, want)
        count += len(boxes)
    assert count == 84, "the golden file should hold 84 faces"
    assert not failures, "\n".join(failures)


def test_golden_video_exact(predictor):
    cv2 = pytest.importorskip("cv2")
    frames = golden_video()["frames"]
    capture = cv2.VideoCapture(str(DATA / "video/short_hamilton_clip.mp4"))
    failures, count = [], 0
    try:
        for index in range(30):
            ok, bgr = capture.read()
            assert ok, f"could not decode frame {index}"
            record = frames[str(index)]
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            assert hashlib.sha256(rgb.tobytes()).hexdigest() == record["frame_rgb_sha256"], (
                f"frame {index}: OpenCV decodes other pixels than when the golden file was made"
            )
            boxes, want = golden_faces(record)
            failures += mismatches(f"frame {index}", boxes, predictor.predict(rgb, boxes), want)
            count += len(boxes)
    finally:
        capture.release()
    assert count == 30
    assert not failures, "\n".join(failures)


def test_faces_are_independent(predictor):
    """All faces at once (one vectorised pass) equals one face at a time, and box order is kept."""
    image = load_rgb_as_dlib(DATA / "dlib_faces/bald_guys.jpg")
    boxes, want = golden_faces(golden_images()["dlib_faces/bald_guys.jpg"])
    together = predictor.predict(image, boxes)
    alone = np.concatenate([predictor.predict(image, box[None]) for box in boxes])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(predictor.predict(image, boxes[::-1]), want[::-1])


def test_no_boxes_and_input_checks(predictor):
    image = np.zeros((20, 30, 3), np.uint8)
    for empty in (np.zeros((0, 4), np.int64), [], np.zeros((0,))):
        out = predictor.predict(image, empty)
        assert out.shape == (0, 5, 2) and out.dtype == np.int64
    np.testing.assert_array_equal(
        predictor.predict(image, [[1, 2, 11, 12]]), predictor.predict(image, np.array([[1.0, 2.0, 11.0, 12.0]]))
    )
    with pytest.raises(TypeError):
        predictor.predict(image, [[1.5, 2, 11, 12]])
    with pytest.raises(ValueError):
        predictor.predict(image, [[1, 2, 11]])
    with pytest.raises(TypeError):
        predictor.predict(image.astype(np.float32), [[1, 2, 11, 12]])
    with pytest.raises(ValueError):
        predictor.predict(np.zeros((20, 30, 4), np.uint8), [[1, 2, 11, 12]])


# ---------------------------------------------------------------------------------------------
# The two details exactness depends on
# ---------------------------------------------------------------------------------------------


def test_rounding_tie_follows_dlibs_pinv(predictor, monkeypatch):
    image = load_rgb_as_dlib(DATA / TIE_IMAGE)[TIE_CROP]
    assert predictor.predict(image, [TIE_BOX]).tolist() == [TIE_DLIB]
    # The exact inverse (the textbook closed form x = l + u (r - l)) gets this box wrong.
    exact = np.array([[-1.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
    monkeypatch.setattr(landmarks, "_PINV_UNIT_CORNERS", exact)
    assert predictor.predict(image, [TIE_BOX]).tolist() != [TIE_DLIB]


@pytest.mark.parametrize("shape", [(501, 2), (501, 10), (501, 250), (17, 3), (3, 7)])
def test_sequential_sum_is_left_to_right(shape):
    rng = np.random.default_rng(sum(shape))
    terms = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 3, (shape[0], 1))).astype(np.float32)
    terms[0] = 1.0
    terms[1::2, 0] = 2.0**-24  # half-ulp terms: any regrouping changes column 0
    want = terms[0].copy()
    for row in terms[1:]:
        want += row
    np.testing.assert_array_equal(landmarks._sequential_sum(terms), want)
    pairwise = np.ascontiguousarray(terms.T).sum(axis=1)  # numpy's pairwise sum, for contrast
    assert shape[0] < 9 or not np.array_equal(pairwise, want)


def test_fallback_paths_agree(predictor, monkeypatch):
    """The loop used when numpy's reduce is not sequential, and the level-by-level tree walk used
    for trees too deep for the leaf table, give the same landmarks."""
    image = load_rgb_as_dlib(DATA / "dlib_faces/bald_guys.jpg")
    boxes, want = golden_faces(golden_images()["dlib_faces/bald_guys.jpg"])
    walker = ShapePredictor(predictor.model)
    walker._leaf_of_code = None
    np.testing.assert_array_equal(walker.predict(image, boxes), want)
    monkeypatch.setattr(landmarks, "_reduce_is_sequential", lambda rows, cols: False)
    np.testing.assert_array_equal(predictor.predict(image, boxes), want)


# ---------------------------------------------------------------------------------------------
# Oracle: dlib itself on inputs the golden files do not cover
# ---------------------------------------------------------------------------------------------


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    cv2 = pytest.importorskip("cv2")
    height, width = image.shape[:2]
    return {
        "as is": image,
        "mirrored (view)": image[:, ::-1],
        "upside down (view)": image[::-1],
        "every 2nd pixel (view)": image[::2, ::2],
        "shrunk 0.6": cv2.resize(image, (int(width * 0.6), int(height * 0.6)), interpolation=cv2.INTER_AREA),
        "enlarged 1.7": cv2.resize(image, (int(width * 1.7), int(height * 1.7)), interpolation=cv2.INTER_LINEAR),
        "cropped (view)": image[height // 5 : height - 13, width // 7 : width - 29],
        "cropped a little (view)": image[TIE_CROP],
        "grey (R+G+B)/3": (image.sum(axis=2, dtype=np.uint16) // 3).astype(np.uint8),
        "green channel (view)": image[..., 1],
    }


def random_boxes(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """Face-sized, tiny (down to one pixel), huge, partly and wholly outside, flat and inverted boxes."""
    side = np.concatenate(
        [
            rng.integers(20, max(21, min(height, width) // 2), count // 2),
            rng.integers(0, 6, count // 8),
            rng.integers(max(height, width), 3 * max(height, width), count // 8),
            rng.integers(1, 600, count - count // 2 - 2 * (count // 8)),
        ]
    )
    aspect = rng.integers(-side // 4 - 1, side // 4 + 2)
    left = rng.integers(-side, width + 1)
    top = rng.integers(-side, height + 1)
    boxes = np.stack([left, top, left + side, top + side + aspect], axis=1)
    flipped = rng.random(count) < 0.03  # right < left: dlib still predicts (mirrored unit box)
    boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    return boxes


@pytest.mark.oracle
def test_oracle_unseen_images_and_boxes(predictor):
    dlib = require_dlib()
    reference = dlib.shape_predictor(str(MODEL))
    rng = np.random.default_rng(20)
    failures, count = [], 0
    for relpath in ORACLE_IMAGES:
        for name, image in variants(load_rgb_as_dlib(DATA / relpath)).items():
            boxes = random_boxes(rng, *image.shape[:2], 40)
            if relpath == TIE_IMAGE and name == "cropped a little (view)":
                boxes = np.vstack([boxes, TIE_BOX])
            got = predictor.predict(image, boxes)  # views go in as they are
            contiguous = np.ascontiguousarray(image)
            want = np.array(
                [[(p.x, p.y) for p in reference(contiguous, dlib.rectangle(*map(int, box))).parts()] for box in boxes]
            )
            failures += mismatches(f"{relpath} {name}", boxes, got, want)
            count += len(boxes)
    assert count > 1000
    assert not failures, f"{len(failures)} of {count} boxes differ:\n" + "\n".join(failures[:20])


# ---------------------------------------------------------------------------------------------
# Loading and the cache
# ---------------------------------------------------------------------------------------------


def test_wrong_model_file_names_it(tmp_path):
    with pytest.raises(DlibFormatError) as error:
        ShapePredictor.from_file(DETECTOR, tmp_path)
    assert str(DETECTOR) in str(error.value)
    # (its digest may be remembered, tests/test_digests.py; a parsed model may not)
    assert list(tmp_path.glob("*.npz")) == [], "no model may be cached for a file that is not a shape predictor"
    missing = tmp_path / "missing.dat"
    with pytest.raises(DlibFormatError) as error:
        ShapePredictor.from_file(missing)
    assert str(missing) in str(error.value)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(MODEL.read_bytes()[:5000])
    with pytest.raises(DlibFormatError) as error:
        ShapePredictor.from_file(truncated)
    assert str(truncated) in str(error.value)


def assert_same_model(a: ShapePredictorModel, b: ShapePredictorModel) -> None:
    for name in landmarks._FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True), name


def test_cache_round_trip(predictor, cache_dir):
    (entry,) = cache_dir.glob("*.npz")
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() in entry.name
    # The fixture parsed the file into a fresh directory; loading again reads the entry.
    assert_same_model(load_model(MODEL, cache_dir), predictor.model)


def test_bad_cache_entries_are_ignored_and_rebuilt(predictor, tmp_path, monkeypatch):
    calls = []

    def parse(data: bytes, path: str) -> ShapePredictorModel:  # stands in for the 2 s parse
        calls.append(path)
        return predictor.model

    monkeypatch.setattr(landmarks, "parse_shape_predictor", parse)
    load_model(MODEL, tmp_path)
    (entry,) = tmp_path.glob("*.npz")
    assert len(calls) == 1
    load_model(MODEL, tmp_path)
    assert len(calls) == 1, "a valid entry must be used"
    good = entry.read_bytes()

    def inconsistent() -> bytes:
        path = tmp_path / "edit.npz"
        with np.load(entry) as archive:
            arrays = dict(archive)
        arrays["anchor_index"] = arrays["anchor_index"] + 5  # anchors past the last part
        np.savez(path, **arrays)
        return path.read_bytes()

    def other_digest() -> bytes:
        path = tmp_path / "edit.npz"
        with np.load(entry) as archive:
            arrays = dict(archive)
        arrays["sha256"] = np.array("0" * 64)
        np.savez(path, **arrays)
        return path.read_bytes()

    for label, content in [
        ("garbage", b"not a zip file at all"),
        ("truncated", good[: len(good) // 2]),
        ("empty", b""),
        ("inconsistent arrays", inconsistent()),
        ("another file's digest", other_digest()),
    ]:
        entry.write_bytes(content)
        model = load_model(MODEL, tmp_path)
        assert len(calls) == 2, f"{label}: the cache entry should have been ignored"
        assert_same_model(model, predictor.model)
        with np.load(entry) as archive:  # rebuilt: a valid entry again
            assert str(archive["sha256"]) == hashlib.sha256(MODEL.read_bytes()).hexdigest(), label
        load_model(MODEL, tmp_path)
        assert len(calls) == 2, f"{label}: the rebuilt entry should be used"
        calls.pop()
    assert not list(tmp_path.glob("*.tmp")), "no temporary files left behind"
    assert zipfile.is_zipfile(entry)
