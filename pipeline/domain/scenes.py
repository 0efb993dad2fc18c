"""Scene cuts: a small grey thumbnail of each frame and the mean difference between consecutive ones.

Pure functions shared by the sources (detect-every: a cut forces detection) and the detect worker's
followers (pipeline/domain/follow.py: a cut forces a scan); a module of its own so that neither imports the other.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL_SIZE = (64, 36)  # (width, height): enough to see a cut, cheap to compare (~0.1 ms a frame)


def frame_thumbnail(image: np.ndarray) -> np.ndarray:
    """A small grey float32 picture of an RGB frame, for `scene_changed`."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)


def scene_changed(previous: np.ndarray | None, current: np.ndarray, threshold: float) -> bool:
    """True when two consecutive thumbnails differ by more than `threshold` grey levels on average (a cut).
    Demo clip: its three cuts 27.7-30.5, motion within a shot at most 13.6."""
    if previous is None or threshold <= 0 or previous.shape != current.shape:
        return False
    return float(np.abs(current - previous).mean()) > threshold
