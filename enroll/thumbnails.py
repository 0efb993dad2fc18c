"""Face thumbnails of gallery samples: one small PNG per sample, in a private folder beside the gallery.

The gallery stores descriptors, not images; a person's thumbnails are what lets an operator check who a
sample really is (the web view shows them). They are written when a sample is enrolled (a photo through
`enrol_image`, an unknown track's face chip from the web view) and deleted with the sample. Face images are
biometric data: the folder is 0700 and every file 0600, like the gallery itself.

The folder belongs to one database: sample ids restart at 1 in a new gallery, so a folder left behind by a
deleted gallery would show its faces as the new gallery's samples. The folder's ``.gallery`` file holds the
uuid of the database that owns it; thumbnails are shown only when it names this gallery, and a folder owned
by another (or by nobody) is emptied before the first thumbnail of this one is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

THUMBNAIL_SIZE = 150  # px, the longer side; the same size as a face chip


def thumbnails_dir(gallery_path: str | Path) -> Path:
    """``<gallery>.thumbs``: beside the database, so a copied gallery keeps its thumbnails next to it."""
    return Path(str(gallery_path) + ".thumbs")


def face_thumbnail(image_rgb: np.ndarray, box: Iterable[int], size: int = THUMBNAIL_SIZE) -> bytes | None:
    """PNG of the face in `box` (dlib's inclusive [left, top, right, bottom]) with a quarter of its width
    around it, the longer side scaled to `size`; None when the box lies outside the image."""
    left, top, right, bottom = (int(v) for v in box)
    pad = (right - left + 1) // 4
    height, width = image_rgb.shape[:2]
    x0, y0 = max(0, left - pad), max(0, top - pad)
    x1, y1 = min(width, right + 1 + pad), min(height, bottom + 1 + pad)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = image_rgb[y0:y1, x0:x1]
    scale = size / max(crop.shape[:2])
    shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if crop.ndim == 3:
        crop = crop[:, :, ::-1]  # OpenCV writes BGR
    ok, png = cv2.imencode(".png", np.ascontiguousarray(crop))
    return png.tobytes() if ok else None


OWNER_FILE = ".gallery"


class Thumbnails:
    """The thumbnail folder of one gallery: ``<sample id>.png`` files, and ``.gallery`` naming the owner."""

    def __init__(self, folder: str | Path, owner: str | None = None) -> None:
        """`owner`: the uuid of the gallery database (None: any folder is taken as it is, for old callers)."""
        self.folder = Path(folder)
        self.owner = owner

    def path(self, sample_id: int) -> Path:
        return self.folder / f"{int(sample_id)}.png"

    def _owned(self) -> bool:
        if self.owner is None:
            return True
        try:
            return (self.folder / OWNER_FILE).read_text(encoding="utf-8").strip() == self.owner
        except (OSError, UnicodeDecodeError):
            return False

    def adopt(self) -> None:
        """Claim a folder that names no owner (kept by a gallery from before owners were recorded); used
        when an existing gallery is opened, never for a new one."""
        if self.owner is None or not self.folder.is_dir() or (self.folder / OWNER_FILE).exists():
            return
        try:
            self._write_owner()
        except OSError:
            pass  # read-only: the thumbnails are shown anyway once it can be written

    def _write_owner(self) -> None:
        marker = self.folder / OWNER_FILE
        partial = marker.with_name(OWNER_FILE + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(str(self.owner))
        os.replace(partial, marker)

    def _claim(self) -> None:
        """Make the folder this gallery's: another gallery's thumbnails are deleted first."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        if self._owned():
            return
        for stale in self.folder.iterdir():
            if stale.name.endswith((".png", ".partial")) and stale.is_file():
                stale.unlink(missing_ok=True)
        self._write_owner()

    def save(self, sample_id: int, png: bytes) -> None:
        """Write (or replace) one sample's thumbnail, owner-only, atomically; nothing is left behind when
        the write fails (a full disk)."""
        self._claim()
        final = self.path(sample_id)
        partial = final.with_suffix(".png.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(png)
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def read(self, sample_id: int) -> bytes | None:
        if not self._owned():
            return None
        try:
            return self.path(sample_id).read_bytes()
        except OSError:
            return None

    def available(self, sample_ids: Iterable[int]) -> list[int]:
        """Those of `sample_ids` that have a thumbnail, in the order given."""
        if not self.folder.is_dir() or not self._owned():
            return []
        present = {p.name for p in self.folder.iterdir()}
        return [int(i) for i in sample_ids if f"{int(i)}.png" in present]

    def remove(self, sample_ids: Iterable[int]) -> int:
        if not self._owned():
            return 0
        removed = 0
        for sample_id in sample_ids:
            try:
                self.path(sample_id).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed


__all__ = ["THUMBNAIL_SIZE", "Thumbnails", "face_thumbnail", "thumbnails_dir"]
