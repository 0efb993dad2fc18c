"""Face quality figures for a batch of faces: how big, how sharp, how confident.

Columns of the (N, 3) float32 array `face_quality` returns; every stage that gates on quality
(enrolment, the tracker's identity vote) reads them by these names.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_WIDTH = 0  # box width in image pixels (dlib's inclusive rectangles: right - left + 1)
SHARPNESS = 1  # variance of the 4-neighbour Laplacian of the grey 150x150 chip (low = blurred or upscaled)
DETECTOR_SCORE = 2  # the detector's confidence
QUALITY_COLUMNS = ("face_width", "sharpness", "detector_score")
CHIP_SIZE = 150


def chip_sharpness(face_chips: np.ndarray) -> np.ndarray:
    """(N,150,150,3) uint8 RGB -> (N,) float32 variance of the Laplacian of each grey chip.

    Measured on the chip, not the frame: chips are all 150x150, so a small face upscaled into its
    chip scores low too, which is what an identity decision wants. Equals
    `cv2.Laplacian(grey, cv2.CV_64F)[1:-1, 1:-1].var()` with `grey = cv2.cvtColor(chip, RGB2GRAY)`
    (the border, which OpenCV reflects, is left out).
    """
    chips = np.asarray(face_chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
        raise ValueError(f"chips must be (N,{CHIP_SIZE},{CHIP_SIZE},3) uint8, got {chips.shape} {chips.dtype}")
    count = len(chips)
    if count == 0:
        return np.zeros(0, np.float32)
    # One cvtColor call for the whole batch: the chips stacked as one tall image.
    stacked = np.ascontiguousarray(chips).reshape(count * CHIP_SIZE, CHIP_SIZE, 3)
    grey = cv2.cvtColor(stacked, cv2.COLOR_RGB2GRAY).reshape(count, CHIP_SIZE, CHIP_SIZE).astype(np.int32)
    centre = grey[:, 1:-1, 1:-1]
    laplacian = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4 * centre
    return laplacian.reshape(count, -1).var(axis=1).astype(np.float32)


def face_quality(face_chips: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 3) float32: face width, sharpness, detector score (see the column constants)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    if len(boxes) != len(face_chips):
        raise ValueError(f"{len(face_chips)} chips but {len(boxes)} boxes")
    quality = np.zeros((len(boxes), len(QUALITY_COLUMNS)), np.float32)
    quality[:, FACE_WIDTH] = boxes[:, 2] - boxes[:, 0] + 1
    quality[:, SHARPNESS] = chip_sharpness(face_chips)
    quality[:, DETECTOR_SCORE] = np.asarray(scores, np.float32).reshape(-1)
    return quality
