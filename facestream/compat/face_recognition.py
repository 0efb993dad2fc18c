"""face_recognition 1.4.0's API (ageitgey/face_recognition, `api.py`), computed by facestream.

Change one import line and keep the rest of the script:

    import facestream.compat.face_recognition as face_recognition

Same function names, signatures, defaults, return types and numbers as face_recognition with
dlib: `face_locations` gives css tuples (top, right, bottom, left) trimmed to the image (with
face_recognition's own rule: right and bottom are clipped to the width and height, not width - 1),
`model="hog"` (the default) is dlib's HOG frontal-face detector and `model="cnn"` its MMOD CNN;
`face_landmarks` gives face_recognition's dicts for `model="large"` (68 points) and `"small"`
(5 points); `face_encodings` gives a list of (128,) float64 arrays. The underscored helpers
return objects with dlib's accessors (`rectangle.left()`, `mmod_rectangle.rect` / `.confidence`,
`full_object_detection.parts()` / `.part(i)` / `.num_parts` / `.rect`, `point.x` / `.y`).

Differences, none numeric:
* `load_image_file` supports the modes face_recognition documents ("RGB", "L"); other modes raise
  ValueError; truncated files raise `ImageError` instead of loading partially; images declaring more
  than 40 million pixels are refused. Pixels equal Pillow's (EXIF orientation ignored, as Pillow).
* `num_jitters` > 1 draws from one dlib generator per process, continued from call to call as
  dlib's model object does: a fresh process gives the same jittered encodings as a fresh
  face_recognition process making the same calls.

Licence: `model="large"` (the default of `face_landmarks`) uses dlib's 68-point landmark model,
trained on the iBUG 300-W dataset, whose licence excludes commercial use (as with face_recognition).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import IO, Any

import numpy as np

from facestream import api
from facestream.engines.chips import extract_face_chips
from facestream.engines.imageio import decode_image
from facestream.engines.jitter import DlibRand, jittered_descriptors

__all__ = [
    "batch_face_locations",
    "compare_faces",
    "face_distance",
    "face_encodings",
    "face_landmarks",
    "face_locations",
    "full_object_detection",
    "load_image_file",
    "mmod_rectangle",
    "point",
    "rectangle",
]


# ---------------------------------------------------------------------------------------------
# dlib's result objects (the accessors face_recognition and its users call)
# ---------------------------------------------------------------------------------------------


class point:  # noqa: N801 (dlib's name)
    """dlib.point: integer x, y."""

    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = int(x), int(y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"point({self.x}, {self.y})"

    def __str__(self) -> str:
        return f"({self.x}, {self.y})"


class rectangle:  # noqa: N801 (dlib's name)
    """dlib.rectangle: an inclusive integer rectangle (width = right - left + 1)."""

    __slots__ = ("_b", "_l", "_r", "_t")

    def __init__(self, left: int = 0, top: int = 0, right: int = -1, bottom: int = -1) -> None:
        for value in (left, top, right, bottom):
            if not isinstance(value, (int, np.integer)):
                raise TypeError(f"rectangle coordinates must be integers, got {value!r}")
        self._l, self._t, self._r, self._b = int(left), int(top), int(right), int(bottom)

    def left(self) -> int:
        return self._l

    def top(self) -> int:
        return self._t

    def right(self) -> int:
        return self._r

    def bottom(self) -> int:
        return self._b

    def width(self) -> int:
        return 0 if self.is_empty() else self._r - self._l + 1

    def height(self) -> int:
        return 0 if self.is_empty() else self._b - self._t + 1

    def area(self) -> int:
        return self.width() * self.height()

    def is_empty(self) -> bool:
        return self._t > self._b or self._l > self._r

    def tl_corner(self) -> point:
        return point(self._l, self._t)

    def br_corner(self) -> point:
        return point(self._r, self._b)

    def center(self) -> point:
        return point((self._l + self._r + 1) // 2, (self._t + self._b + 1) // 2)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, rectangle) and self._tuple() == other._tuple()

    def __hash__(self) -> int:
        return hash(self._tuple())

    def _tuple(self) -> tuple[int, int, int, int]:
        return self._l, self._t, self._r, self._b

    def __repr__(self) -> str:
        return f"rectangle({self._l},{self._t},{self._r},{self._b})"

    def __str__(self) -> str:
        return f"[({self._l}, {self._t}) ({self._r}, {self._b})]"


class mmod_rectangle:  # noqa: N801 (dlib's name)
    """dlib.mmod_rectangle: a CNN detection, `.rect` and `.confidence`."""

    __slots__ = ("confidence", "rect")

    def __init__(self, rect: rectangle, confidence: float) -> None:
        self.rect, self.confidence = rect, float(confidence)

    def __repr__(self) -> str:
        return f"mmod_rectangle(rect={self.rect!r}, confidence={self.confidence})"


class full_object_detection:  # noqa: N801 (dlib's name)
    """dlib.full_object_detection: a box and its landmark points."""

    __slots__ = ("_parts", "rect")

    def __init__(self, rect: rectangle, parts: Iterable[point]) -> None:
        self.rect = rect
        self._parts = [p if isinstance(p, point) else point(*p) for p in parts]

    @property
    def num_parts(self) -> int:
        return len(self._parts)

    def part(self, idx: int) -> point:
        if not 0 <= idx < len(self._parts):
            raise IndexError("Index out of range")
        return self._parts[idx]

    def parts(self) -> list[point]:
        return list(self._parts)

    def __repr__(self) -> str:
        return f"<full_object_detection with {self.num_parts} parts, rect {self.rect}>"


def _rectangle_rows(rects: Sequence[rectangle]) -> np.ndarray:
    return np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.int64).reshape(-1, 4)


def _detections(points: np.ndarray, rects: Sequence[rectangle]) -> list[full_object_detection]:
    return [
        full_object_detection(rect, [point(x, y) for x, y in shape.tolist()])
        for rect, shape in zip(rects, points, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# face_recognition's functions
# ---------------------------------------------------------------------------------------------


def _rect_to_css(rect: rectangle) -> tuple[int, int, int, int]:
    """A rectangle as a (top, right, bottom, left) tuple."""
    return rect.top(), rect.right(), rect.bottom(), rect.left()


def _css_to_rect(css: Sequence[int]) -> rectangle:
    """A (top, right, bottom, left) tuple as a rectangle."""
    return rectangle(css[3], css[0], css[1], css[2])


def _trim_css_to_bounds(css: Sequence[int], image_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """face_recognition's trim: top and left at least 0, right at most the width, bottom at most the height."""
    return max(css[0], 0), min(css[1], image_shape[1]), min(css[2], image_shape[0]), max(css[3], 0)


def face_distance(face_encodings: Any, face_to_compare: Any) -> np.ndarray:
    """Euclidean distance from each encoding to `face_to_compare` (an empty array for no encodings)."""
    if len(face_encodings) == 0:
        return np.empty(0)
    return np.linalg.norm(face_encodings - face_to_compare, axis=1)


def load_image_file(file: str | IO[bytes], mode: str = "RGB") -> np.ndarray:
    """An image file (name or binary file object) as a numpy array: (H, W, 3) uint8 for mode "RGB",
    (H, W) uint8 for "L" (Pillow's luma rounding), EXIF orientation ignored as Pillow does."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode {mode!r} is not supported: use 'RGB' or 'L'")
    data, name = api._read_bytes(file, api.MAX_FILE_BYTES)
    rgb = decode_image(data, name, orient=False)
    return api.to_grey(rgb) if mode == "L" else rgb


def _raw_face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog") -> list:
    """dlib's detections: `mmod_rectangle`s for model "cnn", `rectangle`s otherwise (HOG)."""
    if model == "cnn":
        boxes, scores = api._cnn_detector().detect(np.asarray(img), int(number_of_times_to_upsample))
        return [mmod_rectangle(rectangle(*box), score) for box, score in zip(boxes.tolist(), scores.tolist())]
    boxes, _, _ = api._hog_detector().detect(np.asarray(img), upsample=int(number_of_times_to_upsample))
    return [rectangle(*box) for box in np.asarray(boxes).tolist()]


def face_locations(
    img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog"
) -> list[tuple[int, int, int, int]]:
    """Face boxes as (top, right, bottom, left) tuples trimmed to the image; model "hog" or "cnn"."""
    if model == "cnn":
        return [
            _trim_css_to_bounds(_rect_to_css(face.rect), img.shape)
            for face in _raw_face_locations(img, number_of_times_to_upsample, "cnn")
        ]
    return [
        _trim_css_to_bounds(_rect_to_css(face), img.shape)
        for face in _raw_face_locations(img, number_of_times_to_upsample, model)
    ]


def _raw_face_locations_batched(
    images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1, batch_size: int = 128
) -> list[list[mmod_rectangle]]:
    """CNN detections for each image (a list of `mmod_rectangle` lists), `batch_size` images per network call."""
    detector = api._cnn_detector()
    images = [np.asarray(image) for image in images]
    batch_size = max(1, int(batch_size))
    results: list[list[mmod_rectangle]] = [[] for _ in images]
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():  # one network call needs images of one size
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            found = detector.detect_batch([images[i] for i in chunk], int(number_of_times_to_upsample))
            for i, (boxes, scores) in zip(chunk, found, strict=True):
                results[i] = [mmod_rectangle(rectangle(*b), s) for b, s in zip(boxes.tolist(), scores.tolist())]
    return results


def batch_face_locations(
    images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1, batch_size: int = 128
) -> list[list[tuple[int, int, int, int]]]:
    """CNN face boxes per image, css tuples trimmed to the first image's size (as face_recognition)."""
    raw = _raw_face_locations_batched(images, number_of_times_to_upsample, batch_size)
    return [[_trim_css_to_bounds(_rect_to_css(face.rect), images[0].shape) for face in faces] for faces in raw]


def _raw_face_landmarks(
    face_image: np.ndarray, face_locations: Sequence[Sequence[int]] | None = None, model: str = "large"
) -> list[full_object_detection]:
    """dlib's shapes: 68 points unless model == "small" (5 points); faces found by HOG when no locations."""
    found = face_locations is None
    rects = _raw_face_locations(face_image) if found else [_css_to_rect(css) for css in face_locations]
    points = api.landmarks(np.asarray(face_image), _rectangle_rows(rects), model=5 if model == "small" else 68)
    return _detections(points, rects)


def face_landmarks(
    face_image: np.ndarray | None = None,
    face_locations: Sequence[Sequence[int]] | None = None,
    model: str = "large",
    landmark_points: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[dict[str, list[tuple[int, int]]]]:
    """A dict of feature points per face: chin, eyebrows, nose, eyes, lips ("large": 68-point model,
    non-commercial licence) or nose_tip, left_eye, right_eye ("small": 5-point model)."""
    if landmark_points is None:
        raw = _raw_face_landmarks(face_image, face_locations, model)
        landmarks_as_tuples = [[(p.x, p.y) for p in shape.parts()] for shape in raw]
    else:
        landmarks_as_tuples = landmark_points
    if model == "large":
        return [
            {
                "chin": points[0:17],
                "left_eyebrow": points[17:22],
                "right_eyebrow": points[22:27],
                "nose_bridge": points[27:31],
                "nose_tip": points[31:36],
                "left_eye": points[36:42],
                "right_eye": points[42:48],
                "top_lip": list(points[48:55]) + [points[i] for i in (64, 63, 62, 61, 60)],
                "bottom_lip": list(points[54:60]) + [points[i] for i in (48, 60, 67, 66, 65, 64)],
            }
            for points in landmarks_as_tuples
        ]
    if model == "small":
        return [
            {"nose_tip": [points[4]], "left_eye": points[2:4], "right_eye": points[0:2]}
            for points in landmarks_as_tuples
        ]
    raise ValueError("Invalid landmarks model type. Supported models are ['small', 'large'].")


_jitter_lock = threading.Lock()
_jitter_rng: DlibRand | None = None  # dlib's per-model generator: created at first use, then continued


def _reset_jitter_generator() -> None:
    """Start the jitter generator afresh, as a newly loaded dlib model (for tests)."""
    global _jitter_rng
    with _jitter_lock:
        _jitter_rng = None


def face_encodings(
    face_image: np.ndarray,
    known_face_locations: Sequence[Sequence[int]] | None = None,
    num_jitters: int = 1,
    model: str = "small",
    landmark_points: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[np.ndarray]:
    """A (128,) float64 encoding per face; faces found by HOG when no locations are given. model
    "small" aligns with 5 landmarks, anything else with 68 (non-commercial licence)."""
    global _jitter_rng
    if landmark_points is None:
        shapes = _raw_face_landmarks(face_image, known_face_locations, model)
    else:
        shapes = [
            full_object_detection(_css_to_rect(css), [point(*p) for p in points])
            for css, points in zip(known_face_locations, landmark_points)
        ]
    image = np.asarray(face_image)
    chips = [extract_face_chips(image, np.array([[(p.x, p.y) for p in s.parts()]], np.int64)) for s in shapes]
    if not chips:
        return []
    chips_array = np.concatenate(chips)
    embed = api._embedder().embed_chips
    if num_jitters > 1:
        with _jitter_lock:
            _jitter_rng = _jitter_rng or DlibRand()
            vectors = jittered_descriptors(embed, chips_array, int(num_jitters), _jitter_rng)
    else:
        vectors = embed(chips_array)
    return [np.array(v, dtype=np.float64) for v in vectors]


def compare_faces(known_face_encodings: Any, face_encoding_to_check: Any, tolerance: float = 0.6) -> list:
    """True for each known encoding within `tolerance` of `face_encoding_to_check` (numpy bools)."""
    return list(face_distance(known_face_encodings, face_encoding_to_check) <= tolerance)
