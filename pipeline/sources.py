"""Frame sources: video files, image folders, single images, cameras and network streams, and the source process.

`--source [ID=]URI`, any number of them, each a stream with its own id:

* a video file (anything OpenCV's FFmpeg backend decodes) and an image folder (files with an image
  suffix, in natural order: ``frame2.png`` before ``frame10.png``) are **file sources**: lossless and
  ordered. Every frame is processed; frames in flight are kept until the sink acknowledges them and are
  re-sent when a worker dies or a timeout passes (below). A single image file is a one-frame file source.
* a camera index (``0``) and an ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://`` or
  ``srt://`` URL are **live sources**: a capture thread reads as fast as the device delivers into a
  queue of ``sources.live_queue`` frames that drops its *oldest* frame when full (counted as
  ``dropped``), so latency stays bounded when the detectors fall behind; a frame goes to the detectors
  only when one is free (``pipeline.live_inflight`` frames out at once), and then the newest. A live source that stops
  delivering is reopened with exponential back-off (``sources.reconnect_initial_s`` doubling up to
  ``sources.reconnect_max_s``; ``sources.max_reconnects`` failed reopenings in a row end it, 0 = never).
  A camera that cannot be opened at the start (still booting, network down) is retried the same way for
  as long as the run lasts (``sources.open_attempts``: 0 = forever, the default; N gives up after N
  tries), each attempt logged with its state: a monitoring run must not end because a camera is late.
* ``replay:VIDEO`` plays a video file as a live source, paced at the file's own frame rate as a camera
  would deliver it (frames the pipeline cannot keep up with are dropped); ``loop:VIDEO`` does the same
  over and over until stopped. For trying live settings and measuring capture-to-event latency on a
  recording, and for soak runs.

A source that cannot be opened is reported (log + the run's stats + exit code 1) and ends its stream at
once; the other sources go on.

The source process (`SourceStage`) keeps, per file stream, the frames sent but not yet acknowledged by
the sink ("in flight", at most ``pipeline.inflight_frames`` frame indices past the oldest one), each with
its image so it can be sent again. The sink publishes the indices it has received on ``acks``; a frame
unacknowledged after ``pipeline.resend_timeout_s`` (or at once when the supervisor says a worker died:
Control("resend")) is sent again; the sink drops duplicates by (stream, frame index). When a file stream
is exhausted and everything is acknowledged, the source sends EndOfStream(stream, frame_count) straight to
the sink. Frames the detector skips (``pipeline.detect_every`` > 1) go straight to the sink as an empty
FacesMessage ("skip notice") for the tracker to carry boxes over; when an annotated video or a live window
is wanted, every frame's image also goes straight to the sink (``sink_in``), never through the workers.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import zmq

from ..errors import InputError
from . import messages
from .config import Config
from .imageio import ImageError, read_image, to_rgb8
from .messages import EndOfStream, FacesMessage, FrameMessage, MessageError
from .scenes import frame_thumbnail, scene_changed
from .stages import StageProcess, decode_json, empty_faces, open_socket

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
FILE_KINDS = ("video", "images", "image")
LIVE_KINDS = ("camera", "url", "replay", "loop")
REPLAY_PREFIXES = {"replay:": "replay", "loop:": "loop"}
LIVE_JOIN_S = 3.0  # how long a stopping source waits for its capture threads (under pipeline.shutdown_grace_s)
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SourceError(InputError, RuntimeError):
    """A source that cannot be opened or read; the message names it and says why."""


# ------------------------------------------------------------------------------------------------
# what a --source argument means


@dataclass(frozen=True)
class SourceSpec:
    """One `--source`: its stream id, where it reads from (path, camera index or URL) and its kind."""

    stream_id: str
    uri: str
    kind: str  # video, images, image (file sources); camera, url (live)

    @property
    def live(self) -> bool:
        """Cameras, URLs and replay:/loop: files: newest frames win (else lossless and in order)."""
        return self.kind in LIVE_KINDS

    def to_json(self) -> dict[str, str]:
        """The spec as JSON (spec.json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceSpec:
        """The spec from `to_json`'s dict."""
        return cls(str(data["stream_id"]), str(data["uri"]), str(data["kind"]))


def classify(uri: str) -> str:
    """The kind of source `uri` names (it need not exist: opening it is the source process's job)."""
    if uri.isdigit():
        return "camera"
    for prefix, kind in REPLAY_PREFIXES.items():
        if uri.startswith(prefix):
            if not uri[len(prefix) :]:
                raise SourceError(f"{uri}: {prefix} needs a video file after it ({prefix}clip.mp4)")
            return kind
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in LIVE_SCHEMES:
        return "url"
    if scheme and scheme != "file":
        raise SourceError(f"{uri}: unknown URL scheme {scheme!r} (live streams: {', '.join(LIVE_SCHEMES)})")
    path = Path(uri[len("file://") :] if scheme == "file" else uri)
    if path.is_dir():
        return "images"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "video"


def default_stream_id(uri: str, kind: str) -> str:
    """The stream id when `--source` gives none: the file's name, `camera0`, or the URL's host."""
    if kind == "camera":
        return f"camera{uri}"
    if kind == "url":
        rest = uri.split("://", 1)[1].split("@")[-1]  # never put credentials in a stream id
        text = rest.split("?")[0]
    elif kind in ("replay", "loop"):
        text = Path(replay_path(uri)).stem or "stream"
    else:
        text = Path(uri.removeprefix("file://").rstrip("/")).stem or "stream"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "stream"
    return cleaned[:64] if cleaned[0].isalnum() else f"s{cleaned[:63]}"


def replay_path(uri: str) -> str:
    """The video file of a ``replay:`` / ``loop:`` source."""
    for prefix in REPLAY_PREFIXES:
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return uri


def parse_source(text: str) -> tuple[str | None, str]:
    """`[ID=]URI` -> (ID or None, URI). An '=' belongs to the id only when what precedes it is a plain name."""
    head, sep, tail = text.partition("=")
    if sep and _STREAM_ID.fullmatch(head) and tail:
        return head, tail
    return None, text


def parse_sources(texts: list[str]) -> list[SourceSpec]:
    """SourceSpecs with unique stream ids (defaults get -2, -3... when they collide)."""
    if not texts:
        raise SourceError("no source: give at least one --source (video file, image folder, camera index or URL)")
    specs: list[SourceSpec] = []
    used: set[str] = set()
    explicit = [parse_source(text)[0] for text in texts]
    for text, stream_id in zip(texts, explicit):
        _, uri = parse_source(text)
        if not uri:
            raise SourceError(f"--source {text!r}: empty source")
        kind = classify(uri)
        if stream_id is not None:
            if stream_id in used:
                raise SourceError(f"--source {text!r}: stream id {stream_id!r} is used twice")
        else:
            base = default_stream_id(uri, kind)
            stream_id, n = base, 2
            while stream_id in used or stream_id in explicit:
                stream_id, n = f"{base}-{n}", n + 1
        used.add(stream_id)
        specs.append(SourceSpec(stream_id, uri, kind))
    return specs


def natural_key(name: str) -> list[Any]:
    """Sort key putting frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder, in natural order (frame2 before frame10)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


@dataclass(frozen=True)
class ProbeInfo:
    """What the supervisor knows of a file source before the run: for the progress bar and the video writer."""

    frame_count: int | None
    fps: float | None


def probe_source(spec: SourceSpec, config: Config) -> ProbeInfo:
    """Frame count and frame rate of a file source (best effort, nothing read beyond the header)."""
    max_frames = int(config.sources.max_frames)

    def capped(count: int | None) -> int | None:
        return min(count, max_frames) if count is not None and max_frames > 0 else count

    if spec.kind == "images":
        try:
            return ProbeInfo(capped(len(list_images(Path(spec.uri)))), float(config.sources.image_fps))
        except OSError:
            return ProbeInfo(None, None)
    if spec.kind == "image":
        return ProbeInfo(1, float(config.sources.image_fps))
    if spec.kind in ("video", "replay", "loop"):
        capture = cv2.VideoCapture(replay_path(spec.uri))
        try:
            if not capture.isOpened():
                return ProbeInfo(None, None)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = float(capture.get(cv2.CAP_PROP_FPS))
            if spec.kind == "loop" or (spec.kind == "replay" and max_frames > 0):
                count = 0  # unknown: frames are dropped when the pipeline falls behind
            return ProbeInfo(capped(count) if count > 0 and spec.kind == "video" else None, fps if fps > 0 else None)
        finally:
            capture.release()
    return ProbeInfo(None, None)


# ------------------------------------------------------------------------------------------------
# file readers: every frame, in order


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


# ------------------------------------------------------------------------------------------------
# live sources: newest frames win, reopen with back-off


def backoff_delay(failures: int, initial: float, maximum: float, factor: float = 2.0) -> float:
    """Seconds to wait after `failures` (>= 1) consecutive failures: initial, initial*factor, ... capped at maximum."""
    if failures < 1:
        return 0.0
    return float(min(maximum, initial * factor ** (failures - 1)))


class LiveCapture:
    """A camera or stream that is reopened with exponential back-off whenever it stops delivering.

    `factory()` returns a fresh OpenCV-like capture; `clock`/`sleep` are injectable for tests. The first
    opening gets `open_attempts` tries (0 = forever); after the stream has worked once it is reopened until
    `max_reconnects` consecutive failures (0 = forever). A successful read resets the back-off. `state` is
    "connecting" (never opened yet), "live" or "reconnecting".
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], CaptureLike],
        *,
        initial: float = 0.5,
        maximum: float = 30.0,
        open_attempts: int = 3,
        max_reconnects: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name, self.factory = name, factory
        self.initial, self.maximum = initial, maximum
        self.open_attempts, self.max_reconnects = max(0, int(open_attempts)), max_reconnects
        self.state = "connecting"
        self.clock, self.sleep = clock, sleep
        self.capture: CaptureLike | None = None
        self.failures = 0  # consecutive failed opens/reads
        self.opened_once = False
        self.reconnects = 0  # successful reopenings after a loss
        self.disconnects = 0
        self.delays: list[float] = []  # every back-off chosen, for stats and tests
        self.next_attempt = 0.0

    def next_frame(self, stopped: Callable[[], bool] = lambda: False) -> np.ndarray | None:
        """The next frame (as the capture returns it); None once `stopped()`; SourceError when it gives up."""
        while not stopped():
            if self.capture is None:
                wait = self.next_attempt - self.clock()
                if wait > 0:
                    self.sleep(min(wait, 0.1))  # short naps: stay responsive to stop
                    continue
                self._open()
                continue
            try:
                ok, frame = self.capture.read()
            except cv2.error as error:
                log.warning("%s: read failed: %s", self.name, error)
                ok, frame = False, None
            if ok and frame is not None:
                self.failures = 0
                return frame
            if getattr(self.capture, "finished", False):  # a replayed file has ended: not a loss
                self.close()
                return None
            self.disconnects += 1
            self._failed("stopped delivering frames")
        return None

    def _open(self) -> None:
        try:
            capture = self.factory()
            opened = capture is not None and capture.isOpened()
        except cv2.error as error:
            log.warning("%s: open failed: %s", self.name, error)
            capture, opened = None, False
        if opened:
            if self.opened_once:
                self.reconnects += 1
                log.warning("%s: reconnected", self.name)
            elif self.failures:
                log.warning("%s: opened after %d failed attempts", self.name, self.failures)
            self.opened_once = True
            self.state = "live"
            self.capture = capture
            return
        if capture is not None:
            capture.release()
        self._failed("cannot be opened")

    def _failed(self, what: str) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None
        self.failures += 1
        if self.opened_once:
            self.state = "reconnecting"
        if not self.opened_once and self.open_attempts and self.failures >= self.open_attempts:
            raise SourceError(f"{self.name}: {what} (tried {self.failures} times)")
        if self.opened_once and self.max_reconnects and self.failures > self.max_reconnects:
            raise SourceError(f"{self.name}: {what}; gave up after {self.max_reconnects} reconnection attempts")
        delay = backoff_delay(self.failures, self.initial, self.maximum)
        self.delays.append(delay)
        self.next_attempt = self.clock() + delay
        forever = "" if self.opened_once or self.open_attempts else ", retrying for as long as the run lasts"
        log.warning("%s: %s; trying again in %.1f s (%s, attempt %d%s)", self.name, what, delay, self.state,
                    self.failures, forever)  # fmt: skip

    def close(self) -> None:
        """Release the capture, if open."""
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class PacedVideoCapture:
    """A video file delivered like a camera: frame i is returned no earlier than i / fps seconds after
    the first read. At the end `read()` fails with `finished` set, or (loop) starts over."""

    def __init__(
        self,
        path: str,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path, self.loop, self.clock, self.sleep = path, loop, clock, sleep
        self.capture = cv2.VideoCapture(path)
        fps = float(self.capture.get(cv2.CAP_PROP_FPS)) if self.capture.isOpened() else 0.0
        self.fps = fps if 0 < fps < 1000 else 25.0
        self.started: float | None = None
        self.delivered = 0
        self.passes = 0
        self.finished = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        """Whether the file opened (cv2.VideoCapture's name)."""
        return self.capture.isOpened()

    def read(self) -> tuple[bool, np.ndarray | None]:
        """The next frame, no earlier than its time in the file; `loop:` starts over at the end."""
        if self.finished:
            return False, None
        ok, frame = self.capture.read()
        if not ok and self.loop and self.delivered:
            self.passes += 1
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok or frame is None:
            self.finished = not self.loop or not self.delivered
            return False, None
        now = self.clock()
        if self.started is None:
            self.started = now
        wait = self.started + self.delivered / self.fps - now
        if wait > 0:
            self.sleep(wait)
        self.delivered += 1
        return True, frame

    def get(self, prop: int) -> float:
        """A property of the underlying capture."""
        return float(self.capture.get(prop))

    def release(self) -> None:
        """Release the underlying capture."""
        self.capture.release()


def live_capture_factory(spec: SourceSpec, timeout_s: float = 10.0) -> Callable[[], CaptureLike]:
    """OpenCV captures for a camera index or a stream URL (URLs with open/read timeouts so a dead server
    cannot hang the reader), or a video file paced at its frame rate (``replay:`` / ``loop:``)."""
    if spec.kind in ("replay", "loop"):
        path = replay_path(spec.uri)
        return lambda: PacedVideoCapture(path, loop=spec.kind == "loop")
    if spec.kind == "camera":

        def open_camera() -> CaptureLike:
            capture = cv2.VideoCapture(int(spec.uri))
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where supported: fewer stale frames inside the driver
            return capture

        return open_camera
    milliseconds = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]
    return lambda: cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG, params)


@dataclass
class LiveFrame:
    """A frame from a live source: its capture index, pixels and wall-clock capture time."""

    index: int
    timestamp: float  # wall clock at capture (seconds since the epoch)
    image: np.ndarray  # RGB


class LatestFrames:
    """A bounded, thread-safe FIFO that drops its OLDEST frame when a new one arrives and it is full."""

    def __init__(self, capacity: int) -> None:
        self.frames: deque[LiveFrame] = deque()
        self.capacity = max(1, capacity)
        self.dropped = 0
        self.lock = threading.Lock()

    def put(self, frame: LiveFrame) -> bool:
        """Add a frame; True when an older frame was dropped to make room."""
        with self.lock:
            dropped = len(self.frames) >= self.capacity
            if dropped:
                self.frames.popleft()
                self.dropped += 1
            self.frames.append(frame)
            return dropped

    def get(self) -> LiveFrame | None:
        """The oldest frame still held, or None when empty (non-blocking)."""
        with self.lock:
            return self.frames.popleft() if self.frames else None

    def newest(self, held: LiveFrame) -> LiveFrame:
        """The newest frame queued, if any, instead of `held` (which is then dropped and counted)."""
        with self.lock:
            if not self.frames:
                return held
            self.dropped += len(self.frames)  # `held` and all but the newest queued frame ...
            newest = self.frames.pop()
            self.frames.clear()
            return newest  # ... are dropped: len(frames) - 1 + held

    def __len__(self) -> int:
        return len(self.frames)


class LiveReader:
    """A thread reading a LiveCapture into LatestFrames as fast as the source delivers."""

    def __init__(self, capture: LiveCapture, queue: LatestFrames, max_frames: int = 0) -> None:
        self.capture, self.queue, self.max_frames = capture, queue, max_frames
        self.captured = 0
        self.error: str | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"capture {capture.name}", daemon=True)

    def start(self) -> LiveReader:
        """Start the capture thread; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ask the capture thread to stop (`done` is set when it has); see `join`."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the capture thread to end; True when it has (or never started).

        A process must not exit with this thread inside OpenCV: at interpreter exit the thread is ended by
        unwinding through C++ frames, which aborts ("terminate called without an active exception")."""
        if self.thread.ident is None:
            return True
        self.thread.join(max(0.0, timeout))
        return not self.thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.max_frames and self.captured >= self.max_frames:
                    break
                frame = self.capture.next_frame(self._stop.is_set)
                if frame is None:
                    break
                self.queue.put(LiveFrame(self.captured, time.time(), to_rgb8(frame)))
                self.captured += 1
        except SourceError as error:
            self.error = str(error)
            log.error("%s", error)
        except Exception as error:  # a reader thread must report, never vanish silently
            self.error = f"{self.capture.name}: {type(error).__name__}: {error}"
            log.exception("%s: capture thread failed", self.capture.name)
        finally:
            self.capture.close()
            self.done.set()


# ------------------------------------------------------------------------------------------------
# the source process


@dataclass
class Inflight:
    """A file frame sent to the detectors and not yet acknowledged by the sink (re-sent after a timeout)."""

    message: FrameMessage
    read_at: float
    sent_at: float | None = None  # None: waiting to be (re-)sent
    first_sent: float | None = None
    sends: int = 0


@dataclass
class StreamState:
    """The source stage's state of one stream: reader, frames in flight, counters."""

    spec: SourceSpec
    reader: FrameReader | None = None
    live: LiveReader | None = None
    next_index: int = 0
    inflight: dict[int, Inflight] = field(default_factory=dict)  # insertion order = index order
    held: LiveFrame | None = None  # a live frame taken from the queue that could not be sent yet
    live_sent: dict[int, float] = field(default_factory=dict)  # live frames sent, not yet acknowledged: never
    # re-sent (newer frames matter more), only waited for at the end so their results are not cut off
    last_detect_index: int = -1  # live: the last frame sent to the detectors
    thumbnail: np.ndarray | None = None  # of the last frame read, to see a scene cut on a frame due to be skipped
    size: tuple[int, ...] | None = None  # (height, width) of the last frame read: a change is a scene cut
    last_checked_index: int = -1  # live: the last frame `thumbnail` was taken of ...
    held_cut: bool = False  # ... and whether it starts a new scene
    # live: skip notices wait here until every detection frame sent before them is acknowledged (or
    # superseded or lost), so a notice never reaches the sink ahead of the detection it carries over
    held_notices: deque[FacesMessage] = field(default_factory=deque)
    exhausted: bool = False
    finished: bool = False  # EndOfStream sent
    error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, amount: int = 1) -> None:
        """Add `amount` to the stream's counter `name`."""
        self.counters[name] = self.counters.get(name, 0) + amount

    @property
    def lowest_open(self) -> int:
        """The lowest frame index not yet acknowledged (the in-flight window starts there)."""
        return next(iter(self.inflight)) if self.inflight else self.next_index


class SourceStage(StageProcess):
    """Reads every source, sends frames to the detect workers, keeps file frames until acknowledged."""

    role = "source"

    def run(self) -> int:
        """Open every source, send frames until they are exhausted or the run stops; re-send lost file frames."""
        pipeline = self.config.pipeline
        self.window = max(1, int(pipeline.inflight_frames))
        self.detect_every = max(1, int(pipeline.detect_every))
        self.resend_timeout = float(pipeline.resend_timeout_s)
        self.send_images = bool(self.spec["outputs"].get("images"))
        self.live_inflight = int(pipeline.live_inflight) or max(1, int(pipeline.detect_workers))
        self.cut_threshold = float(pipeline.scene_cut_threshold)
        self.ack_latency_ewma = 0.0
        self.frames = open_socket(
            self.context, zmq.PUSH, self.endpoints["frames"], bind=True, hwm=int(pipeline.frame_hwm)
        )
        self.to_sink = open_socket(
            self.context, zmq.PUSH, self.endpoints["sink_in"], bind=False, hwm=4 * self.window + 64
        )
        self.acks = open_socket(self.context, zmq.SUB, self.endpoints["acks"], bind=False, subscribe=b"")
        control = self.subscribe_control()
        self.streams = [self._open(SourceSpec.from_json(item)) for item in self.spec["sources"]]
        self.extra_stats = self._extra_stats
        self.ready()
        poller = zmq.Poller()
        poller.register(self.acks, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        turn = 0
        # Live capture waits for the supervisor's Control("workers_ready") (its detect, embed and sink
        # processes have loaded their models), at most pipeline.live_start_timeout_s.
        any_live = any(stream.live is not None for stream in self.streams)
        live_start_by = time.monotonic() + float(pipeline.live_start_timeout_s) if any_live else 0.0
        while not self.stopping:
            for command in self.handle_control():
                if command.command == "resend":
                    self._resend_all(command.stream_id)
                elif command.command == "workers_ready":
                    live_start_by = self._start_live(live_start_by)
            if live_start_by and time.monotonic() >= live_start_by:
                log.warning(
                    "workers not ready after %.0f s: starting live capture anyway", pipeline.live_start_timeout_s
                )
                live_start_by = self._start_live(live_start_by)
            self._drain_acks()
            for stream in self.streams:
                if not stream.finished:
                    self._fill(stream)
            self._check_timeouts()
            for stream in self.streams:
                self._release_notices(stream)
            blocked = self._send(turn)
            turn += 1
            for stream in self.streams:
                self._maybe_finish(stream)
            if all(stream.finished for stream in self.streams):
                log.info("every source is done")
                break
            self.send_stats()
            if blocked:  # the detect workers push back: wake when they take more (or acks/control come)
                poller.register(self.frames, zmq.POLLOUT)
                poller.poll(100)
                poller.unregister(self.frames)
            else:  # live frames arrive from capture threads: short naps, they are what latency is made of
                poller.poll(5 if any(s.live is not None and not s.finished for s in self.streams) else 50)
        for stream in self.streams:
            if stream.live is not None:
                stream.live.stop()
            if stream.reader is not None:
                stream.reader.close()
        # A camera read returns within a frame interval; one that hangs longer is left to stage_main's exit.
        deadline = time.monotonic() + LIVE_JOIN_S
        for stream in self.streams:
            if stream.live is not None and not stream.live.join(deadline - time.monotonic()):
                log.warning("%s: the capture thread did not stop within %.0f s", stream.spec.stream_id, LIVE_JOIN_S)
        # EndOfStream messages must reach the sink before we go; a stopped run need not wait.
        self.to_sink.setsockopt(zmq.LINGER, 500 if self.stopping else 5000)
        self.to_sink.close()
        return 0

    def _start_live(self, pending: float) -> float:
        """Start every live capture thread (once); 0.0 = started."""
        if pending:
            for stream in self.streams:
                if stream.live is not None and not stream.error:
                    stream.live.start()
        return 0.0

    # -- opening ---------------------------------------------------------------------------------

    def _open(self, spec: SourceSpec) -> StreamState:
        stream = StreamState(spec)
        sources = self.config.sources
        try:
            if spec.live:
                where = {"camera": f"camera {spec.uri}", "url": _redact(spec.uri)}.get(spec.kind, spec.uri)
                name = f"{spec.stream_id} ({where})"
                capture = LiveCapture(
                    name,
                    live_capture_factory(spec),
                    initial=float(sources.reconnect_initial_s),
                    maximum=float(sources.reconnect_max_s),
                    # a replayed file that cannot be opened will not come up later: a few tries only
                    open_attempts=sources.open_attempts or (3 if spec.kind in ("replay", "loop") else 0),
                    max_reconnects=int(sources.max_reconnects),
                )
                # Capture starts once the workers are ready (see run): frames taken while models load
                # would only be stale by the time a detector sees them.
                stream.live = LiveReader(capture, LatestFrames(int(sources.live_queue)), int(sources.max_frames))
            else:
                stream.reader = open_file_reader(spec, self.config)
                log.info("%s: opened %s", spec.stream_id, spec.uri)
        except (SourceError, OSError) as error:
            self._fail(stream, str(error))
        return stream

    def _fail(self, stream: StreamState, reason: str) -> None:
        log.error("source %s: %s", stream.spec.stream_id, reason)
        stream.error = reason
        stream.exhausted = True
        stream.inflight.clear()

    # -- reading and sending ----------------------------------------------------------------------

    def _fill(self, stream: StreamState) -> None:
        """Read file frames while the window has room; take live frames from the capture queue."""
        if stream.live is not None:
            if stream.live.error and not stream.error:
                self._fail(stream, stream.live.error)
            elif stream.live.done.is_set() and not len(stream.live.queue) and stream.held is None:
                stream.exhausted = True
            return
        while not stream.exhausted and stream.next_index < stream.lowest_open + self.window and not self.stopping:
            try:
                item = stream.reader.read() if stream.reader is not None else None
            except SourceError as error:
                self._fail(stream, str(error))
                return
            if item is None:
                stream.exhausted = True
                return
            image, timestamp = item
            frame = FrameMessage(stream.spec.stream_id, stream.next_index, timestamp, False, image)
            stream.next_index += 1
            stream.count("read")
            cut = self._cut(stream, image)  # every frame: the thumbnail is compared with the previous frame's
            detect = frame.frame_index % self.detect_every == 0 or cut
            if not self._to_sink_first(stream, frame, detect):
                return
            if detect:
                stream.inflight[frame.frame_index] = Inflight(frame, time.monotonic())

    def _cut(self, stream: StreamState, image: np.ndarray) -> bool:
        """Whether a frame the detector would skip starts a new scene (then it is detected: the tracker
        must not carry the last scene's boxes and names onto it): a frame of another size than the last
        one always does (an image folder of mixed sizes), else the thumbnail test. Only computed when
        skipping is on."""
        if self.detect_every == 1:
            return False
        size = image.shape[:2]
        resized = stream.size is not None and stream.size != size
        stream.size = size
        if resized:
            stream.count("size_changes")
            stream.count("scene_cuts")
            stream.thumbnail = frame_thumbnail(image) if self.cut_threshold > 0 else None
            return True
        if self.cut_threshold <= 0:
            return False
        thumbnail = frame_thumbnail(image)
        changed = scene_changed(stream.thumbnail, thumbnail, self.cut_threshold)
        stream.thumbnail = thumbnail
        if changed:
            stream.count("scene_cuts")
        return changed

    def _to_sink_first(self, stream: StreamState, frame: FrameMessage, detect: bool) -> bool:
        """What the sink gets straight from the source: the image (for drawing) and, for a frame the
        detector skips, a skip notice (held back for live streams, see `_release_notices`). False when stopping."""
        if self.send_images and not self.send_until_stopped(self.to_sink, frame):
            return False
        if not detect:
            height, width = frame.image.shape[:2]
            notice = empty_faces(frame.stream_id, frame.frame_index, frame.timestamp, width, height)
            stream.count("skipped_detection")
            if stream.live is not None:
                stream.held_notices.append(notice)
            elif not self.send_until_stopped(self.to_sink, notice):
                return False
        return True

    def _release_notices(self, stream: StreamState) -> None:
        """Send a live stream's skip notices whose earlier detection frames are all accounted for."""
        while stream.held_notices and not self.stopping:
            index = stream.held_notices[0].frame_index
            if any(sent < index for sent in stream.live_sent):
                return
            if not self.send_until_stopped(self.to_sink, stream.held_notices.popleft()):
                return

    def _send(self, turn: int) -> bool:
        """Send queued frames round-robin over the streams; True when the detect workers pushed back."""
        order = self.streams[turn % len(self.streams) :] + self.streams[: turn % len(self.streams)]
        progress = True
        while progress and not self.stopping:
            progress = False
            for stream in order:
                if stream.finished or stream.error:
                    continue
                try:
                    sent = self._send_one(stream)
                except zmq.Again:
                    return True
                progress = progress or sent
        return False

    def _send_one(self, stream: StreamState) -> bool:
        if stream.live is not None:
            return self._send_live(stream)
        for frame_index, entry in stream.inflight.items():
            if entry.sent_at is None:
                self.frames.send_multipart(messages.encode(entry.message), zmq.NOBLOCK, copy=False)
                entry.sent_at = time.monotonic()
                entry.first_sent = entry.first_sent or entry.sent_at
                entry.sends += 1
                stream.count("sent")
                if entry.sends > 1:
                    stream.count("resent")
                    log.info("%s: frame %d re-sent (attempt %d)", stream.spec.stream_id, frame_index, entry.sends)
                return True
        return False

    def _send_live(self, stream: StreamState) -> bool:
        assert stream.live is not None
        if stream.held is None:
            stream.held = stream.live.queue.get()
            if stream.held is None:
                return False
        # Every k-th frame *taken*: frames dropped before they were taken do not skip a detection.
        if stream.held.index != stream.last_checked_index:  # once per frame taken, though it may wait
            stream.last_checked_index = stream.held.index
            stream.held_cut = self._cut(stream, stream.held.image)
        detect = stream.last_detect_index < 0 or stream.held.index - stream.last_detect_index >= self.detect_every
        detect = detect or stream.held_cut
        if detect and len(stream.live_sent) >= self.live_inflight:
            # Every detector is busy with one of our frames: wait for the newest frame at the time one is free
            # (frames queued in sockets meanwhile would only grow old there).
            stream.held = stream.live.queue.newest(stream.held)
            return False
        live = stream.held
        frame = FrameMessage(stream.spec.stream_id, live.index, live.timestamp, True, live.image)
        if detect:
            self.frames.send_multipart(messages.encode(frame), zmq.NOBLOCK, copy=False)  # raises Again
            stream.live_sent[live.index] = time.monotonic()
            stream.last_detect_index = live.index
            stream.count("sent")
        stream.held = None
        stream.next_index = live.index + 1
        stream.count("read")
        self._to_sink_first(stream, frame, detect)
        return True

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        # Adaptive: never re-send a frame that is merely waiting its turn behind a slow detector.
        timeout = max(self.resend_timeout, 4.0 * self.ack_latency_ewma)
        for stream in self.streams:
            lost = [index for index, sent in stream.live_sent.items() if now - sent > timeout]
            for index in lost:  # a live frame whose result never came: lost with a worker; not worth re-sending
                del stream.live_sent[index]
                stream.count("lost")
            for frame_index, entry in stream.inflight.items():
                if entry.sent_at is not None and now - entry.sent_at > timeout:
                    log.warning(
                        "%s: frame %d not completed after %.0f s: sending it again",
                        stream.spec.stream_id,
                        frame_index,
                        now - entry.sent_at,
                    )
                    entry.sent_at = None

    def _resend_all(self, stream_id: str) -> None:
        """A worker died: whatever it held is lost, and we cannot know which frames it held."""
        count = 0
        for stream in self.streams:
            if stream_id and stream.spec.stream_id != stream_id:
                continue
            for entry in stream.inflight.values():
                if entry.sent_at is not None:
                    entry.sent_at = None
                    count += 1
            if stream.live_sent:  # live frames are not re-sent (newer ones matter more): give them up, so
                stream.count("lost", len(stream.live_sent))  # the stream's detector credit comes back at once
                stream.live_sent.clear()
        if count:
            log.warning("a worker was lost: re-sending %d frames still in flight", count)

    def _drain_acks(self) -> None:
        by_id = {stream.spec.stream_id: stream for stream in self.streams}
        while True:
            try:
                frame = self.acks.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                payload = decode_json(frame)
                stream = by_id.get(payload.get("stream_id"))
                indices = payload.get("frames")
                if payload["type"] != "ack" or not isinstance(indices, list):
                    raise MessageError(f"expected an ack, got {payload['type']!r}")
            except MessageError as error:
                self.malformed(f"acks: {error}")
                continue
            if stream is None:
                continue
            now = time.monotonic()
            if stream.live is not None:
                for frame_index in indices:
                    sent = stream.live_sent.pop(frame_index, None) if isinstance(frame_index, int) else None
                    if sent is not None:
                        stream.count("acked")
                        self.stats.latency("frame", now - sent)
                # Older live frames still out are stale (a worker skipped them for a newer one) or will be
                # dropped by the sink as late: nothing to wait for.
                newest = max((i for i in indices if isinstance(i, int)), default=-1)
                for frame_index in [i for i in stream.live_sent if i < newest]:
                    del stream.live_sent[frame_index]
                continue
            for frame_index in indices:
                entry = stream.inflight.pop(frame_index, None) if isinstance(frame_index, int) else None
                if entry is not None:
                    stream.count("acked")
                    # Send to acknowledgement: the pipeline's latency for this frame, queues included.
                    latency = now - (entry.first_sent or entry.read_at)
                    self.stats.latency("frame", latency)
                    self.ack_latency_ewma = 0.9 * self.ack_latency_ewma + 0.1 * latency

    def _maybe_finish(self, stream: StreamState) -> None:
        if stream.finished or not stream.exhausted or stream.inflight or stream.held is not None or stream.live_sent:
            return
        if stream.held_notices:
            self._release_notices(stream)
            return
        end = EndOfStream(stream.spec.stream_id, stream.next_index)
        if self.send_until_stopped(self.to_sink, end):
            stream.finished = True
            log.info("%s: end of stream after %d frames", stream.spec.stream_id, stream.next_index)

    def _extra_stats(self) -> dict[str, Any]:
        streams = {}
        for stream in self.streams:
            info: dict[str, Any] = {
                "kind": stream.spec.kind,
                "live": stream.spec.live,
                **stream.counters,
                "in_flight": len(stream.inflight),
                "finished": stream.finished,
            }
            if stream.live is not None:
                info["dropped"] = stream.live.queue.dropped
                info["reconnects"] = stream.live.capture.reconnects
                info["state"] = stream.live.capture.state
                info["disconnects"] = stream.live.capture.disconnects
            if stream.error:
                info["error"] = stream.error
            streams[stream.spec.stream_id] = info
        errors = [f"{s.spec.stream_id}: {s.error}" for s in self.streams if s.error]
        return {"streams": streams, "errors": errors}


def _redact(uri: str) -> str:
    """A URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)
