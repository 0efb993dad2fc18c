"""The gallery behind the small interface the sink needs (`Matcher`: identify, refresh, close).

`GalleryMatcher` opens `enroll.gallery.Gallery` once its file exists and picks up enrolments and removals
when refreshed (the sink process refreshes every ``pipeline.gallery_refresh_s``), so a running pipeline sees
them without a restart; `NullMatcher` answers "unknown" for every face.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import Config, GalleryConfig

log = logging.getLogger(__name__)


class Matcher(Protocol):
    """What the sink needs of the gallery: `identify` descriptors, `refresh` to pick up enrolments, `close`."""

    def identify(self, descriptors: np.ndarray) -> Any: ...  # .identities (list[str]), .distances (N,)

    def refresh(self) -> bool: ...

    def close(self) -> None: ...


class NullMatcher:
    """No gallery: every face is unknown (distance NaN)."""

    def identify(self, descriptors: np.ndarray) -> Any:
        """Every face unknown."""
        from ...enroll.matching import Matches

        return Matches.empty(len(descriptors))

    def refresh(self) -> bool:
        """Nothing to pick up."""
        return False

    def close(self) -> None:
        """Nothing to close."""
        pass


class GalleryMatcher:
    """`enroll.gallery.Gallery`, opened read-only in spirit (the sink never writes it), once the file exists."""

    def __init__(self, path: Path, section: GalleryConfig) -> None:
        self.path, self.section = path, section
        self.gallery: Any = None
        self.people_count = 0
        self._open()
        if self.gallery is None:
            log.warning(
                "no gallery at %s yet: every face is unknown until people are enrolled there "
                "(facestream enroll import DIR --gallery %s); it is picked up while running",
                path,
                path,
            )

    def _open(self) -> None:
        if self.gallery is None and self.path.is_file():
            from ...enroll.gallery import Gallery

            # One faiss thread: the cores belong to the detectors. The index is not saved from here.
            self.gallery = Gallery.from_config(self.section, path=self.path, threads=1, save_index=False)
            self.people_count = len(self.gallery.people())
            log.info("gallery %s: %d people", self.path, self.people_count)

    def identify(self, descriptors: np.ndarray) -> Any:
        """Each descriptor's match (identity or unknown, distance, runner-up); unknown until the gallery exists."""
        if self.gallery is None:
            return NullMatcher().identify(descriptors)
        return self.gallery.identify(descriptors)

    def refresh(self) -> bool:
        """Open the gallery once its file exists, then pick up changes; True when something changed."""
        if self.gallery is None:
            self._open()
            return self.gallery is not None
        changed = bool(self.gallery.refresh())
        if changed:
            self.people_count = len(self.gallery.people())
        return changed

    def close(self) -> None:
        """Close the gallery, if open."""
        if self.gallery is not None:
            self.gallery.close()


def open_matcher(config: Config, path: str | None) -> Matcher:
    """The matcher for `--gallery PATH` (else `gallery.path` of the config); GalleryError if it is unusable."""
    return GalleryMatcher(Path(path or config.gallery.path or "gallery.db").expanduser(), config.gallery)
