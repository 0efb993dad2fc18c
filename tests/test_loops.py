"""The compiled loops (engines/loops.py): C built at first use, numba's as the fallback.

Both must give the same bits: the C loops follow numba's line for line, and numba's are the ones the
parity work matched to dlib. Here they are run side by side on photos and on random images (sizes chosen
to hit the SIMD tails and the smallest images), for the HOG detector and the CNN pyramid;
tests/test_hog.py, test_pyramid.py and test_detector.py check whichever loops the process uses against
dlib's golden outputs. Also: the C loops refuse arrays they would misread, a
machine without a C compiler falls back to numba with one warning, and face_recognition's HOG path
(locations, then encodings) runs without importing numba at all, which is what the C loops are for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from facestream.engines import fhog, hog, loops, pyramid
from facestream.engines.hog import HogFaceDetector

from conftest import DATA, load_rgb_as_dlib

T = TypeVar("T")
PHOTOS = ["fr_examples/obama-480p.jpg", "fr_examples/two_people.jpg", "fr_test_images/obama2.jpg"]


@contextmanager
def using(choice: str) -> Iterator[loops.Loops]:
    """This process's loops switched to `choice` ("c" or "numba") for the block."""
    previous = os.environ.get(loops.CHOICE_VARIABLE)
    os.environ[loops.CHOICE_VARIABLE] = choice
    loops.loops.cache_clear()
    try:
        yield loops.loops()
    finally:
        if previous is None:
            os.environ.pop(loops.CHOICE_VARIABLE, None)
        else:
            os.environ[loops.CHOICE_VARIABLE] = previous
        loops.loops.cache_clear()


def both(run: Callable[[], T]) -> tuple[T, T]:
    """`run`'s result with the C loops, then with numba's."""
    with using("c") as c:
        assert isinstance(c, loops.CLoops), "the C loops were not built on this machine"
        from_c = run()
    with using("numba") as n:
        assert n.kind == "numba"
        from_numba = run()
    return from_c, from_numba


def assert_identical(from_c: list[np.ndarray], from_numba: list[np.ndarray]) -> None:
    for a, b in zip(from_c, from_numba, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_detections_on_photos_are_identical() -> None:
    detector = HogFaceDetector.default()
    images = [load_rgb_as_dlib(DATA / p) for p in PHOTOS]
    images.append(np.ascontiguousarray(images[1].mean(axis=2).astype(np.uint8)))  # grey

    def run() -> list:
        return [detector.detect(image, upsample=up) for image in images for up in (0, 1)]

    from_c, from_numba = both(run)
    assert sum(len(r[0]) for r in from_c) >= 8, "the photos should hold faces: the check would prove little"
    for (bc, sc, ic), (bn, sn, in_) in zip(from_c, from_numba, strict=True):
        np.testing.assert_array_equal(bc, bn)
        np.testing.assert_array_equal(sc, sn)  # exact: both follow dlib's float32 order
        np.testing.assert_array_equal(ic, in_)


SIZES = [(1, 1), (2, 3), (7, 9), (16, 17), (23, 41), (40, 33), (57, 64), (95, 130), (121, 200)]


@pytest.mark.parametrize("channels", [3, 1])
def test_resize_and_fhog_are_identical_on_random_images(channels: int) -> None:
    rng = np.random.default_rng(channels)
    images = []
    for h, w in SIZES:
        shape = (h, w, 3) if channels == 3 else (h, w)
        images.append(rng.integers(0, 256, shape, dtype=np.uint8))
    images.append(np.full((64, 80, 3) if channels == 3 else (64, 80), 255, np.uint8))  # flat: zero gradients

    def run() -> list[np.ndarray]:
        out = []
        for image in images:
            h, w = image.shape[:2]
            for oh, ow in ((h * 2 + 1, w * 2 + 1), (max(1, h * 5 // 6), max(1, w * 5 // 6)), (h, w + 9)):
                out.append(hog._resize(image, oh, ow))
            out.append(fhog.fhog_features(image))
        return out

    assert_identical(*both(run))


def test_filter_scores_are_identical_and_responses_within_their_bound() -> None:
    detector = HogFaceDetector.default()
    rng = np.random.default_rng(7)
    feats = fhog.fhog_features(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    thresholds = detector.model.thresholds - 2.0  # low, so that many cells are scored exactly

    from_c, from_numba = both(lambda: detector._candidates(feats, thresholds))
    assert sum(len(r) for r, _, _ in from_c) > 50
    for (rc, cc, sc), (rn, cn, sn) in zip(from_c, from_numba, strict=True):
        np.testing.assert_array_equal(rc, rn)
        np.testing.assert_array_equal(cc, cn)
        np.testing.assert_array_equal(sc, sn)

    # The approximate pass may round differently (FMA contraction is allowed there) but stays within the
    # margin the detector adds before the exact pass.
    P, Q = feats.shape[1:]
    approx = []
    for choice in ("c", "numba"):
        with using(choice) as chosen:
            out = np.empty((detector.filter_count, P - 9, Q - 9), np.float32)
            chosen.approximate_responses(feats, detector._term_planes, detector._term_rows, detector._term_cols,
                                         detector._term_starts, 64, out)  # fmt: skip
            approx.append(out)
    margin = hog._BOUND_STEPS * 2.0**-24 * float(feats.max()) * detector._abs_mass
    assert np.all(np.abs(approx[0] - approx[1]) <= margin[:, None, None])


def test_the_c_loops_refuse_arrays_they_would_misread() -> None:
    with using("c") as c:
        image = np.zeros((20, 30, 3), np.uint8)
        out = np.zeros((10, 15, 3), np.uint8)
        rows = hog._resize_rows(20, 10)
        n_simd, cols = hog._resize_cols(30, 15, 3)
        c.resize_u8(image, out, *rows, n_simd, *cols)  # the right arrays: accepted
        with pytest.raises(TypeError, match="C-contiguous uint8"):
            c.resize_u8(np.asfortranarray(image), out, *rows, n_simd, *cols)
        with pytest.raises(TypeError, match="int64"):
            c.resize_u8(image, out, rows[0].astype(np.int32), *rows[1:], n_simd, *cols)
        with pytest.raises(ValueError, match="does not fit"):
            c.resize_u8(image, np.zeros((10, 15, 1), np.uint8), *rows, n_simd, *cols)


def test_pyramid_resize_and_normalisation_are_identical() -> None:
    """Whole and windowed float resizes (windows of a larger tensor: strided planes), the uint8 RGB resize,
    and the CNN's whole input tensor of a photo."""
    rng = np.random.default_rng(3)
    planes = rng.normal(0, 1, (3, 97, 133)).astype(np.float32)
    tensor = rng.normal(0, 1, (3, 120, 180)).astype(np.float32)
    photo = load_rgb_as_dlib(DATA / PHOTOS[0])

    def run() -> list[np.ndarray]:
        out = [pyramid.resize_bilinear_f32(planes, oh, ow) for oh, ow in ((80, 110), (41, 57), (150, 230), (1, 5))]
        # a window of a tensor resized into another window of it, as the pyramid's levels are
        target = tensor.copy()
        src, dst = target[:, 2:99, 3:136], target[:, 100:117, 140:170]
        plan = pyramid.resize_plan(97, 133, 80, 110)
        rows, cols = pyramid._window_weights(plan, (0, 0), (10, 27, 60, 90))
        loops.loops().resize_f32(src, dst, *rows, *cols)
        out.append(target)
        out.append(pyramid.resize_bilinear_rgb_u8(photo, 301, 517))
        out.append(pyramid.build_input_tensor(photo, 1)[0])
        return out

    assert_identical(*both(run))


def test_chip_sampling_is_identical_to_numpys() -> None:
    """chips._bilinear (numpy, the reference that matched dlib's chips) against the C loop: random affine
    grids reaching outside the image, NaN and infinite points, colour and grey; then whole chips of photos."""
    from facestream.engines import chips

    rng = np.random.default_rng(11)
    with using("c") as c:
        for channels in (3, 1):
            src = rng.integers(0, 256, (57, 83, channels), dtype=np.uint8)
            x = rng.uniform(-5, 90, (150, 150))
            y = rng.uniform(-5, 62, (150, 150))
            x[0, :3], y[1, :3] = np.nan, np.inf
            x[2, 0], y[2, 1] = 82.0, 56.0  # the last column/row: black, as dlib never samples them
            with np.errstate(invalid="ignore"):  # numpy's inf - inf, masked black afterwards
                reference = chips._bilinear(src, x, y)
            np.testing.assert_array_equal(c.chip_bilinear(src, x, y), reference)
        with pytest.raises(TypeError, match="uint8"):
            c.chip_bilinear(src.astype(np.float32), x, y)

    photo = load_rgb_as_dlib(DATA / PHOTOS[1])
    boxes = HogFaceDetector.default().detect(photo, upsample=1)[0]
    from facestream.engines.landmarks import ShapePredictor, default_model_path

    points = ShapePredictor.from_file(default_model_path(5)).predict(photo, boxes)
    from_c, from_numpy = both(lambda: [chips.extract_face_chips(photo, points)])
    assert len(boxes) == 2
    assert_identical(from_c, from_numpy)


def test_the_c_pyramid_loops_refuse_arrays_they_would_misread() -> None:
    with using("c") as c:
        plan = pyramid.resize_plan(20, 30, 10, 15)
        rows, cols = pyramid._window_weights(plan, (0, 0), (0, 10, 0, 15))
        src = np.zeros((3, 20, 30), np.float32)
        c.resize_f32(src, np.zeros((3, 10, 15), np.float32), *rows, *cols)
        with pytest.raises(TypeError, match="contiguous columns"):
            c.resize_f32(np.zeros((3, 20, 60), np.float32)[:, :, ::2], np.zeros((3, 10, 15), np.float32), *rows, *cols)
        with pytest.raises(TypeError, match="float32"):
            c.resize_f32(src.astype(np.float64), np.zeros((3, 10, 15), np.float32), *rows, *cols)
        with pytest.raises(ValueError, match="does not fit"):  # a plan reading outside the source
            c.resize_f32(src[:, :15], np.zeros((3, 10, 15), np.float32), *rows, *cols)
        with pytest.raises(ValueError, match="do not fit"):
            c.normalize_into(np.zeros((1, 4, 4, 3), np.uint8), np.zeros(3, np.float32), np.zeros((3, 4, 5), np.float32))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})  # fmt: skip


def test_without_a_c_compiler_numba_runs_them_with_one_warning(tmp_path: Path) -> None:
    code = f"""
import logging, sys
logging.basicConfig(level=logging.WARNING)
from facestream.engines.hog import HogFaceDetector
from facestream.engines.loops import loops
import facestream as fs
image = fs.load_image({str(DATA / PHOTOS[0])!r})
boxes = HogFaceDetector.default().detect(image, upsample=0)[0]
print(loops().kind, len(boxes))
"""
    done = run_python(code, CC="/nonexistent/cc", FACESTREAM_CACHE=str(tmp_path), FACESTREAM_LOOPS="auto")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["numba", "1"]
    warnings = [line for line in done.stderr.splitlines() if "using numba's" in line]
    assert len(warnings) == 1 and "/nonexistent/cc" in warnings[0], done.stderr[-2000:]
    assert not list((tmp_path / "loops").glob("*.so"))

    strict = run_python(code, CC="/nonexistent/cc", FACESTREAM_CACHE=str(tmp_path), FACESTREAM_LOOPS="c")
    assert strict.returncode != 0 and "LoopsBuildError" in strict.stderr


def test_face_recognitions_hog_path_runs_without_numba() -> None:
    """Start-up is what the C loops and the cached HOG record buy: numba's import alone is ~0.5 s."""
    code = f"""
import sys
import facestream.compat.face_recognition as fr
image = fr.load_image_file({str(DATA / PHOTOS[1])!r})
encodings = fr.face_encodings(image, fr.face_locations(image))
print(len(encodings), "numba" in sys.modules)
"""
    first = run_python(code, FACESTREAM_LOOPS="auto")  # builds what the cache lacks
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_python(code, FACESTREAM_LOOPS="auto")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["2", "False"], second.stdout
