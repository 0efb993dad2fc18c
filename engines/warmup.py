"""Everything a first run would otherwise build, done ahead: the ONNX exports of dlib's networks, the parsed
shape predictors and the HOG record, and the compiled loops, all in facestream's cache (`facestream engines
prepare`, which ``make install`` runs).

Without it the first process pays ~20-30 s on two cores before its first face: exporting the detector and
the embedder, parsing the 68-point model and building the loops. The work is done by running the real code
on a bundled photo (``data/warmup-face.jpg``) along the paths the pipeline and the API take: the CNN
pyramid whole, tiled and around regions; HOG at upsample 0 and 1, colour and grey; both predictors; the
embedder. The loops are one C library (:mod:`.loops`, built on first use); where numba runs them instead,
it compiles one machine-code version per argument type (dtype, dimensions, memory layout), so calling
each kernel once would not be enough; tests/test_warmup.py checks both: after this, the API's paths run
without numba, and with numba they use no kernel version this does not compile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cachedir import default_cache_dir
from .chips import extract_face_chips
from .imageio import decode_image
from .models import model_path

PHOTO = Path(__file__).parent / "data" / "warmup-face.jpg"
TILE_PIXELS = 200_000  # the photo's pyramid in tiles of at most this: the tiled path's kernels on a small image


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float


def warmup_image() -> np.ndarray:
    """The bundled photo, (H, W, 3) uint8 RGB: one face (Barack Obama, from face_recognition's examples)."""
    return decode_image(PHOTO.read_bytes(), PHOTO.name)


def _detector_steps(cache: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    from .detector import FaceDetector

    image = warmup_image()
    holder: dict[str, object] = {}

    def load() -> None:
        holder["detector"] = FaceDetector.from_file(model_path("detector"), cache)

    def run() -> None:
        detector: FaceDetector = holder["detector"]  # type: ignore[assignment]
        boxes, _ = detector.detect(image, 1)
        detector.detect(image, 0)
        detector.detect(np.ascontiguousarray(image.mean(axis=2).astype(np.uint8)), 1)
        detector.detect_batch([image, image], 1)
        detector.detect_regions(image, boxes.astype(np.float64), 1)
        FaceDetector(detector.session, detector.params, max_tile_pixels=TILE_PIXELS).detect(image, 1)
        detector.close()

    yield "CNN detector: ONNX export", load
    yield "CNN detector: pyramid loops (whole, batched, regions, tiled)", run


def _hog_step() -> Callable[[], object]:
    def run() -> None:
        from .hog import HogFaceDetector

        detector = HogFaceDetector.default()
        image = warmup_image()
        grey = np.ascontiguousarray(image.mean(axis=2).astype(np.uint8))
        for upsample in (0, 1):
            detector.detect(image, upsample=upsample)
            detector.detect(grey, upsample=upsample)

    return run


def _face_box(image: np.ndarray) -> np.ndarray:
    """A box around the photo's face (its middle), without running a detector again."""
    height, width = image.shape[:2]
    return np.array([[width // 4, height // 8, 3 * width // 4, 7 * height // 8]], np.int64)


def _landmarks_step(points: int, cache: Path) -> Callable[[], object]:
    def run() -> None:
        from .landmarks import ShapePredictor, default_model_path

        image = warmup_image()
        ShapePredictor.from_file(default_model_path(points), cache).predict(image, _face_box(image))

    return run


def _embedder_step(cache: Path) -> Callable[[], object]:
    def run() -> None:
        from .embedder import FaceEmbedder
        from .landmarks import ShapePredictor, default_model_path

        image = warmup_image()
        points = ShapePredictor.from_file(default_model_path(5), cache).predict(image, _face_box(image))
        with FaceEmbedder.from_file(model_path("embedder"), cache) as embedder:
            embedder.embed_chips(extract_face_chips(image, points))

    return run


def steps(cache_dir: Path | None = None) -> Iterator[tuple[str, Callable[[], object]]]:
    """The work, as (what, do it) pairs in order."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    yield from _detector_steps(cache)
    yield "HOG detector: record, loops (upsample 0 and 1, colour and grey)", _hog_step()
    yield "5-point shape predictor", _landmarks_step(5, cache)
    yield "68-point shape predictor: parse dlib's file", _landmarks_step(68, cache)
    yield "embedder: ONNX export", _embedder_step(cache)


def prepare(cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> list[Step]:
    """Run every step; `progress` is told the name of each before it starts. Returns what took how long."""
    done = []
    for name, run in steps(cache_dir):
        if progress is not None:
            progress(name)
        started = time.perf_counter()
        run()
        done.append(Step(name, round(time.perf_counter() - started, 2)))
    return done
