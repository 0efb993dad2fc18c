"""facestream.compat.face_recognition against dlib + face_recognition 1.4.0's semantics.

Expected values come from dlib (golden/dlib-20.0.1.json, dlib-20.0.1-68.json, or dlib-bin called
here) passed through face_recognition's rules, written out below from its api.py:
* css = (top, right, bottom, left); trimmed as max(top, 0), min(right, W), min(bottom, H), max(left, 0);
* face_locations: HOG at upsample 1 unless told otherwise; landmarks/encodings without locations use
  HOG at upsample 1; face_landmarks "large" = 68 points, "small" = 5; face_encodings "small" = 5;
* the landmark dict layout (chin 0-16, ..., top_lip 48-54 + 64..60, bottom_lip 54-59 + 48, 60, 67..64).
Never against facestream's own output.
"""

from __future__ import annotations

import io
import json
from functools import cache

import numpy as np
import pytest

import facestream.compat.face_recognition as fr
from facestream.engines.models import model_path

from conftest import DATA, GOLDEN, golden_images, load_rgb_as_dlib

NAMES = ["fr_examples/two_people.jpg", "fr_test_images/obama.jpg", "dlib_faces/2008_001322.jpg"]


@cache
def golden68() -> dict:
    return json.loads((GOLDEN / "dlib-20.0.1-68.json").read_text())["images"]


def trim(css, shape):
    top, right, bottom, left = css
    return max(top, 0), min(right, shape[1]), min(bottom, shape[0]), max(left, 0)


def css_of(box):
    left, top, right, bottom = box[:4]
    return top, right, bottom, left


def inside(box, shape):
    left, top, right, bottom = box[:4]
    return left >= 0 and top >= 0 and right < shape[1] and bottom < shape[0]


def landmark_dict_large(p):
    return {
        "chin": p[0:17], "left_eyebrow": p[17:22], "right_eyebrow": p[22:27], "nose_bridge": p[27:31],
        "nose_tip": p[31:36], "left_eye": p[36:42], "right_eye": p[42:48],
        "top_lip": [*p[48:55], p[64], p[63], p[62], p[61], p[60]],
        "bottom_lip": [*p[54:60], p[48], p[60], p[67], p[66], p[65], p[64]],
    }  # fmt: skip


def golden_inside(name: str) -> tuple[np.ndarray, list[dict], list[dict], list[tuple]]:
    """dlib's pixels, the golden CNN faces inside the image (5- and 68-point records), their css boxes."""
    image = load_rgb_as_dlib(DATA / name)
    faces = [f for f in golden_images()[name]["cnn_faces"] if inside(f["rect"], image.shape)]
    faces68 = [f for f in golden68()[name]["cnn_faces"] if inside(f["box"], image.shape)]
    return image, faces, faces68, [css_of(f["rect"]) for f in faces]


@pytest.mark.parametrize("name", NAMES)
def test_face_locations_hog_and_cnn(name):
    image = load_rgb_as_dlib(DATA / name)
    record = golden_images()[name]
    assert fr.face_locations(image) == [trim(css_of(r), image.shape) for r in record["hog_rects"]]
    cnn = fr.face_locations(image, model="cnn")
    assert cnn == [trim(css_of(f["rect"]), image.shape) for f in record["cnn_faces"]]
    assert all(type(v) is int for css in cnn for v in css)


def test_raw_face_locations_have_dlibs_accessors():
    name = "fr_examples/two_people.jpg"
    image = load_rgb_as_dlib(DATA / name)
    record = golden_images()[name]
    raw = fr._raw_face_locations(image, model="cnn")
    assert [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in raw] == [
        f["rect"][:4] for f in record["cnn_faces"]
    ]
    assert np.abs(np.array([d.confidence for d in raw]) - [f["rect"][4] for f in record["cnn_faces"]]).max() < 1e-4
    hog = fr._raw_face_locations(image)
    assert [[r.left(), r.top(), r.right(), r.bottom()] for r in hog] == [r[:4] for r in record["hog_rects"]]
    r = hog[0]
    assert (r.width(), r.height()) == (r.right() - r.left() + 1, r.bottom() - r.top() + 1)


def test_face_landmarks_large_small_and_default():
    name = "fr_examples/two_people.jpg"
    image, faces, faces68, locations = golden_inside(name)
    large = fr.face_landmarks(image, locations)
    assert large == [landmark_dict_large([tuple(p) for p in f["landmarks_68"]]) for f in faces68]
    small = fr.face_landmarks(image, locations, model="small")
    want_small = [[tuple(p) for p in f["landmarks_5"]] for f in faces]
    assert small == [{"nose_tip": [p[4]], "left_eye": p[2:4], "right_eye": p[0:2]} for p in want_small]
    # no locations: HOG at upsample 1, 68 points
    default = fr.face_landmarks(image)
    hog68 = golden68()[name]["hog_faces"]["1"]
    assert default == [landmark_dict_large([tuple(p) for p in f["landmarks_68"]]) for f in hog68]
    raw = fr._raw_face_landmarks(image, locations)
    assert raw[0].num_parts == 68 and raw[0].part(8).x == faces68[0]["landmarks_68"][8][0]
    assert [(p.x, p.y) for p in raw[0].parts()] == [tuple(p) for p in faces68[0]["landmarks_68"]]
    assert raw[0].rect == fr._css_to_rect(locations[0])
    with pytest.raises(ValueError, match="Invalid landmarks model"):
        fr.face_landmarks(image, locations, model="medium")


def test_face_encodings_small_large_and_default():
    name = "fr_examples/two_people.jpg"
    image, faces, faces68, locations = golden_inside(name)
    small = fr.face_encodings(image, locations)
    assert isinstance(small, list) and all(e.shape == (128,) and e.dtype == np.float64 for e in small)
    assert np.abs(np.array(small) - [f["descriptor"] for f in faces]).max() < 1e-4
    large = fr.face_encodings(image, locations, model="large")
    assert np.abs(np.array(large) - [f["descriptor"] for f in faces68]).max() < 1e-4
    default_large = fr.face_encodings(image, model="large")  # HOG at upsample 1
    hog68 = golden68()[name]["hog_faces"]["1"]
    assert np.abs(np.array(default_large) - [f["descriptor"] for f in hog68]).max() < 1e-4
    points = [[tuple(p) for p in f["landmarks_5"]] for f in faces]
    given = fr.face_encodings(image, locations, landmark_points=points)
    assert np.abs(np.array(given) - [f["descriptor"] for f in faces]).max() < 1e-4
    assert fr.face_encodings(np.zeros((60, 60, 3), np.uint8)) == []


@pytest.mark.oracle
def test_face_encodings_default_and_jitters_equal_dlib():
    """dlib-bin called here: HOG + 5-point default path; num_jitters continues one generator per model."""
    dlib = pytest.importorskip("dlib")

    image = load_rgb_as_dlib(DATA / "fr_examples/two_people.jpg")
    sp5 = dlib.shape_predictor(str(model_path("landmarks")))
    rec = dlib.face_recognition_model_v1(str(model_path("embedder")))  # a fresh generator
    rects = dlib.get_frontal_face_detector()(image, 1)
    plain = [np.array(rec.compute_face_descriptor(image, sp5(image, r), 1)) for r in rects]
    assert np.abs(np.array(fr.face_encodings(image)) - plain).max() < 1e-4
    first = [np.array(rec.compute_face_descriptor(image, sp5(image, r), 2)) for r in rects]
    second = [np.array(rec.compute_face_descriptor(image, sp5(image, r), 2)) for r in rects]
    fr._reset_jitter_generator()
    assert np.abs(np.array(fr.face_encodings(image, num_jitters=2)) - first).max() < 1e-4
    assert np.abs(np.array(fr.face_encodings(image, num_jitters=2)) - second).max() < 1e-4


@pytest.mark.oracle
def test_batch_face_locations_equal_dlib():
    dlib = pytest.importorskip("dlib")

    # The face (x 192-249, y 27-84) and its surroundings: dlib's CNN costs seconds per image, by the pixel.
    image = np.ascontiguousarray(load_rgb_as_dlib(DATA / "fr_examples/obama-240p.jpg")[:160, 130:310])
    images = [image, np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(image[::-1])]
    cnn = dlib.cnn_face_detection_model_v1(str(model_path("detector")))
    want = cnn(images, 1, batch_size=2)
    assert [len(found) for found in want] == [1, 1, 0], "the crop must keep the face (upside down: none)"
    raw = fr._raw_face_locations_batched(images, batch_size=2)
    for ours, theirs in zip(raw, want, strict=True):
        assert [_rect(d.rect) for d in ours] == [_rect(d.rect) for d in theirs]
        assert np.allclose([d.confidence for d in ours], [d.confidence for d in theirs], atol=1e-4)
    css = fr.batch_face_locations(images, batch_size=2)
    assert css == [[trim(css_of(_rect(d.rect)), images[0].shape) for d in theirs] for theirs in want]


def _rect(r):
    return [r.left(), r.top(), r.right(), r.bottom()]


@pytest.mark.oracle
def test_face_locations_upsample_0_cnn_equals_dlib():
    dlib = pytest.importorskip("dlib")

    image = load_rgb_as_dlib(DATA / "fr_examples/obama-480p.jpg")
    cnn = dlib.cnn_face_detection_model_v1(str(model_path("detector")))
    want = [trim(css_of(_rect(d.rect)), image.shape) for d in cnn(image, 0)]
    assert fr.face_locations(image, number_of_times_to_upsample=0, model="cnn") == want
    hog = dlib.get_frontal_face_detector()
    assert fr.face_locations(image, 0) == [trim(css_of(_rect(r)), image.shape) for r in hog(image, 0)]


def test_compare_faces_and_face_distance_rules():
    known = [np.zeros(128), np.full(128, 0.05), np.full(128, 0.06)]
    distances = fr.face_distance(known, np.zeros(128))
    assert isinstance(distances, np.ndarray)
    assert np.allclose(distances, [0, 0.05 * np.sqrt(128), 0.06 * np.sqrt(128)])
    result = fr.compare_faces(known, np.zeros(128))
    assert isinstance(result, list) and result == [True, True, False]
    assert fr.compare_faces(known, np.zeros(128), tolerance=0.5) == [True, False, False]
    empty = fr.face_distance([], np.zeros(128))
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)


def test_css_helpers():
    rect = fr._css_to_rect((10, 50, 60, 5))
    assert (rect.left(), rect.top(), rect.right(), rect.bottom()) == (5, 10, 50, 60)
    assert fr._rect_to_css(rect) == (10, 50, 60, 5)
    assert fr._trim_css_to_bounds((-3, 120, 90, -7), (80, 100, 3)) == (0, 100, 80, 0)
    assert fr._trim_css_to_bounds((3, 20, 30, 7), (80, 100, 3)) == (3, 20, 30, 7)


def test_load_image_file_equals_pillow():
    pil = pytest.importorskip("PIL.Image")
    for name in ("fr_test_images/obama.jpg", "fr_test_images/32bit.png", "dlib_faces/bald_guys.jpg"):
        path = DATA / name
        assert np.array_equal(fr.load_image_file(str(path)), np.array(pil.open(path).convert("RGB")))
        with open(path, "rb") as handle:
            assert np.array_equal(fr.load_image_file(handle, mode="L"), np.array(pil.open(path).convert("L")))
    assert fr.load_image_file(io.BytesIO((DATA / "fr_test_images/obama.jpg").read_bytes())).shape == (1137, 910, 3)
    with pytest.raises(ValueError, match="not supported"):
        fr.load_image_file(str(DATA / "fr_test_images/obama.jpg"), mode="CMYK")
