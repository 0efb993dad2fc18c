"""The flat API: dlib's face models in a few functions, plain numpy in and out, no configuration.

    import facestream as fs

    image = fs.load_image("group.jpg")                  # (H, W, 3) uint8 RGB
    faces = fs.detect(image)                            # FaceBatch: boxes (N, 4) [l, t, r, b], scores (N,)
    points = fs.landmarks(image, faces.boxes)           # (N, 5, 2) [x, y]; model=68 for the 68-point shape
    vectors = fs.descriptors(image, landmarks=points)   # (N, 128) float32
    fs.compare(vectors, vectors[0])                     # [True, False, ...]: distance <= 0.6, dlib's rule

    with fs.Gallery("people.db") as gallery:
        gallery.add("Alice", "alice.jpg")
        print(gallery.identify(image).identities)      # ["Alice", "unknown", ...]

Every number is dlib's: CNN boxes (`model="cnn"`, `mmod_human_face_detector.dat`) and HOG boxes
(`model="hog"`, dlib's `get_frontal_face_detector()`), landmarks (5 or 68 points), chips and descriptors
(within 1e-4 of dlib's `compute_face_descriptor`). Each model is loaded once, at first use, and then
shared by every call of the process (loading is thread-safe; ONNX Runtime on the CPU).

The 68-point landmark model (`landmarks(..., model=68)`) is trained on the iBUG 300-W dataset, whose
licence excludes commercial use; the 5-point model, the detectors and the embedder have no such limit.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from facestream.engines.cachedir import default_cache_dir
from facestream.engines.chips import extract_face_chips
from facestream.engines.embedder import FaceEmbedder
from facestream.engines.face_batch import FaceBatch
from facestream.engines.imageio import DEFAULT_MAX_PIXELS, ImageError, decode_image
from facestream.engines.jitter import jittered_descriptors
from facestream.engines.landmarks import ShapePredictor, default_model_path
from facestream.engines.models import model_path

if TYPE_CHECKING:
    from facestream.engines.detector import FaceDetector
    from facestream.enroll.gallery import Gallery  # at run time the subclass below, see __getattr__
    from facestream.enroll.matching import Matches

__all__ = [
    "FaceBatch",
    "Gallery",
    "ImageError",
    "Matches",
    "analyze",
    "chips",
    "compare",
    "descriptors",
    "detect",
    "distance",
    "landmarks",
    "load_image",
]

DEFAULT_TOLERANCE = 0.6  # dlib's same-person rule
MAX_FILE_BYTES = 512 << 20  # an encoded image larger than this is refused before it is read whole

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | np.ndarray


# ---------------------------------------------------------------------------------------------
# Models: loaded lazily, once per process
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
_models: dict[Any, Any] = {}


def _model(key: Any, build: Any) -> Any:
    with _lock:
        if key not in _models:
            _models[key] = build()
        return _models[key]


def _cnn_detector() -> FaceDetector:
    from facestream.engines.detector import FaceDetector

    return _model("cnn", lambda: FaceDetector.from_file(model_path("detector"), default_cache_dir()))


def _hog_detector() -> Any:
    def build() -> Any:
        try:
            from facestream.engines.hog import HogFaceDetector
        except ImportError:
            raise NotImplementedError("the HOG detector (model='hog') is not available in this build") from None
        return HogFaceDetector.default()

    return _model("hog", build)


def _predictor(points: int) -> ShapePredictor:
    if points not in (5, 68):
        raise ValueError(f"landmark model must be 5 or 68 (points), got {points!r}")
    return _model(
        ("landmarks", points), lambda: ShapePredictor.from_file(default_model_path(points), default_cache_dir())
    )


def _embedder() -> FaceEmbedder:
    return _model("embedder", lambda: FaceEmbedder.from_file(model_path("embedder"), default_cache_dir()))


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _read_bytes(source: Any, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageError(f"{path}: {size:,} bytes is more than the limit of {max_bytes:,}")
            return path.read_bytes(), str(path)
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an image") from None
        except OSError as error:
            raise ImageError(f"{path}: cannot read: {error.strerror or error}") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "<bytes>"
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        name = str(getattr(source, "name", "<file>"))
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{name}: the file object must be opened in binary mode ('rb')")
    else:
        raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: more than the limit of {max_bytes:,} bytes")
    return bytes(data), name


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 grey by ITU-R 601 luma, rounded as Pillow's convert("L")."""
    rgb = np.asarray(rgb, np.uint32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(np.uint8)


def load_image(
    source: str | os.PathLike | bytes | IO[bytes],
    mode: str = "RGB",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    orient: bool = True,
) -> np.ndarray:
    """Read an image (a path, encoded bytes or a binary file object) as a numpy array.

    `mode="RGB"` gives (H, W, 3) uint8 RGB (grey, RGBA, 16-bit and CMYK files are converted);
    `mode="L"` gives (H, W) uint8 grey, rounded as Pillow's `convert("L")`. EXIF orientation is
    applied unless `orient=False`. A header declaring more than `max_pixels` pixels is refused
    before decoding; any unusable input raises `ImageError` naming it.

    >>> image = load_image("tests/data/fr_examples/obama.jpg")
    >>> image.shape, image.dtype
    ((1137, 910, 3), dtype('uint8'))
    >>> load_image(open("tests/data/fr_examples/obama.jpg", "rb"), mode="L").shape
    (1137, 910)
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    data, name = _read_bytes(source, MAX_FILE_BYTES)
    rgb = decode_image(data, name, max_pixels, orient=orient)
    return to_grey(rgb) if mode == "L" else rgb


def _image(image: ImageSource) -> np.ndarray:
    """An array as given (checked), or a path / bytes / file object read as RGB."""
    if not isinstance(image, np.ndarray):
        return load_image(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey uint8, got {image.shape} {image.dtype}")
    return image


def _boxes(boxes: Any) -> np.ndarray:
    if isinstance(boxes, FaceBatch):
        return boxes.boxes
    boxes = np.asarray(boxes)
    return boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4), np.int64)


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------


def detect(image: ImageSource, model: str = "cnn", upsample: int = 1) -> FaceBatch:
    """Find faces: a `FaceBatch` with `boxes` (N, 4) int64 [left, top, right, bottom] and `scores` (N,).

    `model="cnn"` is dlib's MMOD CNN detector (`cnn_face_detection_model_v1`); `model="hog"` is dlib's
    HOG detector (`get_frontal_face_detector()`), faster and less accurate on turned or small faces.
    `upsample` doubles the image that many times first (1 finds faces from ~40 px with the CNN,
    ~80 px with HOG at 0). Boxes are dlib's inclusive rectangles and may extend past the image.

    >>> faces = detect(load_image("tests/data/fr_examples/two_people.jpg"))
    >>> len(faces), faces.boxes.dtype
    (2, dtype('int64'))
    """
    image = _image(image)
    upsample = int(upsample)
    if upsample < 0:
        raise ValueError(f"upsample must be >= 0, got {upsample}")
    if model == "cnn":
        boxes, scores = _cnn_detector().detect(image, upsample)
    elif model == "hog":
        boxes, scores, _ = _hog_detector().detect(image, upsample=upsample)
    else:
        raise ValueError(f"model must be 'cnn' or 'hog', got {model!r}")
    return FaceBatch(np.asarray(boxes, np.int64).reshape(-1, 4), np.asarray(scores, np.float64))


def landmarks(image: ImageSource, boxes: np.ndarray | FaceBatch, model: int = 5) -> np.ndarray:
    """Landmarks (N, P, 2) int64 [x, y] of the faces in `boxes` (N, 4) [left, top, right, bottom].

    `model=5`: dlib's 5-point predictor (eye corners, base of the nose), what descriptors use.
    `model=68`: dlib's 68-point predictor (iBUG 300-W layout: 0-16 jaw, 17-26 brows, 27-35 nose,
    36-47 eyes, 48-67 mouth). Its training data's licence excludes commercial use.

    >>> image = load_image("tests/data/fr_examples/obama.jpg")
    >>> landmarks(image, [[354, 135, 599, 379]]).shape
    (1, 5, 2)
    """
    return _predictor(int(model)).predict(_image(image), _boxes(boxes))


def chips(image: ImageSource, landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Aligned face chips (N, size, size, 3) uint8 RGB from 5- or 68-point landmarks (N, P, 2),
    pixel-identical to dlib's `get_face_chip(image, shape, size, padding)`.

    >>> image = load_image("tests/data/fr_examples/obama.jpg")
    >>> chips(image, landmarks(image, [[354, 135, 599, 379]])).shape
    (1, 150, 150, 3)
    """
    return extract_face_chips(_image(image), np.asarray(landmarks), size, padding)


def descriptors(
    image: ImageSource,
    boxes: np.ndarray | FaceBatch | None = None,
    landmarks: np.ndarray | None = None,
    jitters: int = 0,
    *,
    landmark_model: int = 5,
    detector: str = "cnn",
    upsample: int = 1,
) -> np.ndarray:
    """128-d face descriptors (N, 128) float32, as dlib's `compute_face_descriptor(img, shape, jitters)`.

    Give `landmarks` (N, 5|68, 2), or `boxes` (landmarks are then found with `landmark_model`),
    or neither (faces are then detected with `detector` and `upsample`). `jitters` > 1 averages
    over that many randomly jittered chips, as dlib's `num_jitters` (each face starting from a
    fresh dlib generator; 0 and 1 mean no jitter). Two descriptors at most 0.6 apart are the same
    person.

    >>> image = load_image("tests/data/fr_examples/obama.jpg")
    >>> descriptors(image).shape
    (1, 128)
    """
    image = _image(image)
    if landmarks is None:
        if boxes is None:
            boxes = detect(image, detector, upsample).boxes
        landmarks = _predictor(int(landmark_model)).predict(image, _boxes(boxes))
    faces = extract_face_chips(image, np.asarray(landmarks))
    return jittered_descriptors(_embedder().embed_chips, faces, int(jitters))


def analyze(
    image: ImageSource, model: str = "cnn", upsample: int = 1, *, landmark_model: int = 5, jitters: int = 0
) -> FaceBatch:
    """Everything for every face: detect, landmarks, chips, descriptors, in one `FaceBatch`.

    >>> faces = analyze("tests/data/fr_examples/two_people.jpg")
    >>> faces.boxes.shape, faces.landmarks.shape, faces.chips.shape, faces.descriptors.shape
    ((2, 4), (2, 5, 2), (2, 150, 150, 3), (2, 128))
    """
    image = _image(image)
    batch = detect(image, model, upsample)
    batch.landmarks = _predictor(int(landmark_model)).predict(image, batch.boxes)
    batch.chips = extract_face_chips(image, batch.landmarks)
    batch.descriptors = jittered_descriptors(_embedder().embed_chips, batch.chips, int(jitters))
    return batch


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------


def _vectors(values: Any, name: str) -> np.ndarray:
    if isinstance(values, FaceBatch):
        values = values.descriptors
    array = np.asarray(values, np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or (array.size and array.shape[1] != 128):
        raise ValueError(f"{name}: expected (128,) or (N, 128) descriptors, got shape {np.shape(values)}")
    return array.reshape(-1, 128)


def distance(known: np.ndarray | Sequence, candidate: np.ndarray | Sequence) -> np.ndarray:
    """Euclidean distances between descriptors: (N,) for N known and one candidate, (N, M) for
    N known and M candidates.

    >>> a, b = np.zeros(128), np.full(128, 0.05)
    >>> distance([a, b], a).round(3).tolist()
    [0.0, 0.566]
    """
    known_v = _vectors(known, "known")
    candidates = _vectors(candidate, "candidate")
    result = np.linalg.norm(known_v[:, None, :] - candidates[None, :, :], axis=2)
    return result[:, 0] if np.ndim(candidate) == 1 else result


def compare(
    known: np.ndarray | Sequence, candidate: np.ndarray | Sequence, tolerance: float = DEFAULT_TOLERANCE
) -> np.ndarray:
    """Which known descriptors are the candidate's person: distance <= tolerance (0.6 is dlib's rule).

    >>> compare([np.zeros(128), np.ones(128)], np.zeros(128)).tolist()
    [True, False]
    """
    return distance(known, candidate) <= float(tolerance)


# ---------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------


# The gallery (SQLite, FAISS, OpenCV thumbnails), `Matches` and the CNN detector are imported when first
# used, not with this module: a script that only detects with HOG and encodes (face_recognition's usual
# calls) loads none of them.
def __getattr__(name: str) -> Any:
    if name == "Gallery":
        return _gallery_class()
    if name == "Matches":
        from facestream.enroll.matching import Matches

        return Matches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _gallery_class() -> type:
    from facestream.enroll.gallery import Gallery as _Gallery

    class Gallery(_Gallery):
        """The enrolled people: a SQLite file (+ its FAISS index), with `add` and `identify` that take
        images as well as descriptors. Every method of the full gallery (`enroll/gallery.py`) is here too.

        >>> with Gallery("people.db") as gallery:                 # doctest: +SKIP
        ...     gallery.add("Barack Obama", "obama.jpg")
        ...     gallery.identify("two_people.jpg").identities
        ['Barack Obama', 'unknown']
        """

        def add(self, name: str, faces: ImageSource | FaceBatch, *, largest: bool = False) -> np.ndarray:
            """Enrol `name` from an image (path, bytes, file object or array: exactly one face, or the
            largest with `largest=True`), a `FaceBatch` or descriptors (N, 128). Returns the sample ids."""
            source = str(faces) if isinstance(faces, (str, os.PathLike)) else None
            if isinstance(faces, FaceBatch):
                vectors = faces.descriptors
            elif isinstance(faces, np.ndarray) and faces.dtype != np.uint8:
                vectors = _vectors(faces, "descriptors").astype(np.float32)
            else:
                image = _image(faces)
                found = detect(image)
                if len(found) == 0:
                    raise ValueError(f"{source or 'image'}: no face found")
                if len(found) > 1 and not largest:
                    raise ValueError(f"{source or 'image'}: {len(found)} faces; pass largest=True to enrol the largest")
                pick = int(np.argmax(found.boxes[:, 2] - found.boxes[:, 0])) if len(found) > 1 else 0
                vectors = descriptors(image, boxes=found.boxes[pick : pick + 1])
                digest = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else None
                return self.add_samples(
                    name, vectors, sources=source, image_sha256=digest, boxes=found.boxes[pick : pick + 1]
                )
            return self.add_samples(name, vectors, sources=source)

        def identify(self, faces: ImageSource | FaceBatch) -> Matches:  # type: ignore[override]
            """Who each face is: `Matches` (identities, distances, runner-up, ...), one row per face.

            `faces`: descriptors (N, 128) or (128,), a `FaceBatch`, or an image (its faces are detected
            with the CNN detector; rows follow `detect(image)`'s order)."""
            if isinstance(faces, FaceBatch):
                return super().identify(faces.descriptors)
            if isinstance(faces, np.ndarray) and faces.dtype != np.uint8:
                return super().identify(_vectors(faces, "descriptors").astype(np.float32))
            return super().identify(descriptors(_image(faces)))

    Gallery.__module__, Gallery.__qualname__ = __name__, "Gallery"
    return Gallery
