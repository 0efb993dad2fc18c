"""Annotated frames: each face's box, then its name, distance and track id in a label placed inside the frame
and off the other faces (`draw_faces`, `place_labels`). The annotated video, the live window and the web
view's preview all show these frames."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..domain.tracker import UNKNOWN
from .records import FrameResult

_GREEN, _RED, _YELLOW, _WHITE, _BLACK = (40, 200, 40), (40, 40, 230), (0, 200, 230), (255, 255, 255), (0, 0, 0)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Overlapping area of two (left, top, right, bottom) rectangles (exclusive right/bottom)."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(boxes: list[tuple[int, int, int, int]], sizes: list[tuple[int, int]], frame_width: int,
                 frame_height: int) -> list[tuple[int, int, int, int]]:  # fmt: skip
    """Where each box's label goes: (left, top, right, bottom), exclusive, always inside the frame.

    Tried in order: above the box, below it, inside its top edge; each shifted into the frame. The first
    that covers no other box and no label already placed wins; else the one that covers the least."""
    placed: list[tuple[int, int, int, int]] = []
    for i, ((left, top, _right, bottom), (width, height)) in enumerate(zip(boxes, sizes)):
        width, height = min(width, frame_width), min(height, frame_height)
        x = min(max(0, left), frame_width - width)
        candidates = []
        for y in (top - height - 1, bottom + 2, top + 2):
            y = min(max(0, y), frame_height - height)
            candidates.append((x, y, x + width, y + height))
        others = [(b[0], b[1], b[2] + 1, b[3] + 1) for j, b in enumerate(boxes) if j != i] + placed

        def covered(rect: tuple[int, int, int, int], others: list = others) -> int:
            return sum(_overlap(rect, other) for other in others)

        placed.append(min(candidates, key=lambda rect: (covered(rect) > 0, covered(rect))))
    return placed


def draw_faces(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """A BGR copy of the RGB `image` with each face's box, then its name, distance and track id in a label
    kept inside the frame and off the other faces where there is room (`place_labels`)."""
    canvas = np.ascontiguousarray(image[:, :, ::-1])
    scale = max(0.4, min(1.0, image.shape[0] / 720))
    labels, sizes, boxes = [], [], []
    faces = result.faces
    for i in range(len(faces)):
        left, top, right, bottom = (int(v) for v in faces.boxes[i])
        identity, decided = faces.identities[i], not math.isnan(faces.distances[i])  # NaN: undecided
        known = identity != UNKNOWN
        colour = _GREEN if known else (_RED if decided else _YELLOW)
        cv2.rectangle(canvas, (left, top), (right, bottom), colour, 2 if math.isfinite(faces.scores[i]) else 1)
        distance = f" {faces.distances[i]:.2f}" if decided else ""
        label = f"{identity}{distance} #{int(faces.track_ids[i])}"
        (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        labels.append((label, colour, _BLACK if known else _WHITE, height, baseline))
        sizes.append((width + 3, height + baseline + 3))
        boxes.append((left, top, right, bottom))
    places = place_labels(boxes, sizes, canvas.shape[1], canvas.shape[0])
    for (label, colour, ink, height, _), (x0, y0, x1, y1) in zip(labels, places):
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, cv2.FILLED)
        cv2.putText(canvas, label, (x0 + 1, y0 + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
    return canvas
