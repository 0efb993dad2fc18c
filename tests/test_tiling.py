"""Tiled execution of the MMOD detector: exact pyramid windows and network tiles, identical results.

Expected values come from the untiled path (one network call over dlib's whole tiled pyramid,
itself checked against dlib's golden outputs in test_detector.py) and from dlib's golden files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.engines import pyramid
from facestream.engines import pyramid_windows as pw
from facestream.engines.detector import TENSOR_TILES, DetectionStoppedError, FaceDetector
from facestream.engines.models import model_path

from conftest import DATA, QUICK_GOLDEN, golden_images, load_rgb_as_dlib, sweep


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector.from_file(model_path("detector"), None)  # the default cache: exported once per run


def tiled(detector: FaceDetector, max_tile_pixels: int) -> FaceDetector:
    return FaceDetector(detector.session, detector.params, max_tile_pixels=max_tile_pixels)


@pytest.mark.parametrize("times", [0, 1, 2])
def test_level_windows_are_the_whole_pyramids_pixels(times: int) -> None:
    image = load_rgb_as_dlib(DATA / "dlib_faces/2008_002470.jpg")[:120, :163]
    images = [image, np.ascontiguousarray(image[::-1])]
    whole, rects = pyramid.build_input_tensor(np.stack(images), times)
    geom = pw.PyramidGeometry(image.shape[:2], times)
    assert np.array_equal(geom.rects, rects) and geom.shape == whole.shape[2:]
    cached = pw.cache_small_levels(images, geom, pyramid.RGB_MEANS, rows_per_block=40)
    rng = np.random.default_rng(times)
    rows, cols = geom.shape
    for i in range(12):
        r0, c0 = int(rng.integers(0, rows - 1)), int(rng.integers(0, cols - 1))
        window = (r0, int(rng.integers(r0 + 1, rows + 1)), c0, int(rng.integers(c0 + 1, cols + 1)))
        part = pw.fill_window(images, geom, window, pyramid.RGB_MEANS, cached if i % 2 else None)
        assert np.array_equal(part, whole[:, :, window[0] : window[1], window[2] : window[3]]), window


def test_level_windows_of_a_grey_image() -> None:
    grey = cv2.cvtColor(load_rgb_as_dlib(DATA / "fr_examples/obama-240p.jpg"), cv2.COLOR_RGB2GRAY)
    whole, _ = pyramid.build_input_tensor(grey, 1)
    geom = pw.PyramidGeometry(grey.shape, 1)
    rows, cols = geom.shape
    window = (rows // 3, rows // 3 + 300, 40, cols - 7)
    part = pw.fill_window([grey], geom, window, pyramid.RGB_MEANS)
    assert np.array_equal(part, whole[:, :, window[0] : window[1], window[2] : window[3]])


@pytest.mark.parametrize("total", [29, 100, 255, 256, 257, 1000, 1353, 4097])
@pytest.mark.parametrize("tile", [256, 300, 1024])
def test_tiles_compute_every_output_once_with_its_receptive_field_inside(total: int, tile: int) -> None:
    spans = pw.tiles_1d(total, tile)
    assert spans[0][2] == 0 and spans[-1][3] == pw.output_size(total)
    for (start, stop, o0, o1), following in zip(spans, [*spans[1:], None]):
        assert start % pw.STRIDE == 0 and stop - start <= max(tile, pw.MIN_TILE) and o1 > o0
        assert following is None or following[2] == o1  # contiguous, no output twice
        for o in (o0, o1 - 1):  # the receptive field [8o-80, 8o+108] inside, or the tensor's own edge
            assert start == 0 or 8 * o - 80 >= start
            assert stop == total or 8 * o + 108 <= stop - 1
        local = pyramid.detector_output_shape(stop - start, stop - start)[0]
        assert o1 - start // pw.STRIDE <= local  # the window's network really has those cells


def test_misaligned_window_is_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        pw.window_outputs(4, 400, 1000)


@pytest.mark.parametrize("relpath", sweep(sorted(golden_images()), QUICK_GOLDEN))
def test_tiled_detection_equals_untiled_on_golden_images(detector: FaceDetector, relpath: str) -> None:
    image = load_rgb_as_dlib(DATA / relpath)
    boxes, scores = detector.detect(image, upsample=1)
    rows, cols = pw.PyramidGeometry(image.shape[:2], 1).shape
    golden = np.array([face["rect"] for face in golden_images()[relpath]["cnn_faces"]]).reshape(-1, 5)
    # Three or more strips: sliced from the whole input tensor (<= TENSOR_TILES tiles' pixels), then
    # computed on their own (a tile budget small enough that the whole tensor is not built).
    for strips in (3, TENSOR_TILES + 2):
        small = tiled(detector, max(pw.MIN_TILE**2, rows * cols // strips))
        assert (rows * cols <= TENSOR_TILES * small.max_tile_pixels) == (strips <= TENSOR_TILES)
        tiled_boxes, tiled_scores = small.detect(image, upsample=1)
        np.testing.assert_array_equal(tiled_boxes, boxes)
        np.testing.assert_array_equal(tiled_scores, scores)  # bit for bit: ONNX Runtime's conv is position-invariant
        np.testing.assert_array_equal(tiled_boxes, golden[:, :4].astype(np.int64))


def test_two_dimensional_tiles_give_the_same_score_map(detector: FaceDetector) -> None:
    image = load_rgb_as_dlib(DATA / "dlib_faces/2008_002470.jpg")
    geom = pw.PyramidGeometry(image.shape[:2], 1)
    whole, _ = pyramid.build_input_tensor(image, 1)
    expected = detector.session.run(whole)[:, 0]
    small = tiled(detector, 300 * pw.MIN_TILE)  # tiles 300 columns wide: a grid of tiles
    rows, cols = geom.shape
    assert cols * pw.MIN_TILE > small.max_tile_pixels
    got = small._run_windows([image], geom, [(0, rows, 0, cols)], None)
    np.testing.assert_array_equal(got, expected)


def test_peak_memory_of_analyze_on_a_36_megapixel_image(tmp_path: Path) -> None:
    """`facestream analyze --upsample 0` on 6000x6000 pixels: the child's own high-water mark < 1 GB."""
    # A smooth gradient: no face, so the figure is the detector's (an image with thousands of false
    # detections also makes analyze hold landmarks, chips and descriptors for each).
    y, x = np.mgrid[0:6000, 0:6000]
    image = np.stack([x * 255 // 5999, y * 255 // 5999, (x + y) * 255 // 11998], axis=-1).astype(np.uint8)
    path = tmp_path / "big.png"
    assert cv2.imwrite(str(path), image)
    small = tmp_path / "small.png"  # for the warm-up below
    assert cv2.imwrite(str(small), cv2.resize(image, (600, 600), interpolation=cv2.INTER_AREA))
    small_tiles = tmp_path / "small-tiles.yaml"
    small_tiles.write_text("detector:\n  max_tile_pixels: 100000\n")
    del image, x, y
    # VmHWM of the child's own address space: ru_maxrss would carry over the high-water mark of this
    # (forking) pytest process, which itself held the image's int64 temporaries.
    probe = (
        "import re, runpy, sys\n"
        "sys.argv = ['facestream', *sys.argv[2:], 'analyze', '--upsample', '0', sys.argv[1]]\n"
        "try:\n    runpy.run_module('facestream.pipeline.cli.main', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print('MAXRSS_KB', hwm, 'EXIT', code)\n"
    )
    # A first run compiles the pyramid's numba kernels (LLVM: ~90 MB more, once; `make install` runs
    # `engines prepare`, which does it); the budget is the steady state, so a small image is analysed first
    # with tiles small enough for the 36 MP image's path (tiles computed on their own: window kernels, each
    # array layout its own compiled version), and the measured run loads the compiled code.
    warm = subprocess.run([sys.executable, "-c", probe, str(small), "--config", str(small_tiles)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "MAXRSS_KB" in warm.stdout, warm.stderr[-2000:]
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=1800)
    assert "MAXRSS_KB" in done.stdout, done.stderr[-2000:]
    tail = done.stdout.split("MAXRSS_KB")[-1].split()
    peak_mb, code = int(tail[0]) / 1024, tail[2]
    assert code in ("0", "None", "1"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    print(f"analyze on 6000x6000 at upsample 0: peak {peak_mb:.0f} MB")
    assert peak_mb < 1024, f"peak {peak_mb:.0f} MB"


def test_a_stop_callback_ends_a_tiled_detection_before_its_next_network_call(detector: FaceDetector) -> None:
    """`stop` is asked before every network call: a tiled detection stops after the calls made so far, one
    network call stops before it; without a stop, or one that says no, the result is the detector's."""
    image = load_rgb_as_dlib(DATA / "fr_examples/obama-240p.jpg")
    calls: list[tuple[int, ...]] = []

    class Counted:  # the real session, its calls counted
        backend = detector.session.backend

        def run(self, batch: np.ndarray) -> np.ndarray:
            calls.append(batch.shape)
            return detector.session.run(batch)

    small = FaceDetector(Counted(), detector.params, max_tile_pixels=pw.MIN_TILE**2)  # many tiles
    boxes, scores = small.detect(image, 1, stop=lambda: False)
    want_boxes, want_scores = detector.detect(image, 1)
    np.testing.assert_array_equal(boxes, want_boxes)
    np.testing.assert_array_equal(scores, want_scores)
    tiles = len(calls)
    assert tiles > 3
    calls.clear()
    with pytest.raises(DetectionStoppedError):
        small.detect(image, 1, stop=lambda: len(calls) >= 2)
    assert len(calls) == 2
    calls.clear()
    whole = FaceDetector(Counted(), detector.params)
    with pytest.raises(DetectionStoppedError):
        whole.detect(image, 1, stop=lambda: True)
    assert calls == []
