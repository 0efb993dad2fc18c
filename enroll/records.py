"""What the gallery holds and what it accepts: the descriptor encoding (128 float32, little-endian, as 512-byte
BLOBs), the sample kinds, the records a reader gets (`Person`, `SampleArrays`, `State`), the gallery's errors, and
the checks on descriptors, names and thresholds before anything is written."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GalleryError, InputError

DIM = 128
DESCRIPTOR_DTYPE = np.dtype("<f4")  # little-endian float32 on every platform
DESCRIPTOR_BYTES = DIM * DESCRIPTOR_DTYPE.itemsize
POSITIVE = "positive"
NEGATIVE = "negative"
KINDS = (POSITIVE, NEGATIVE)
UNKNOWN = "unknown"  # the identity of an unmatched face; reserved, no person may have this name


class GalleryBusyError(GalleryError):
    """Another process holds the lock (after the busy timeout, or at once where SQLite cannot wait)."""


class GalleryNotFoundError(GalleryError):
    """A gallery opened without `create` (a read-only command) that does not exist: nothing was created."""


class UnknownPersonError(GalleryError):
    pass


class DuplicatePersonError(GalleryError):
    pass


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    created: float  # unix time
    metadata: dict[str, Any]
    threshold: float | None  # None: the gallery's distance_threshold applies
    samples: int  # positive samples
    negatives: int  # negative examples ("this face is NOT this person")


@dataclass
class SampleArrays:
    """Samples as arrays, row i of every field is sample i (ascending id)."""

    ids: np.ndarray  # (n,) int64
    person_ids: np.ndarray  # (n,) int64
    negative: np.ndarray  # (n,) bool: True for negative examples
    descriptors: np.ndarray  # (n,128) float32

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, mask: np.ndarray) -> SampleArrays:
        return SampleArrays(self.ids[mask], self.person_ids[mask], self.negative[mask], self.descriptors[mask])


@dataclass(frozen=True)
class State:
    """What a reader needs to know whether anything changed: cheap to read (one row)."""

    revision: int
    people_revision: int
    token: str  # hex; renewed on every change


def descriptors_to_blobs(descriptors: np.ndarray) -> list[bytes]:
    array = np.ascontiguousarray(descriptors, dtype=DESCRIPTOR_DTYPE)
    return [row.tobytes() for row in array]


def blobs_to_descriptors(blobs: Sequence[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, DIM), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=DESCRIPTOR_DTYPE).reshape(-1, DIM).astype(np.float32)


def check_descriptors(descriptors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(n,128) finite float32, or ValueError: bad input is the caller's mistake, not the file's."""
    array = np.asarray(descriptors, dtype=np.float32)
    if array.ndim == 1 and array.shape[0] == DIM:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != DIM:
        raise ValueError(f"descriptors must be (n,{DIM}), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("descriptors contain NaN or infinity")
    return np.ascontiguousarray(array)


class InvalidNameError(GalleryError, ValueError):
    """A person's name that cannot be stored (empty, control or bidi characters, bytes that are not UTF-8)."""


# Bidirectional embeddings, overrides and isolates (and the marks): invisible, and they make a name read
# differently from what it is (U+202E turns "evil.gpj" into "jpg.live" on screen).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_name(name: str) -> str:
    """The name when it can be stored and shown as it is; InvalidNameError (a ValueError) saying why."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(f"a person's name must be a non-empty string, got {name!r}")
    if name != name.strip():
        raise InvalidNameError(f"a person's name must not start or end with spaces: {name!r}")
    if any("\ud800" <= c <= "\udfff" for c in name):  # how Python passes on argv bytes that are not UTF-8
        raise InvalidNameError(f"a person's name must be UTF-8 text; this one holds other bytes: {name!r}")
    for c in name:
        category = unicodedata.category(c)
        if category in ("Cc", "Co", "Cn", "Zl", "Zp") or c in _BIDI:
            kind = "bidirectional-text" if c in _BIDI else "control or unassigned"
            raise InvalidNameError(f"a person's name must not contain {kind} characters (U+{ord(c):04X}): {name!r}")
    if name.casefold() == UNKNOWN:
        raise InvalidNameError(f"{name!r} is reserved for unmatched faces")
    return name


# The largest distance threshold accepted: the data pack's faces of different people are at most 1.06
# apart (dlib's descriptors), so a threshold above 1.2 would name almost anyone as anyone.
MAX_THRESHOLD = 1.2


class ThresholdError(InputError, ValueError):
    """A distance threshold that is not a number in (0, MAX_THRESHOLD]."""


def check_threshold(threshold: float | None) -> float | None:
    """The threshold as a float (None stays None), or ThresholdError saying what is allowed."""
    if threshold is None:
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_THRESHOLD:
        raise ThresholdError(f"threshold {threshold!r} is not allowed: a distance > 0 and <= {MAX_THRESHOLD:g}")
    return value
