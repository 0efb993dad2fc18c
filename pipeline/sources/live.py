"""Live sources, newest frames win: a capture thread per camera or stream into a queue that drops its oldest
frame, reopening with exponential back-off; ``replay:`` / ``loop:`` files paced like a camera."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ...engines.imageio import to_rgb8
from .files import CaptureLike
from .spec import SourceError, SourceSpec, replay_path

log = logging.getLogger(__name__)


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
