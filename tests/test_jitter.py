"""engines/jitter.py against dlib: the generator, the jittered chips and the averaged descriptor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.engines.chips import extract_face_chips
from facestream.engines.embedder import FaceEmbedder
from facestream.engines.jitter import DlibRand, jitter_chips, jitter_parameters, jittered_descriptors
from facestream.engines.models import model_path

from conftest import DATA, GOLDEN, golden_images, load_rgb_as_dlib, require_dlib

CHIP = GOLDEN / "chips/fr_examples__obama-480p__face0.png"


def test_the_generator_is_mt19937_with_the_default_seed() -> None:
    """C++ [rand.predef]: the 10000th output of a default-constructed mt19937 is 4123659995."""
    fresh = np.random.RandomState(5489).randint(0, 2**32, size=10_000, dtype=np.uint64)
    assert int(fresh[-1]) == 4123659995
    rng = DlibRand()  # dlib::rand discards those 10,000 first
    follow = np.random.RandomState(5489).randint(0, 2**32, size=10_003, dtype=np.uint64)[10_000:]
    assert rng.next_uint32(3).tolist() == follow.tolist()
    values = [DlibRand().random_double() for _ in range(2)]
    assert values[0] == values[1] and 0 <= values[0] < 1


def _run_dlib(code: str) -> None:
    """dlib keeps its jitter generator in process-wide state: a fresh process gives the first draws."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).parent)


@pytest.mark.oracle
def test_jittered_chips_are_pixel_identical_to_dlib(tmp_path: Path) -> None:
    require_dlib()
    out = tmp_path / "dlib.npy"
    _run_dlib(
        "import cv2, dlib, numpy as np\n"
        f"chip = np.ascontiguousarray(cv2.imread({str(CHIP)!r})[:, :, ::-1])\n"
        f"np.save({str(out)!r}, np.stack([np.asarray(c) for c in dlib.jitter_image(chip, num_jitters=8)]))\n"
    )
    theirs = np.load(out)
    chip = np.ascontiguousarray(cv2.imread(str(CHIP))[:, :, ::-1])
    ours = jitter_chips(chip, 8)
    assert ours.shape == theirs.shape == (8, 150, 150, 3)
    assert np.array_equal(ours, theirs)
    rng = DlibRand()
    flips = [jitter_parameters(150, rng)[2] for _ in range(8)]
    assert True in flips and False in flips  # both paths of the flip were compared
    assert len({o.tobytes() for o in ours}) == 8  # eight different jitters


@pytest.mark.oracle
def test_jittered_descriptor_matches_dlibs_first_call(tmp_path: Path) -> None:
    require_dlib()
    relpath = "fr_examples/obama-480p.jpg"
    face = golden_images()[relpath]["cnn_faces"][0]
    out = tmp_path / "dlib.npy"
    _run_dlib(
        "import dlib, numpy as np\n"
        f"img = dlib.load_rgb_image({str(DATA / relpath)!r})\n"
        f"shape = dlib.full_object_detection(dlib.rectangle(*{face['rect'][:4]!r}), "
        f"[dlib.point(*p) for p in {face['landmarks_5']!r}])\n"
        f"model = dlib.face_recognition_model_v1({str(model_path('embedder'))!r})\n"
        "first = model.compute_face_descriptor(img, shape, 4)\n"
        "second = model.compute_face_descriptor(img, shape, 4)\n"
        f"np.save({str(out)!r}, np.array([first, second]))\n"
    )
    first, second = np.load(out)
    image = load_rgb_as_dlib(DATA / relpath)
    chips = extract_face_chips(image, np.array([face["landmarks_5"]]))
    embedder = FaceEmbedder.from_file(model_path("embedder"))
    ours = jittered_descriptors(embedder.embed_chips, chips, 4)[0]
    assert np.linalg.norm(ours - first) < 1e-4  # the embedder's precision (README: 1.1e-6 observed)
    # dlib continues its generator: its second call jitters differently; ours is the same every call
    assert np.linalg.norm(second - first) > 1e-3
    assert np.array_equal(ours, jittered_descriptors(embedder.embed_chips, chips, 4)[0])
    plain = embedder.embed_chips(chips)
    assert np.array_equal(jittered_descriptors(embedder.embed_chips, chips, 1), plain)  # 0 and 1: no jitter
    assert np.linalg.norm(plain[0] - np.array(face["descriptor"])) < 1e-4


def test_jitter_refuses_a_non_square_chip() -> None:
    with pytest.raises(ValueError, match="square"):
        jitter_chips(np.zeros((150, 140, 3), np.uint8), 2)
