"""`FaceBatch`: one frame's faces as arrays, the one container of a frame's faces from the detector to the sink.

A face batch is arrays, not a list of objects (in the manner of supervision's `Detections`): row i of every
column is face i. `engines.faces.FaceAnalyzer` makes one; the pipeline's faces and descriptors messages
carry one (pipeline/runtime/messages.py) from the detect worker through the embed worker to the sink, whose
per-frame faces are a subclass with the tracker's and the gallery's columns (pipeline/sinks/records.py).
Only numpy here: every stage process imports it with the messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

QUALITY_COLUMN_COUNT = 3  # engines.quality.QUALITY_COLUMNS: face width, sharpness, detector score

# Where a face's box came from (`FaceBatch.box_source`; the codes travel on the pipeline's wire, except CARRIED).
BOX_SCAN = 0  # a full-frame detector run on this very frame
BOX_REGION = 1  # region detection around a followed face, on this very frame
BOX_CARRIED = 2  # the tracker's prediction, no detector ran for it on this frame (the sink's, never sent)


def _empty(*shape: int, dtype: type = np.float32) -> Callable[[], np.ndarray]:
    """A column's default factory: no rows of `shape`."""
    return lambda: np.zeros((0, *shape), dtype)


@dataclass
class FaceBatch:
    """One frame's faces as arrays, row i of every column face i. A column left empty (length 0 while the
    batch has faces) was not computed, e.g. ``chips`` after the embed stage, ``descriptors`` before it."""

    boxes: np.ndarray = field(default_factory=_empty(4, dtype=np.int64))  # (N,4) int64 [l, t, r, b], inclusive
    scores: np.ndarray = field(default_factory=_empty(dtype=np.float64))  # (N,) float64 (or 32) detector confidence
    landmarks: np.ndarray = field(default_factory=_empty(5, 2, dtype=np.int64))  # (N,5,2) [x, y]
    chips: np.ndarray = field(default_factory=_empty(150, 150, 3, dtype=np.uint8))  # (N,150,150,3) RGB
    descriptors: np.ndarray = field(default_factory=_empty(128))  # (N,128) float32; NaN rows where ``embed`` is 0
    quality: np.ndarray = field(default_factory=_empty(QUALITY_COLUMN_COUNT))  # (N,k) float32, quality's columns
    box_source: np.ndarray = field(default_factory=_empty(dtype=np.uint8))  # (N,) uint8 BOX_* codes
    embed: np.ndarray = field(default_factory=_empty(dtype=np.uint8))  # (N,) uint8 1: embed it / its descriptor is set
    track_ids: np.ndarray | None = None  # (N,) int64 once a tracker ran

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, rows: np.ndarray) -> FaceBatch:
        """The faces at `rows`, every column alike (a column left empty stays empty), as the same class."""
        count = len(self)
        columns = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return type(self)(**{
            name: value[rows] if value is not None and len(value) == count else value
            for name, value in columns.items()
        })  # fmt: skip

    def to_records(self) -> list[dict]:
        """JSON-ready dicts, one per face (no chips)."""
        records = []
        for i in range(len(self)):
            record = {"box": [int(v) for v in self.boxes[i]], "score": float(self.scores[i])}
            if len(self.landmarks):
                record["landmarks"] = self.landmarks[i].tolist()
            if len(self.descriptors):
                record["embedding"] = [float(v) for v in self.descriptors[i]]
            records.append(record)
        return records
