"""The sink's files and window: JSON lines written one whole line per write (``--events``, ``--detections``),
the annotated video (``--output FILE``, mp4v; several streams: ``FILE`` becomes ``STEM-<stream>.SUFFIX`` per
stream, `video_paths`) and the live window (``--show``, `LiveWindow`). A full disk is a PipelineError that
names the file; what was written before stays valid (whole lines, a playable video)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..runtime.stages import PipelineError
from .records import json_line


class JsonLines:
    """A JSON-lines file written one whole line per write(2): no userspace buffer to lose, no half line from
    a buffered flush, so a process that stops in Python (an exception, SIGTERM, Ctrl-C) leaves only complete
    lines. SIGKILL is the exception the kernel makes: Linux copies a write page by page and gives up at a
    fatal signal, so a line crossing a page boundary can be cut there; every line before it is whole, and
    facestream's readers skip a last line without its newline."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.lines = 0
        self.bytes = 0

    def write(self, record: dict[str, Any]) -> bytes:
        """Append one line. A full disk (or any write error) is a PipelineError naming the file; a line that did
        not fit is cut off again, so the file keeps only whole, valid lines."""
        line = json_line(record)
        if self.fd is not None:
            view = memoryview(line)
            start = self.bytes
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as error:
                try:
                    os.ftruncate(self.fd, start)  # remove the partial line
                except OSError:
                    pass
                full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                what = "the disk is full" if full else (error.strerror or str(error))
                raise PipelineError(
                    f"{self.path}: cannot write ({what}); the {self.lines} lines written so far are kept and valid"
                ) from None
            self.bytes = start + len(line)
            self.lines += 1
        return line

    def close(self) -> None:
        """Close the file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class VideoOutput:
    """An annotated video file, opened at the first frame (its size); later frames of another size are resized.

    OpenCV's writer does not report a full disk, so the free space is checked before each frame: below
    `reserve_bytes` (at least two raw frames) the video is closed while its index still fits, and a
    PipelineError says so. The file then holds every frame written so far and stays playable.
    """

    reserve_bytes = 1 << 20

    def __init__(self, path: Path, fps: float, codec: str = "mp4v") -> None:
        self.path, self.fps, self.codec = path, fps, codec
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        """Append an annotated frame, opening the writer at the first one; stops on a full disk."""
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = (bgr.shape[1], bgr.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
            if not self.writer.isOpened():
                self.writer = None
                raise PipelineError(f"{self.path}: cannot write a {self.codec} video here")
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
        disk = os.statvfs(self.path.parent)
        if disk.f_bavail * disk.f_frsize < max(self.reserve_bytes, 2 * bgr.nbytes):
            self.close()
            raise PipelineError(f"{self.path}: cannot write (the disk is full); the {self.frames} frames written "
                                "so far are kept and the video is playable")  # fmt: skip
        self.writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        """Finish the video file."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def video_paths(path: str, stream_ids: list[str]) -> dict[str, Path]:
    """One output video per stream: the path itself for one stream, STEM-<stream>.SUFFIX for several."""
    base = Path(path)
    if len(stream_ids) == 1:
        return {stream_ids[0]: base}
    return {sid: base.with_name(f"{base.stem}-{sid}{base.suffix or '.mp4'}") for sid in stream_ids}


class LiveWindow:
    """`--show`: one OpenCV window per stream; q or Esc asks the run to stop."""

    def __init__(self) -> None:
        self.quit = False
        self.opened: set[str] = set()

    def show(self, stream_id: str, bgr: np.ndarray) -> None:
        """Show a stream's annotated frame in its window (--show)."""
        if stream_id not in self.opened:
            cv2.namedWindow(stream_id, cv2.WINDOW_NORMAL)
            self.opened.add(stream_id)
        cv2.imshow(stream_id, bgr)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit = True

    def close(self) -> None:
        """Close every window."""
        if self.opened:
            cv2.destroyAllWindows()
