"""dlib's ``num_jitters``: descriptors averaged over randomly cropped, rotated, scaled and flipped chips.

``face_recognition_model_v1.compute_face_descriptor(img, shape, num_jitters)`` (dlib 20.0.1,
``tools/python/src/face_recognition.cpp``) with ``num_jitters > 1`` runs the network on
``num_jitters`` copies of the 150x150 chip, each made by ``dlib::jitter_image``
(``dlib/image_transforms/interpolation.h``), and returns the mean descriptor. One jitter draws from a
``dlib::rand`` (a Mersenne twister, mt19937, seeded 5489 and advanced 10,000 steps on construction):

* a translation of up to ±2% of the 144x144 inner rectangle (the chip shrunk by 3 px), rounded to
  whole pixels,
* a scale: the crop is ``floor(144 / s)`` pixels square with ``s`` in [0.97, 0.99999),
* a rotation of up to ±3 degrees,
* a left-right flip with probability 1/2;

then cuts a 150x150 chip at that rectangle and angle with dlib's ``extract_image_chip`` (bilinear).

This module re-implements all of it: the same generator, the same draws in the same order and the
same pixel arithmetic, so the jittered chips are pixel-identical to dlib's and the averaged
descriptor matches dlib's to the embedder's precision (tests/test_jitter.py compares with dlib-bin).
dlib keeps one generator per loaded model and continues it from call to call, so its jitters depend
on what was computed before in that process; here every call of :func:`jittered_descriptors` starts a
fresh generator, which equals dlib's *first* call on a freshly loaded model and makes the result
depend on the face alone (cacheable, reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .chips import extract_image_chips

__all__ = ["DlibRand", "extract_rotated_chip", "jitter_chip", "jitter_chips", "jittered_descriptors"]

MAX_ROTATION_DEGREES = 3.0
MIN_OBJECT_HEIGHT = 0.97
MAX_OBJECT_HEIGHT = 0.99999
TRANSLATE_AMOUNT = 0.02
MT19937_DEFAULT_SEED = 5489
_MAX_VAL = float(0xFFFFFF) * 0x1000000 + 0xFFFFFF + 0.05  # dlib::rand::max_val


class DlibRand:
    """``dlib::rand`` default-constructed: mt19937 seeded 5489, then 10,000 outputs discarded.

    numpy's legacy ``RandomState(seed)`` is seeded by the same ``init_genrand`` as C++'s and
    boost's mt19937, and a full-range uint32 draw consumes exactly one output of the twister.
    """

    def __init__(self) -> None:
        self._mt = np.random.RandomState(MT19937_DEFAULT_SEED)
        self.next_uint32(10_000)

    def next_uint32(self, count: int = 1) -> np.ndarray:
        return self._mt.randint(0, 2**32, size=count, dtype=np.uint64)

    def random_double(self) -> float:
        """``get_random_double``: 48 random bits / (2^48 − 1 + 0.05), in [0, 1)."""
        high, low = (int(v) & 0xFFFFFF for v in self.next_uint32(2))
        value = (float(high) * 0x1000000 + low) / _MAX_VAL
        return value if value < 1.0 else 1.0 - np.finfo(np.float64).eps

    def double_in_range(self, begin: float, end: float) -> float:
        return begin + self.random_double() * (end - begin)


def _round_point(value: float) -> int:
    """dlib's double -> long point conversion: floor(x + 0.5)."""
    return math.floor(value + 0.5)


def jitter_parameters(size: int, rng: DlibRand) -> tuple[np.ndarray, float, bool]:
    """One jitter's crop rectangle [l, t, r, b] (integers, as dlib's ``rectangle``), angle (rad), flip.

    The draws come in dlib's order as compiled by GCC for the dlib-bin wheels: the two translation
    arguments of ``dpoint(x, y)`` are evaluated right to left (y first), then scale, angle, flip.
    """
    left = top = 3
    right = bottom = size - 1 - 3  # shrink_rect(get_rect(img), 3)
    width = height = right - left + 1
    ty = _round_point(rng.double_in_range(-TRANSLATE_AMOUNT, TRANSLATE_AMOUNT) * height)
    tx = _round_point(rng.double_in_range(-TRANSLATE_AMOUNT, TRANSLATE_AMOUNT) * width)
    scale = rng.double_in_range(MIN_OBJECT_HEIGHT, MAX_OBJECT_HEIGHT)
    box = int(height / scale)  # long box_size = rect.height() / scale: truncation
    cx = (left + right + 1) // 2 + tx  # center(rect) + translation
    cy = (top + bottom + 1) // 2 + ty
    crop_left, crop_top = cx - box // 2, cy - box // 2  # centered_rect
    rect = np.array([crop_left, crop_top, crop_left + box - 1, crop_top + box - 1], dtype=np.float64)
    angle = rng.double_in_range(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * math.pi / 180
    flip = rng.random_double() > 0.5
    return rect, angle, flip


def extract_rotated_chip(image: np.ndarray, rect: np.ndarray, angle: float, size: int) -> np.ndarray:
    """dlib's ``extract_image_chip(img, chip_details(rect, chip_dims(size, size), angle))``, bilinear."""
    return extract_image_chips(image, np.asarray(rect, np.float64).reshape(1, 4), np.array([angle]), size)[0]


def jitter_chip(chip: np.ndarray, rng: DlibRand) -> np.ndarray:
    """``dlib::jitter_image(chip, rnd)``: one randomly cropped, rotated, scaled and maybe flipped copy."""
    chip = np.asarray(chip)
    if chip.ndim != 3 or chip.shape[0] != chip.shape[1] or chip.shape[2] != 3 or chip.dtype != np.uint8:
        raise ValueError(f"jitter needs a square (S,S,3) uint8 RGB chip, got {chip.shape} {chip.dtype}")
    rect, angle, flip = jitter_parameters(chip.shape[0], rng)
    crop = extract_rotated_chip(chip, rect, angle, chip.shape[0])
    return np.ascontiguousarray(crop[:, ::-1]) if flip else crop


def jitter_chips(chip: np.ndarray, num_jitters: int, rng: DlibRand | None = None) -> np.ndarray:
    """``num_jitters`` jittered copies of one chip, (num_jitters, S, S, 3); a fresh generator by default."""
    rng = DlibRand() if rng is None else rng
    return np.stack([jitter_chip(chip, rng) for _ in range(int(num_jitters))])


def jittered_descriptors(
    embed_chips: Callable[[np.ndarray], np.ndarray], chips: np.ndarray, num_jitters: int, rng: DlibRand | None = None
) -> np.ndarray:
    """Descriptors as dlib's ``compute_face_descriptor(..., num_jitters)``: (N,128) float32.

    ``num_jitters`` <= 1: the chips' own descriptors (dlib does not jitter then either). Otherwise each
    face's descriptor is the mean over ``num_jitters`` jittered copies, each face with a fresh generator,
    or, when ``rng`` is given, all faces drawing from it in turn (as one dlib model does across calls).
    """
    chips = np.asarray(chips)
    if num_jitters <= 1 or len(chips) == 0:
        return embed_chips(chips)
    crops = np.concatenate([jitter_chips(chip, num_jitters, rng) for chip in chips])
    descriptors = embed_chips(crops).reshape(len(chips), int(num_jitters), -1)
    return descriptors.mean(axis=1, dtype=np.float32)
