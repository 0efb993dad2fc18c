"""Decoded model arrays kept as ``.npz`` files in facestream's cache, keyed by the model file's sha256.

Decoding dlib's float encoding is slow in Python (the 68-point predictor: ~16 million values) and the HOG
detector's would need numba, whose import alone costs ~0.5 s; reading the arrays back costs milliseconds.
An entry is used only when its sha256 and format version match; anything unreadable counts as missing.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_arrays", "save_arrays"]


def load_arrays(path: Path, digest: str, format_version: int, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays `names` of the entry at `path`, or None if it is missing, unreadable, foreign or stale."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["sha256"]) != digest or int(archive["format"]) != format_version:
                return None
            return {name: archive[name] for name in names}
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


def save_arrays(path: Path, digest: str, format_version: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename) so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, sha256=np.array(digest), format=np.array(format_version), **arrays)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
