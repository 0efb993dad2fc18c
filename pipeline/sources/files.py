"""File sources, lossless and in order: a video file or an image folder (or a single image) read frame by frame."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ...engines.imageio import ImageError, read_image, to_rgb8
from ..config import Config
from .spec import IMAGE_SUFFIXES, SourceError, SourceSpec, list_images

log = logging.getLogger(__name__)


class CaptureLike(Protocol):
    """What the sources need of cv2.VideoCapture (tests pass stand-ins with the same methods)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's names)

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


class FrameReader(Protocol):
    """A lossless file source: `read` gives (RGB frame, timestamp) or None at the end."""

    fps: float

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next (RGB frame, timestamp in seconds), or None when the source is exhausted."""

    def close(self) -> None:
        """Release the file."""


class VideoFileReader:
    """Frames of a video file as (H,W,3) uint8 RGB with their timestamps (seconds from the first frame)."""

    def __init__(
        self, path: str, max_frames: int = 0, capture_factory: Callable[[str], CaptureLike] = cv2.VideoCapture
    ):
        self.path = path
        if not Path(path).exists():
            raise SourceError(f"{path}: no such file")
        self.capture = capture_factory(path)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(f"{path}: cannot open as a video (not a video file, or a codec OpenCV lacks)")
        fps = float(self.capture.get(cv2.CAP_PROP_FPS))
        self.fps = fps if fps > 0 else 25.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.max_frames = max_frames
        self.index = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next decoded frame (RGB) and its timestamp, None at the end or at `max_frames`."""
        if self.max_frames and self.index >= self.max_frames:
            return None
        ok, frame = self.capture.read()
        if not ok or frame is None:
            if self.index == 0:
                raise SourceError(f"{self.path}: no frame could be decoded (a video with no frames, truncated, "
                                  "or a codec OpenCV lacks)")  # fmt: skip
            if self.frame_count is not None and self.index < self.frame_count - 1:
                log.warning(
                    "%s: decoding stopped at frame %d of %d (truncated or corrupt file)",
                    self.path,
                    self.index,
                    self.frame_count,
                )
            return None
        # The decoder's position is the truth for variable-frame-rate files; some backends leave it at 0.
        position = float(self.capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        timestamp = position if position > 0 or self.index == 0 else self.index / self.fps
        self.index += 1
        return to_rgb8(frame), timestamp

    def close(self) -> None:
        """Release the decoder."""
        self.capture.release()


class ImageFolderReader:
    """Image files in natural order; an unreadable one is logged and skipped (frame indices stay contiguous)."""

    def __init__(self, paths: list[Path], fps: float, max_pixels: int, max_frames: int = 0, name: str = "") -> None:
        self.paths = paths[:max_frames] if max_frames else paths
        self.fps = fps
        self.max_pixels = max_pixels
        self.position = 0
        self.index = 0
        self.skipped: list[str] = []
        self.name = name

    @classmethod
    def open(cls, spec: SourceSpec, config: Config) -> ImageFolderReader:
        """The reader of an image folder, or of a single image, with `sources.image_fps` timestamps."""
        fps, max_pixels = float(config.sources.image_fps), int(config.detector.max_image_pixels)
        max_frames = int(config.sources.max_frames)
        path = Path(spec.uri.removeprefix("file://"))
        if spec.kind == "image":
            if not path.is_file():
                raise SourceError(f"{path}: no such file")
            return cls([path], fps, max_pixels, name=str(path))
        try:
            paths = list_images(path)
        except OSError as error:
            raise SourceError(f"{path}: cannot list the folder: {error.strerror or error}") from None
        if not paths:
            raise SourceError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return cls(paths, fps, max_pixels, max_frames, str(path))

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next image that decodes (an unreadable one is logged and skipped), None at the end."""
        while self.position < len(self.paths):
            path = self.paths[self.position]
            self.position += 1
            try:
                image = read_image(path, self.max_pixels)
            except ImageError as error:
                log.error("%s: skipped: %s", self.name, error)
                self.skipped.append(str(error))
                continue
            timestamp = self.index / self.fps
            self.index += 1
            return image, timestamp
        if self.index == 0 and len(self.paths) == 1:
            raise SourceError(self.skipped[-1] if self.skipped else f"{self.name}: unreadable")
        if self.index == 0 and self.skipped:  # not one frame: the stream failed (exit 1), it did not just end
            raise SourceError(f"{self.name}: none of its {len(self.skipped)} image files could be read "
                              f"(the last: {self.skipped[-1]})")  # fmt: skip
        return None

    def close(self) -> None:
        """Nothing to release: each image is read whole."""
        pass


def open_file_reader(spec: SourceSpec, config: Config) -> FrameReader:
    """The FrameReader for a file source (video file, image folder or single image)."""
    if spec.kind == "video":
        return VideoFileReader(spec.uri.removeprefix("file://"), int(config.sources.max_frames))
    return ImageFolderReader.open(spec, config)
