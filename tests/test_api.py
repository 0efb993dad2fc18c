"""The flat API (facestream/api.py, re-exported by `facestream`): every result against dlib's golden
outputs (golden/dlib-20.0.1.json, dlib-20.0.1-68.json, dlib-20.0.1-hog.json) or a stated rule."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import facestream as fs
from facestream import api
from facestream.engines.models import model_path

from conftest import DATA, GOLDEN, golden_images, load_rgb_as_dlib

TWO = "fr_examples/two_people.jpg"


def cnn_golden(name: str) -> list[dict]:
    return golden_images()[name]["cnn_faces"]


def test_import_is_lazy_and_reexports_the_api():
    code = "import sys, facestream; assert 'facestream.api' not in sys.modules; facestream.detect; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    for name in fs.__all__:
        assert getattr(fs, name) is not None
    with pytest.raises(AttributeError):
        _ = fs.no_such_thing


def test_load_image_sources_and_modes():
    pil = pytest.importorskip("PIL.Image")
    path = DATA / "fr_test_images/obama.jpg"
    want_rgb = np.array(pil.open(path).convert("RGB"))
    want_grey = np.array(pil.open(path).convert("L"))  # Pillow's luma rounding is the rule
    assert np.array_equal(fs.load_image(path), want_rgb)
    assert np.array_equal(fs.load_image(str(path)), want_rgb)
    assert np.array_equal(fs.load_image(path.read_bytes()), want_rgb)
    with open(path, "rb") as handle:
        assert np.array_equal(fs.load_image(handle, mode="L"), want_grey)
    rgba = DATA / "fr_test_images/32bit.png"  # 8-bit RGBA, alpha dropped
    assert np.array_equal(fs.load_image(rgba), np.array(pil.open(rgba).convert("RGB")))


def test_load_image_bad_input(tmp_path):
    with pytest.raises(fs.ImageError, match="not an image"):
        fs.load_image(b"hello")
    with pytest.raises(fs.ImageError, match="directory"):
        fs.load_image(tmp_path)
    with pytest.raises(fs.ImageError, match="cannot read"):
        fs.load_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="binary mode"):
        fs.load_image(io.StringIO("text"))
    with pytest.raises(ValueError, match="mode"):
        fs.load_image(DATA / "fr_test_images/obama.jpg", mode="CMYK")
    with pytest.raises(fs.ImageError, match="more than the limit"):
        fs.load_image(DATA / "fr_test_images/obama.jpg", max_pixels=1000)


def test_detect_cnn_equals_dlib():
    image = load_rgb_as_dlib(DATA / TWO)
    faces = fs.detect(image)
    assert isinstance(faces, fs.FaceBatch)
    want = np.array([f["rect"] for f in cnn_golden(TWO)])
    assert np.array_equal(faces.boxes, want[:, :4].astype(np.int64))
    assert np.abs(faces.scores - want[:, 4]).max() < 1e-4


def test_detect_hog_equals_dlib():
    image = load_rgb_as_dlib(DATA / TWO)
    faces = fs.detect(image, model="hog", upsample=1)
    want = np.array(golden_images()[TWO]["hog_rects"]).reshape(-1, 5)
    assert np.array_equal(faces.boxes, want[:, :4].astype(np.int64))
    assert np.abs(faces.scores - want[:, 4]).max() < 1e-9


def test_detect_rejects_bad_arguments():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="model"):
        fs.detect(image, model="yolo")
    with pytest.raises(ValueError, match="upsample"):
        fs.detect(image, upsample=-1)
    with pytest.raises(ValueError, match="uint8"):
        fs.detect(image.astype(np.float32))


@pytest.mark.parametrize("name", ["dlib_faces/bald_guys.jpg", TWO])
def test_landmarks_chips_descriptors_equal_dlib(name):
    image = load_rgb_as_dlib(DATA / name)
    faces = cnn_golden(name)
    boxes = np.array([f["rect"][:4] for f in faces], np.int64)
    points = fs.landmarks(image, boxes)
    assert np.array_equal(points, [f["landmarks_5"] for f in faces])
    chips = fs.chips(image, points)
    digests = [hashlib.sha256(chip.tobytes()).hexdigest() for chip in chips]
    assert digests == [f["chip_sha256"] for f in faces]
    want = np.array([f["descriptor"] for f in faces])
    assert np.abs(fs.descriptors(image, landmarks=points) - want).max() < 1e-4
    assert np.abs(fs.descriptors(image, boxes=boxes) - want).max() < 1e-4
    golden68 = json.loads((GOLDEN / "dlib-20.0.1-68.json").read_text())["images"][name]["cnn_faces"]
    assert np.array_equal(fs.landmarks(image, boxes, model=68), [f["landmarks_68"] for f in golden68])


def test_analyze_and_descriptors_without_boxes_follow_detect():
    image = load_rgb_as_dlib(DATA / TWO)
    faces = fs.analyze(image)
    want = cnn_golden(TWO)
    assert np.array_equal(faces.boxes, [f["rect"][:4] for f in want])
    assert np.array_equal(faces.landmarks, [f["landmarks_5"] for f in want])
    assert np.abs(faces.descriptors - [f["descriptor"] for f in want]).max() < 1e-4
    assert np.abs(fs.descriptors(image) - faces.descriptors).max() == 0
    assert api._cnn_detector() is api._cnn_detector()  # loaded once


@pytest.mark.oracle
def test_jitters_match_dlibs_first_call():
    dlib = pytest.importorskip("dlib")

    image = load_rgb_as_dlib(DATA / TWO)
    face = cnn_golden(TWO)[0]
    rec = dlib.face_recognition_model_v1(str(model_path("embedder")))
    rect = dlib.rectangle(*face["rect"][:4])
    shape = dlib.full_object_detection(rect, [dlib.point(x, y) for x, y in face["landmarks_5"]])
    want = np.array(rec.compute_face_descriptor(image, shape, 3))
    got = fs.descriptors(image, landmarks=[face["landmarks_5"]], jitters=3)
    assert np.abs(got[0] - want).max() < 1e-4


def test_distance_and_compare_rule():
    a, b, c = np.zeros(128), np.full(128, 0.05), np.full(128, 0.06)
    assert np.allclose(fs.distance([a, b, c], a), [0, 0.05 * np.sqrt(128), 0.06 * np.sqrt(128)])
    assert fs.distance([a, b], [a, c]).shape == (2, 2)
    assert fs.compare([a, b, c], a).tolist() == [True, True, False]  # 0.566 <= 0.6 < 0.679
    assert fs.compare([a, b, c], a, tolerance=0.5).tolist() == [True, False, False]
    assert fs.distance(np.zeros((0, 128)), a).shape == (0,)
    with pytest.raises(ValueError, match="128"):
        fs.distance(np.zeros((2, 3)), a)


def test_gallery_add_and_identify(tmp_path):
    # truth: the file names (face_recognition's test images: obama*.jpg show Barack Obama, biden.jpg Joe Biden)
    images = DATA / "fr_test_images"
    with fs.Gallery(tmp_path / "people.db") as gallery:
        ids = gallery.add("Barack Obama", images / "obama.jpg")
        assert len(ids) == 1
        whole = fs.load_image(images / "biden.jpg")  # 2 megapixels: analysed once, at half size (~6 s -> ~1.5 s)
        biden = fs.analyze(np.ascontiguousarray(whole[::2, ::2]))
        gallery.add("Joe Biden", biden.descriptors)
        assert gallery.identify(images / "obama2.jpg").identities == ["Barack Obama"]
        assert gallery.identify(biden).identities == ["Joe Biden"]
        with pytest.raises(ValueError, match="no face"):
            gallery.add("Nobody", DATA / "dlib_faces/dogs.jpg")
        with pytest.raises(ValueError, match="2 faces"):
            gallery.add("Two", DATA / TWO)
        assert len(gallery.add("Largest", DATA / TWO, largest=True)) == 1
    with fs.Gallery(tmp_path / "people.db") as again:
        assert sorted(p.name for p in again.people()) == ["Barack Obama", "Joe Biden", "Largest"]


def test_docstring_examples_run(monkeypatch):
    import doctest

    monkeypatch.chdir(DATA.parent.parent)  # the examples use paths from the repository root
    result = doctest.testmod(api)
    assert result.failed == 0 and result.attempted >= 15
