"""dlib's 68-point shape predictor, its face chips and descriptors, checked against dlib.

* golden (golden/dlib-20.0.1-68.json, made by golden/make_golden_68.py with dlib-bin): on every CNN
  box and every HOG box (upsample 0 and 1) of the data pack, the 68 landmarks are identical, the
  chip `get_face_chip(img, shape68, 150, 0.25)` has the same sha256 and the chip rectangle/angle of
  `get_face_chip_details` agree, and `compute_face_descriptor(img, shape68)` is within 1e-4;
* oracle: dlib-bin itself on unseen variants (mirrored, grey, rescaled, boxes partly outside).

The model is trained on iBUG 300-W (non-commercial licence); the tests only compare outputs.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

import numpy as np
import pytest

from facestream import api
from facestream.engines.chips import extract_face_chips, face_chip_details
from facestream.engines.landmarks import MODEL_FILE_68, default_model_path
from facestream.engines.models import model_path

from conftest import DATA, GOLDEN, load_rgb_as_dlib


@cache
def golden68() -> dict:
    return json.loads((GOLDEN / "dlib-20.0.1-68.json").read_text())


def all_faces(record: dict) -> list[dict]:
    return record["cnn_faces"] + record["hog_faces"]["0"] + record["hog_faces"]["1"]


def golden_cases() -> list[str]:
    return [name for name, record in golden68()["images"].items() if all_faces(record)]


@pytest.fixture(scope="module")
def predictor():
    return api._predictor(68)


def test_golden_file_is_for_the_packaged_model():
    path = default_model_path(68)
    assert path.name == MODEL_FILE_68
    assert hashlib.sha256(path.read_bytes()).hexdigest() == golden68()["model"]["sha256"]
    counts = [len(all_faces(r)) for r in golden68()["images"].values()]
    assert sum(counts) >= 100  # CNN and HOG boxes over the data pack


@pytest.mark.parametrize("name", golden_cases())
def test_landmarks_chips_descriptors_match_dlib(name, predictor):
    faces = all_faces(golden68()["images"][name])
    image = load_rgb_as_dlib(DATA / name)
    boxes = np.array([face["box"] for face in faces], np.int64)
    points = predictor.predict(image, boxes)
    want = np.array([face["landmarks_68"] for face in faces], np.int64)
    bad = [f"box {b.tolist()}" for b, g, w in zip(boxes, points, want) if not np.array_equal(g, w)]
    assert not bad, f"{name}: landmarks differ from dlib for {bad}"

    rects, angles = face_chip_details(points)
    np.testing.assert_allclose(rects, [f["chip_details"]["rect"] for f in faces], rtol=0, atol=1e-9)
    np.testing.assert_allclose(angles, [f["chip_details"]["angle"] for f in faces], rtol=0, atol=1e-12)
    chips = extract_face_chips(image, points)
    digests = [hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest() for chip in chips]
    assert digests == [f["chip_sha256"] for f in faces], f"{name}: a chip differs from dlib's get_face_chip"

    descriptors = api._embedder().embed_chips(chips)
    want_descriptors = np.array([f["descriptor"] for f in faces])
    assert np.abs(descriptors - want_descriptors).max() < 1e-4


def test_descriptors_api_with_68_points_equals_dlib():
    name = "fr_examples/two_people.jpg"
    faces = golden68()["images"][name]["cnn_faces"]
    image = load_rgb_as_dlib(DATA / name)
    got = api.descriptors(image, boxes=[f["box"] for f in faces], landmark_model=68)
    assert np.abs(got - np.array([f["descriptor"] for f in faces])).max() < 1e-4


ORACLE_VARIANTS = {
    "mirrored": lambda img: np.ascontiguousarray(img[:, ::-1]),
    "grey": lambda img: np.ascontiguousarray(img.mean(axis=2).astype(np.uint8)),
    "half": lambda img: np.ascontiguousarray(img[::2, ::2]),
    "cropped": lambda img: np.ascontiguousarray(img[40:-30, 25:-60]),
}


@pytest.fixture(scope="module")
def dlib_models():
    dlib = pytest.importorskip("dlib")

    sp68 = dlib.shape_predictor(str(model_path("landmarks68")))
    rec = dlib.face_recognition_model_v1(str(model_path("embedder")))
    return dlib, sp68, rec


@pytest.mark.oracle
@pytest.mark.parametrize("variant", sorted(ORACLE_VARIANTS))
def test_unseen_variants_match_dlib(variant, predictor, dlib_models):
    dlib, sp68, rec = dlib_models
    image = ORACLE_VARIANTS[variant](load_rgb_as_dlib(DATA / "fr_examples/two_people.jpg"))
    height, width = image.shape[:2]
    rng = np.random.default_rng(68)
    # boxes of face-like sizes anywhere, some reaching outside the image
    left = rng.integers(-60, width - 40, 12)
    top = rng.integers(-60, height - 40, 12)
    size = rng.integers(40, 260, 12)
    boxes = np.stack([left, top, left + size, top + size], axis=1)
    points = predictor.predict(image, boxes)
    rgb = image if image.ndim == 3 else np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    chips = extract_face_chips(image, points)
    ours = api._embedder().embed_chips(chips)
    for i, box in enumerate(boxes.tolist()):
        shape = sp68(image, dlib.rectangle(*box))
        want = np.array([[p.x, p.y] for p in shape.parts()])
        assert np.array_equal(points[i], want), f"{variant} box {box}"
        chip = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
        assert np.array_equal(chips[i], chip), f"{variant} box {box}: chip differs"
        descriptor = np.array(rec.compute_face_descriptor(rgb, shape))
        assert np.abs(ours[i] - descriptor).max() < 1e-4


def test_chip_details_reject_other_point_counts():
    with pytest.raises(ValueError, match=r"\(N, 5, 2\) or \(N, 68, 2\)"):
        face_chip_details(np.zeros((1, 7, 2)))
    with pytest.raises(ValueError, match="68"):
        extract_face_chips(np.zeros((20, 20, 3), np.uint8), np.zeros((1, 6, 2)))
