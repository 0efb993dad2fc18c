"""The sink process: match descriptors against the gallery, track faces per stream, and write what came out.

Inputs (see stages.py for the socket map): DescriptorsMessages from the embed workers on
``descriptors``; straight from the source on ``sink_in``: frame images (only when an annotated video
or a live window is wanted), skip notices (frames the detector did not run on, an empty FacesMessage)
and EndOfStream.

Order: results of a **file** stream are processed strictly by frame index — a result waits until every
earlier frame's result is there (the source's in-flight window bounds how many wait), duplicates (a
frame re-sent after a worker died) are dropped by (stream, frame index). Every result received is
acknowledged on ``acks`` at once, so the source can stop re-sending it (live frames are acknowledged too:
the source waits for them before it ends a live stream). **Live** results are processed
as they come, held at most ``pipeline.live_reorder_ms`` to put the results of parallel workers back in
order (not at all when one detect and one embed worker run and no other can join: `live_reorder_s`); one
older than a frame already processed is dropped (counted as ``late``).

Per frame the tracker (`pipeline.tracker.FaceTracker`, one per stream) assigns track ids, the gallery
names each embedded face (identity or "unknown", distance) and the track's vote decides its identity.
The gallery is re-read every ``pipeline.gallery_refresh_s`` (`Gallery.refresh()`), so enrolments and
removals reach a running pipeline without a restart; a gallery file that does not exist yet is opened
once it appears.

Outputs, all optional:

* events (``--events FILE`` and the ``events`` PUB socket): one JSON object a line, flushed line by
  line (a killed sink leaves only complete lines): ``track_started``, ``track_identified``, ``track_ended``
  with ``stream_id, track_id, frame_index, timestamp, box`` (+ ``identity, distance, previous_identity``;
  ``track_ended`` + ``identity, distance, first_frame, first_timestamp, last_frame, last_timestamp, decided``:
  stamped with the frame where the end was decided, so events are in frame order; ``identity`` "unknown" and
  ``decided`` false when no face of the track passed the quality gate), and at each stream's end one
  ``summary`` line: per identity, its on-screen intervals (frames and seconds). On the PUB socket each
  event is two frames: the event name (subscribe to a prefix of it) and the same JSON;
* detections (``--detections FILE``): one line per processed frame, every face in it: ``{"stream_id",
  "frame_index", "timestamp", "detected", "scanned", "faces": [{"box", "box_source", "score", "track_id",
  "identity", "distance", "match": {"identity", "distance"}}]}``; ``box_source`` tells where each box
  came from: ``"scan"`` (a full-frame detector run on that very frame), ``"region"`` (region detection
  around a followed face, on that very frame, see pipeline/domain/follow.py) or ``"carried"`` (the tracker's
  prediction: no detector ran for it on this frame; ``score`` and ``match`` null); ``scanned`` is true
  when a full-frame detector ran on the frame, ``detected`` when a detector produced any box on it (or
  scanned it); ``identity`` is the track's current decision ("unknown" while undecided, ``distance``
  then null), ``match`` this frame's own gallery answer (null for a face that was not embedded on this
  frame). The sink's stats count the faces of each kind (``faces_scan``, ``faces_region``,
  ``faces_carried``);
* annotated video (``--output FILE``, mp4v): every processed frame with boxes, names, distances and
  track ids (several streams: ``FILE`` becomes ``STEM-<stream>.SUFFIX`` per stream); a live window
  (``--show``) shows the same frames.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import zmq

from .config import Config, GalleryConfig, PipelineConfig, TrackerConfig
from .domain.kiosk import KioskDecider, evidence_from_matches
from .domain.tracker import (
    UNKNOWN,
    FaceTracker,
    OnScreenInterval,
    QualityGate,
    TrackEnded,
    TrackEvent,
    TrackIdentified,
    box_iou,
    greedy_assignment,
)
from .domain.unknowns import UnknownTracks, chips_dir
from .runtime import messages
from .runtime.messages import DescriptorsMessage, EndOfStream, FacesMessage, FrameMessage, MessageError
from .runtime.stages import PipelineError, StageProcess, StageStats, encode_json, open_socket
from .sources.spec import LIVE_KINDS

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# matching: the gallery behind a small interface


class Matcher(Protocol):
    """What the sink needs of the gallery: `identify` descriptors, `refresh` to pick up enrolments, `close`."""

    def identify(self, descriptors: np.ndarray) -> Any: ...  # .identities (list[str]), .distances (N,)

    def refresh(self) -> bool: ...

    def close(self) -> None: ...


class NullMatcher:
    """No gallery: every face is unknown (distance NaN)."""

    def identify(self, descriptors: np.ndarray) -> Any:
        """Every face unknown."""
        from ..enroll.matching import Matches

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
            from ..enroll.gallery import Gallery

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


# ------------------------------------------------------------------------------------------------
# records


@dataclass
class FaceResult:
    """One face of a processed frame: box, score, track and its identity, the face's own per-frame match."""

    box: list[int]
    track_id: int
    identity: str  # the track's decided identity, "unknown" while undecided
    distance: float | None
    score: float | None = None  # None on frames the detector skipped
    match_identity: str | None = None  # this frame's own gallery answer (detected and embedded faces)
    match_distance: float | None = None
    box_source: str = "carried"  # "scan" | "region" | "carried" (BOX_SOURCES)


@dataclass
class FrameResult:
    """One processed frame of one stream: its faces, as written to --detections."""

    stream_id: str
    frame_index: int
    timestamp: float
    width: int
    height: int
    detected: bool
    faces: list[FaceResult] = field(default_factory=list)
    scanned: bool = False  # a full-frame detector ran on this frame


BOX_SOURCES = {messages.BOX_SCAN: "scan", messages.BOX_REGION: "region"}  # else "carried"


def _number(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def event_record(event: TrackEvent) -> dict[str, Any]:
    """A tracker event as its JSON record (--events and the PUB socket). A track that ended without an
    identity (no face passed the quality gate) is "unknown", as its detections and the summary call it,
    with ``"decided": false``."""
    record: dict[str, Any] = {"event": event.kind}
    for name, value in vars(event).items():
        if name == "box":
            value = [int(v) for v in value]
        elif isinstance(value, float):
            value = _number(value)
        record[name] = value
    if isinstance(event, TrackEnded):
        record["decided"] = event.identity is not None
        if event.identity is None:
            record["identity"] = UNKNOWN
    return record


def detection_record(result: FrameResult) -> dict[str, Any]:
    """A frame's JSON record for --detections."""
    faces = []
    for face in result.faces:
        match = None
        if face.match_identity is not None:
            match = {"identity": face.match_identity, "distance": _number(face.match_distance)}
        faces.append(
            {
                "box": face.box,
                "box_source": face.box_source,
                "score": _number(face.score),
                "track_id": face.track_id,
                "identity": face.identity,
                "distance": _number(face.distance),
                "match": match,
            }
        )
    return {
        "stream_id": result.stream_id,
        "frame_index": result.frame_index,
        "timestamp": _number(result.timestamp),
        "width": result.width,
        "height": result.height,
        "detected": result.detected,
        "scanned": result.scanned,
        "faces": faces,
    }


def summary_record(stream_id: str, frames: int, summary: dict[str, list[OnScreenInterval]]) -> dict[str, Any]:
    """Per identity, its on-screen intervals; `seconds` adds up the intervals' durations."""
    identities = {}
    for identity, intervals in summary.items():
        spans = [
            {
                "first_frame": i.first_frame,
                "last_frame": i.last_frame,
                "first_timestamp": _number(i.first_timestamp),
                "last_timestamp": _number(i.last_timestamp),
                "track_ids": list(i.track_ids),
            }
            for i in intervals
        ]
        seconds = sum(i.last_timestamp - i.first_timestamp for i in intervals)
        identities[identity] = {"intervals": spans, "seconds": _number(seconds, 3)}
    return {"event": "summary", "stream_id": stream_id, "frames": frames, "identities": identities}


WALL_CLOCK_AFTER = 1e9  # seconds: a timestamp this large is wall-clock time (live), not a position in a file


def format_time(seconds: float) -> str:
    """m:ss.ss into a file; a live source's wall-clock capture time as local HH:MM:SS.ss."""
    if seconds >= WALL_CLOCK_AFTER:
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + f"{seconds % 1:.2f}"[1:]
    minutes, rest = divmod(max(0.0, seconds), 60.0)
    return f"{int(minutes)}:{rest:05.2f}"


def describe_summary(record: dict[str, Any]) -> list[str]:
    """Human lines for one summary record."""
    lines = [f"{record['stream_id']}: {record['frames']} frames"]
    if not record["identities"]:
        lines.append("  nobody")
    for identity, info in record["identities"].items():
        spans = ", ".join(
            f"{format_time(s['first_timestamp'] or 0)}-{format_time(s['last_timestamp'] or 0)} "
            f"(frames {s['first_frame']}-{s['last_frame']})"
            for s in info["intervals"]
        )
        lines.append(f"  {identity}: {spans}")
    return lines


# ------------------------------------------------------------------------------------------------
# outputs


def json_line(record: dict[str, Any]) -> bytes:
    """One record as a compact JSON line (NaN refused: records must stay valid JSON)."""
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


class JsonLines:
    """A JSON-lines file written one whole line per write(2): a process killed at any moment leaves only
    complete lines (no userspace buffer to lose, no half line from a buffered flush)."""

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
    for face in result.faces:
        left, top, right, bottom = (int(v) for v in face.box)
        known = face.identity != UNKNOWN
        colour = _GREEN if known else (_YELLOW if face.distance is None else _RED)
        cv2.rectangle(canvas, (left, top), (right, bottom), colour, 2 if face.score is not None else 1)
        distance = "" if face.distance is None else f" {face.distance:.2f}"
        label = f"{face.identity}{distance} #{face.track_id}"
        (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        labels.append((label, colour, _BLACK if known else _WHITE, height, baseline))
        sizes.append((width + 3, height + baseline + 3))
        boxes.append((left, top, right, bottom))
    places = place_labels(boxes, sizes, canvas.shape[1], canvas.shape[0])
    for (label, colour, ink, height, _), (x0, y0, x1, y1) in zip(labels, places):
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, cv2.FILLED)
        cv2.putText(canvas, label, (x0 + 1, y0 + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
    return canvas


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


def face_chip(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One face's 150x150 RGB chip from the frame and its 5 landmarks, exactly as the embed stage made it
    (the chips themselves do not travel back to the sink)."""
    from ..engines.chips import extract_face_chips

    return extract_face_chips(image, np.asarray(landmarks)[None])[0]


class FrameChips:
    """The chips of one frame's faces, each made on first use and kept: the web feed and the unknowns file
    may both want the same face's chip (about 7 ms each on 640x360)."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        self.image, self.landmarks = image, landmarks
        self.made: dict[int, np.ndarray] = {}

    def __call__(self, i: int) -> np.ndarray:
        if i not in self.made:
            self.made[i] = face_chip(self.image, self.landmarks[i])
        return self.made[i]


class WebFeed:
    """`run --web` / `--preview`: what the web view (pipeline/web/app.py) needs from the sink, published on the
    private ``preview`` PUB socket and nowhere else.

    * annotated frames: ``[b"frame:" + stream_id, JPEG]`` at most `fps` a second per stream (0: none);
      frames wider than `max_width` are scaled down first;
    * unknown faces: ``[b"unknown_face", JSON]`` with ``{"event": "unknown_face", "stream_id", "track_id",
      "frame_index", "timestamp", "box", "quality", "score", "descriptor": [128 floats], "chip_png"}``
      (``quality``: the tracker's gate weight in [0, 1]; ``chip_png``: base64 PNG of the 150x150 aligned chip,
      null when the frame image did not reach the sink), for a track whose identity is unknown or undecided,
      each time a better face of it arrives (faces the quality gate rejects are never sent). Descriptors are
      biometric data: they go on this topic only, never in the events.
    """

    def __init__(self, publish: Callable[[bytes, bytes], None], *, fps: float = 5.0, max_width: int = 960,
                 jpeg_quality: int = 80) -> None:  # fmt: skip
        self.publish, self.max_width, self.jpeg_quality = publish, int(max_width), int(jpeg_quality)
        self.interval = 1.0 / fps if fps > 0 else math.inf
        self.next_frame: dict[str, float] = {}
        self.best: dict[tuple[str, int], tuple[float, float, bool]] = {}  # (weight, score, published)
        self.frames_sent = 0
        self.faces_sent = 0

    def frame_due(self, stream_id: str, now: float | None = None) -> bool:
        """Whether this stream's next annotated frame should be published (the rate cap)."""
        now = time.monotonic() if now is None else now
        return math.isfinite(self.interval) and now >= self.next_frame.get(stream_id, 0.0)

    def frame(self, stream_id: str, bgr: np.ndarray, now: float | None = None) -> None:
        """Publish a stream's annotated frame (scaled to `web.preview_max_width`, JPEG) to the web view."""
        now = time.monotonic() if now is None else now
        self.next_frame[stream_id] = now + self.interval
        if bgr.shape[1] > self.max_width > 0:
            height = max(1, round(bgr.shape[0] * self.max_width / bgr.shape[1]))
            bgr = cv2.resize(bgr, (self.max_width, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if ok:
            self.publish(b"frame:" + stream_id.encode(), jpeg.tobytes())
            self.frames_sent += 1

    def faces(self, stream_id: str, message: DescriptorsMessage, faces: list[FaceResult], weights: np.ndarray,
              chips: FrameChips | None) -> None:  # fmt: skip
        """One detected frame's faces (`faces[i]` is face i of `message`, with its track's identity after it);
        `chips` makes their chips (None: the frame image did not reach the sink)."""
        for i, face in enumerate(faces):
            key, weight, score = (stream_id, face.track_id), float(weights[i]), float(message.scores[i])
            if not weight > 0:
                continue
            best = self.best.get(key)
            better = best is None or (weight, score) > best[:2]
            if better:
                self.best[key] = best = (weight, score, False)
            if face.identity != UNKNOWN or best is None or best[2]:
                continue
            self.best[key] = (best[0], best[1], True)
            chip_png = None
            if chips is not None:
                chip = chips(i)
                ok, png = cv2.imencode(".png", np.ascontiguousarray(chip[:, :, ::-1]))
                chip_png = base64.b64encode(png.tobytes()).decode("ascii") if ok else None
            record = {
                "event": "unknown_face", "stream_id": stream_id, "track_id": face.track_id,
                "frame_index": int(message.frame_index), "timestamp": _number(message.timestamp),
                "box": [int(v) for v in message.boxes[i]], "quality": _number(weight), "score": _number(score),
                "descriptor": [float(v) for v in message.descriptors[i]], "chip_png": chip_png,
            }  # fmt: skip
            self.publish(b"unknown_face", json_line(record).rstrip(b"\n"))
            self.faces_sent += 1

    def end(self, stream_id: str, track_id: int) -> None:
        """Forget a finished track's best faces."""
        self.best.pop((stream_id, track_id), None)


class SinkOutputs:
    """Where processed frames and events go. Every part optional."""

    def __init__(
        self,
        *,
        events: str | None = None,
        detections: str | None = None,
        video: str | None = None,
        stream_fps: dict[str, float] | None = None,
        codec: str = "mp4v",
        show: bool = False,
        publish: Callable[[str, bytes], None] | None = None,
        web: WebFeed | None = None,
    ) -> None:
        self.events = JsonLines(events) if events else None
        self.detections = JsonLines(detections) if detections else None
        self.publish = publish
        stream_fps = stream_fps or {}
        self.videos = (
            {sid: VideoOutput(p, stream_fps[sid], codec) for sid, p in video_paths(video, list(stream_fps)).items()}
            if video
            else {}
        )
        self.window = LiveWindow() if show else None
        self.web = web  # run --web / --preview
        self.event_count = 0

    @property
    def wants_images(self) -> bool:
        """Whether any output needs the annotated image (video, window, web view)."""
        return bool(self.videos) or self.window is not None or self.web is not None

    def event(self, record: dict[str, Any]) -> None:
        """Write an event to --events and publish it on the events socket."""
        line = self.events.write(record) if self.events else json_line(record)
        self.event_count += 1
        if self.publish is not None:
            self.publish(str(record["event"]), line.rstrip(b"\n"))

    def frame(self, result: FrameResult, image: np.ndarray | None) -> None:
        """Write a frame's record to --detections and its annotated image to the image outputs."""
        if self.detections is not None:
            self.detections.write(detection_record(result))
        if image is None:
            return
        video, window = self.videos.get(result.stream_id), self.window
        web = self.web if self.web is not None and self.web.frame_due(result.stream_id) else None
        if video is None and window is None and web is None:
            return
        canvas = draw_faces(image, result)
        if web is not None:
            web.frame(result.stream_id, canvas)
        if video is not None:
            video.write(canvas)
        if window is not None:
            window.show(result.stream_id, canvas)

    def end_stream(self, stream_id: str) -> None:
        """Finish a stream's outputs (its video file)."""
        video = self.videos.get(stream_id)
        if video is not None:
            video.close()

    def close(self) -> None:
        """Close every output."""
        for part in (self.events, self.detections, *self.videos.values(), self.window):
            if part is not None:
                part.close()


# ------------------------------------------------------------------------------------------------
# the sink's core: reorder, match, track (no sockets: tested directly)


@dataclass
class _Pending:
    message: DescriptorsMessage | FacesMessage
    detected: bool
    arrived: float


class StreamSink:
    """One stream's reorder buffer, tracker and images."""

    def __init__(self, stream_id: str, live: bool, tracker: FaceTracker, need_images: bool, hold_s: float) -> None:
        self.stream_id, self.live, self.tracker = stream_id, live, tracker
        self.need_images, self.hold_s = need_images, hold_s
        self.pending: dict[int, _Pending] = {}
        self.images: dict[int, np.ndarray] = {}
        self.next_index = 0  # file streams: the next frame to process
        self.last_processed = -1
        self.frame_count: int | None = None  # from EndOfStream
        self.processed = 0
        self.finished = False
        self.last_descriptor: dict[int, np.ndarray] = {}  # per track, its latest embedded face

    def seen(self, frame_index: int) -> bool:
        """Whether this frame was already processed or is waiting (a duplicate after a re-send)."""
        return frame_index < self.next_index or frame_index in self.pending

    def ready(self, now: float, flush: bool) -> Iterator[tuple[int, _Pending, np.ndarray | None]]:
        """The frames that can be processed now, in order."""
        if not self.live:
            while self.next_index in self.pending:
                image = self.images.get(self.next_index)
                if self.need_images and image is None:
                    return  # the image comes straight from the source, normally long before the result
                item = self.pending.pop(self.next_index)
                self.images.pop(self.next_index, None)
                self.next_index += 1
                yield self.next_index - 1, item, image
            return
        for frame_index in sorted(self.pending):
            item = self.pending[frame_index]
            in_order = frame_index == self.last_processed + 1
            waited = now - item.arrived >= self.hold_s
            image = self.images.get(frame_index)
            if not (in_order or waited or flush) or (self.need_images and image is None and not (waited or flush)):
                return
            del self.pending[frame_index]
            self.images.pop(frame_index, None)
            self.last_processed = frame_index
            yield frame_index, item, image
        for old in [i for i in self.images if i <= self.last_processed]:
            del self.images[old]
        while len(self.images) > 64:  # images whose results were lost with a worker: bounded
            del self.images[min(self.images)]

    @property
    def complete(self) -> bool:
        """Whether every frame of a file stream has been processed (live streams end with the source)."""
        if self.frame_count is None:
            return False
        return self.live or self.next_index >= self.frame_count


def live_reorder_s(pipeline: PipelineConfig, endpoints: dict[str, str]) -> float:
    """How long a live result may wait for an earlier one. Results can only come out of order when several
    detect or embed workers run, or more workers may join (`facestream stage` over tcp://, or over ipc://
    in a fixed pipeline.run_dir): else nothing is worth waiting for, and holding would only add latency."""
    parallel = int(pipeline.detect_workers) > 1 or int(pipeline.embed_workers) > 1
    joinable = bool(pipeline.run_dir) or any(str(e).startswith("tcp://") for e in endpoints.values())
    return float(pipeline.live_reorder_ms) / 1000 if parallel or joinable else 0.0


def tracker_max_age_s(tracker_config: TrackerConfig, live: bool, fps: float, detect_every: int = 1) -> float | None:
    """How long a track survives unseen, in seconds of the frames' timestamps (media time for files,
    wall-clock capture time for live streams): ``tracker.max_age_s`` (files) or ``live_max_age_s`` (live),
    at least the time of the detect_every frames the tracker carries boxes over. None when an old config
    sets ``tracker.max_age`` > 0: ages then count frames, exactly as before that key was replaced."""
    if int(tracker_config.max_age) > 0:
        return None
    seconds = float(tracker_config.live_max_age_s if live else tracker_config.max_age_s)
    return max(seconds, detect_every / fps)


def embedded_part(message: DescriptorsMessage, rows: np.ndarray) -> DescriptorsMessage:
    """The message restricted to `rows` (the faces that carry a descriptor); the message itself when all do."""
    if len(rows) == len(message):
        return message
    return DescriptorsMessage(
        message.stream_id, message.frame_index, message.timestamp, message.width, message.height,
        message.boxes[rows], message.scores[rows], message.landmarks[rows], message.quality[rows],
        message.descriptors[rows], None if message.track_ids is None else message.track_ids[rows],
        message.box_source[rows], message.embed[rows], message.scanned,
    )  # fmt: skip


class SinkCore:
    """Messages in (any order, duplicates allowed), processed frames and events out, in order per stream."""

    def __init__(
        self,
        streams: dict[str, bool],
        matcher: Matcher,
        outputs: SinkOutputs,
        tracker_config: TrackerConfig,
        *,
        detect_every: int = 1,
        live_hold_s: float = 0.2,
        stats: StageStats | None = None,
        unknowns: UnknownTracks | None = None,
        kiosk: KioskDecider | None = None,
        event_descriptors: bool = False,
        stream_fps: dict[str, float] | None = None,
    ) -> None:
        self.matcher, self.outputs = matcher, outputs
        self.unknowns, self.kiosk = unknowns, kiosk
        self.event_descriptors = event_descriptors  # descriptors are biometric data: off unless configured
        self.stats = stats or StageStats()
        gate = QualityGate(
            float(tracker_config.min_face_size),
            float(tracker_config.min_sharpness),
            float(tracker_config.min_score),
        )
        options = {
            "iou_threshold": float(tracker_config.iou_threshold),
            "max_age": max(int(tracker_config.max_age), int(detect_every)),  # boxes carried over skipped frames
            "min_votes": int(tracker_config.min_votes),
            "decision": str(tracker_config.decision),
            "best_faces": int(tracker_config.best_faces),
            "switch_votes": int(tracker_config.switch_votes),
            "switch_ratio": float(tracker_config.switch_ratio),
            "vote_decay": float(tracker_config.vote_decay),
        }
        # Frame images: for the annotated outputs, and for the chips of the unknown tracks' kept faces.
        need_images = outputs.wants_images or (unknowns is not None and unknowns.chip_dir is not None)
        fps = stream_fps or {}
        self.streams = {
            sid: StreamSink(sid, live, FaceTracker(sid, gate=gate, **options, max_age_s=tracker_max_age_s(
                tracker_config, live, float(fps.get(sid) or 25.0), int(detect_every))), need_images, live_hold_s)
            for sid, live in streams.items()
        }  # fmt: skip
        self.cut_distance = float(tracker_config.scene_cut_distance)
        self.summaries: dict[str, dict[str, Any]] = {}
        self._at: dict[str, tuple[int, float]] = {}  # per stream: the last frame processed (index, timestamp)
        self.acks: dict[str, list[int]] = {}

    # -- input ---------------------------------------------------------------------------------

    def _stream(self, stream_id: str, what: str) -> StreamSink | None:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise MessageError(f"{what} for unknown stream {stream_id[:40]!r}")
        return None if stream.finished else stream

    def add(self, message: messages.Message, channel: str, now: float | None = None) -> None:
        """One decoded message from `channel` ("descriptors" or "sink_in"); MessageError if it does not belong."""
        now = time.monotonic() if now is None else now
        if channel == "descriptors":
            if not isinstance(message, DescriptorsMessage):
                raise MessageError(f"descriptors: unexpected {type(message).__name__}")
            self._add_result(message, True, now)
        elif isinstance(message, FrameMessage):
            stream = self._stream(message.stream_id, "image")
            oldest = (stream.last_processed + 1 if stream.live else stream.next_index) if stream else 0
            if stream is not None and message.frame_index >= oldest:
                stream.images[message.frame_index] = message.image
        elif isinstance(message, FacesMessage):
            if len(message):
                raise MessageError("sink_in: a skip notice must have no faces")
            self._add_result(message, False, now)
        elif isinstance(message, EndOfStream):
            stream = self._stream(message.stream_id, "end of stream")
            if stream is not None:
                stream.frame_count = message.frame_count
        else:
            raise MessageError(f"sink_in: unexpected {type(message).__name__}")

    def _add_result(self, message: DescriptorsMessage | FacesMessage, detected: bool, now: float) -> None:
        stream = self._stream(message.stream_id, "result")
        if stream is None:
            return
        index = message.frame_index
        if detected:  # duplicates too: the first ack may have been lost
            self.acks.setdefault(stream.stream_id, []).append(index)
        if stream.live and index <= stream.last_processed:
            self.stats.count("late")
            return
        if stream.seen(index):
            self.stats.count("duplicates")
            return
        if detected:
            self.stats.count("received")
        stream.pending[index] = _Pending(message, detected, now)

    def take_acks(self) -> dict[str, list[int]]:
        """The frame indices processed since the last call, per stream (sent to the source as acks)."""
        acks, self.acks = self.acks, {}
        return acks

    # -- processing ----------------------------------------------------------------------------

    def pump(self, now: float | None = None, flush: bool = False) -> int:
        """Process every frame that is ready; finish complete streams. The number of frames processed."""
        now = time.monotonic() if now is None else now
        done = 0
        for stream in self.streams.values():
            if stream.finished:
                continue
            # A live stream that has ended holds nothing back: nothing more will come.
            for frame_index, item, image in stream.ready(now, flush or stream.frame_count is not None):
                started = time.perf_counter()
                self._process(stream, frame_index, item, image)
                self.stats.latency("process", time.perf_counter() - started)
                if stream.live:  # capture -> result and events; frames the tracker carried over apart
                    name = "capture_to_result" if item.detected else "capture_to_result_carried"
                    self.stats.latency(name, max(0.0, time.time() - item.message.timestamp))
                done += 1
            if stream.complete:
                self.finish(stream.stream_id)
        return done

    def _process(self, stream: StreamSink, frame_index: int, item: _Pending, image: np.ndarray | None) -> None:
        message, tracker = item.message, stream.tracker
        faces: list[FaceResult] = []
        scanned = bool(item.detected and message.scanned)
        if item.detected:
            assert isinstance(message, DescriptorsMessage)
            # Faces the detect worker did not send to the embedder (embed 0) are tracked but not matched.
            embedded = np.flatnonzero(np.asarray(message.embed, bool))
            part = embedded_part(message, embedded)
            self._end_tracks_at_a_cut(stream, frame_index, part)
            track_ids = tracker.update(frame_index, message.timestamp, message.boxes, message.scores, message.quality)
            part_ids = track_ids[embedded]
            for i, track_id in enumerate(part_ids.tolist()):
                stream.last_descriptor[track_id] = np.array(part.descriptors[i], np.float32)
            identities = [UNKNOWN] * len(message)
            distances = np.full(len(message), np.nan)
            chips = None if image is None else FrameChips(image, part.landmarks)
            if len(part):
                matches = self.matcher.identify(np.asarray(part.descriptors, np.float32))
                for row, i in enumerate(embedded.tolist()):
                    identities[i], distances[i] = matches.identities[row], float(matches.distances[row])
                self._observe_faces(stream, frame_index, part, part_ids, matches, chips)
            observed_identities, observed_distances = list(identities), distances.copy()
            if tracker.decision == "mean" and len(part):
                mean_identities, mean_distances = self._match_track_means(tracker, part_ids, part)
                for row, i in enumerate(embedded.tolist()):
                    observed_identities[i], observed_distances[i] = mean_identities[row], mean_distances[row]
            for i in embedded.tolist():
                if math.isfinite(observed_distances[i]):  # NaN: nobody in the gallery (or face gated out)
                    tracker.add_observation(int(track_ids[i]), observed_identities[i], float(observed_distances[i]),
                                            message.quality[i], float(message.scores[i]))  # fmt: skip
            chosen = set(embedded.tolist())
            for i, track_id in enumerate(track_ids.tolist()):
                track = tracker.tracks[track_id]
                source = BOX_SOURCES.get(int(message.box_source[i]), "carried")
                faces.append(
                    FaceResult(
                        [int(v) for v in message.boxes[i]],
                        track_id,
                        track.identity or UNKNOWN,
                        track.distance if track.identity else None,
                        float(message.scores[i]),
                        identities[i] if i in chosen else None,
                        float(distances[i]) if i in chosen else None,
                        source,
                    )
                )
                self.stats.count(f"faces_{source}")
            self.stats.count("faces", len(message))
            if self.outputs.web is not None and len(part):
                weights = tracker.gate.weights(part.quality, part.scores)
                self.outputs.web.faces(stream.stream_id, part, [faces[i] for i in embedded.tolist()], weights, chips)
        else:
            track_ids, boxes = tracker.predict_only(frame_index, message.timestamp)
            for track_id, box in zip(track_ids.tolist(), boxes.tolist()):
                track = tracker.tracks[track_id]
                faces.append(
                    FaceResult(box, track_id, track.identity or UNKNOWN, track.distance if track.identity else None)
                )
                self.stats.count("faces_carried")
            self.stats.count("skipped_detection")
        self._emit(stream, tracker.pop_events(), (frame_index, message.timestamp))
        if self.kiosk is not None:
            for decision in self.kiosk.advance(stream.stream_id, message.timestamp):
                self.outputs.event(decision.to_record())
        detected = item.detected and (scanned or len(message) > 0)
        result = FrameResult(
            stream.stream_id, frame_index, message.timestamp, message.width, message.height, detected, faces, scanned
        )
        self.outputs.frame(result, image)
        stream.processed += 1
        self.stats.count("frames")

    def _match_track_means(
        self, tracker: FaceTracker, track_ids: np.ndarray, message: DescriptorsMessage
    ) -> tuple[list[str], np.ndarray]:
        """decision="mean": each face joins its track's best faces; the tracks' mean descriptors are matched in
        one batch. Per face: its track's match (NaN distance where the quality gate turned the face away)."""
        identities = [UNKNOWN] * len(track_ids)
        distances = np.full(len(track_ids), np.nan)
        kept = [
            i for i, track_id in enumerate(track_ids.tolist())
            if tracker.add_face(track_id, message.descriptors[i], message.quality[i], float(message.scores[i]))
        ]  # fmt: skip
        if not kept:
            return identities, distances
        means = np.stack([tracker.mean_descriptor(int(track_ids[i])) for i in kept])
        matches = self.matcher.identify(means.astype(np.float32))
        for row, i in enumerate(kept):
            identities[i], distances[i] = matches.identities[row], float(matches.distances[row])
        return identities, distances

    def _observe_faces(
        self, stream: StreamSink, frame_index: int, message: DescriptorsMessage, track_ids: np.ndarray, matches: Any,
        chips: FrameChips | None = None,
    ) -> None:  # fmt: skip
        """Unknown-face collection (every face, with its quality weight) and kiosk evidence (faces the tracker's
        quality gate accepts only), from this frame's own per-face matches."""
        if self.unknowns is None and self.kiosk is None:
            return
        weights = stream.tracker.gate.weights(message.quality, message.scores)
        if self.unknowns is not None:
            for i, track_id in enumerate(track_ids.tolist()):
                chip = None if chips is None else functools.partial(chips, i)
                self.unknowns.observe(stream.stream_id, track_id, frame_index, message.timestamp, message.boxes[i],
                                      float(message.scores[i]), float(weights[i]), message.descriptors[i],
                                      chip)  # fmt: skip
        if self.kiosk is not None and hasattr(matches, "names"):
            for i, evidence in enumerate(evidence_from_matches(matches, frame_index, message.timestamp)):
                if weights[i] > 0:
                    decision = self.kiosk.observe(stream.stream_id, int(track_ids[i]), evidence)
                    if decision is not None:
                        self.outputs.event(decision.to_record())

    def _emit(self, stream: StreamSink, events: list[TrackEvent], at: tuple[int, float] | None = None) -> None:
        """Track events out; an ended track also closes its unknown-face record and its kiosk decision.

        `at` is the frame being processed (index, timestamp): an end is decided frames after the track's last
        detection, so its event is stamped with that frame (events stay in frame order) and carries the last
        detection as ``last_frame`` / ``last_timestamp``."""
        if at is not None:
            self._at[stream.stream_id] = at
        for event in events:
            record = event_record(event)
            if isinstance(event, TrackEnded):
                record["last_frame"], record["last_timestamp"] = record["frame_index"], record["timestamp"]
                if at is not None and at[0] > event.frame_index:
                    record["frame_index"], record["timestamp"] = at[0], _number(at[1])
            if self.event_descriptors and isinstance(event, TrackIdentified):
                tracker = stream.tracker
                descriptor = (tracker.mean_descriptor(event.track_id) if tracker.decision == "mean"
                              else stream.last_descriptor.get(event.track_id))  # fmt: skip
                if descriptor is not None:
                    record["descriptor"] = [round(float(v), 6) for v in descriptor]
            self.outputs.event(record)
            if isinstance(event, TrackEnded):
                if self.outputs.web is not None:
                    self.outputs.web.end(stream.stream_id, event.track_id)
                if self.unknowns is not None:
                    self.unknowns.end(stream.stream_id, event.track_id, event.identity)
                if self.kiosk is not None:
                    decision = self.kiosk.end_track(stream.stream_id, event.track_id)
                    if decision is not None:
                        self.outputs.event(decision.to_record())

    def _end_tracks_at_a_cut(self, stream: StreamSink, frame_index: int, message: DescriptorsMessage) -> None:
        """A scene cut can put another person where a tracked face was: the boxes overlap, so the tracker
        (which sees boxes only) would carry the track, and its identity, over to a stranger, and a blurry
        stranger never gets the votes to correct it. The descriptors tell: when a face that would continue a
        track is farther than `tracker.scene_cut_distance` from that track's last face, every track of the
        stream ends here and the faces start new ones. The assignment is the tracker's own rule (greedy IoU
        on the predicted boxes), computed beforehand with its public functions."""
        if self.cut_distance <= 0 or not len(message) or not stream.last_descriptor:
            return
        tracker = stream.tracker
        track_ids, predicted = tracker.predict_only(frame_index, message.timestamp)
        if not len(track_ids):
            return
        rows, columns = greedy_assignment(box_iou(predicted, message.boxes), tracker.iou_threshold)
        for row, column in zip(rows.tolist(), columns.tolist()):
            last = stream.last_descriptor.get(int(track_ids[row]))
            if last is None:
                continue
            distance = float(np.linalg.norm(last - message.descriptors[column]))
            if distance > self.cut_distance:
                log.info("%s: scene cut at frame %d (the face continuing track %d is %.2f from its last face): "
                         "every track ends", stream.stream_id, frame_index, int(track_ids[row]), distance)  # fmt: skip
                tracker.finish()
                stream.last_descriptor.clear()
                self.stats.count("scene_cuts")
                return

    def finish(self, stream_id: str) -> None:
        """End one stream: its tracks end, its summary is written, its video closed."""
        stream = self.streams[stream_id]
        if stream.finished:
            return
        stream.finished = True
        stream.tracker.finish()
        self._emit(stream, stream.tracker.pop_events(), self._at.get(stream_id))
        record = summary_record(stream_id, stream.processed, stream.tracker.identity_summary())
        self.summaries[stream_id] = record
        self.outputs.event(record)
        self.outputs.end_stream(stream_id)
        dropped = len(stream.pending)
        if dropped:
            log.warning("%s: %d results after a missing frame were not processed (run stopped)", stream_id, dropped)
        stream.pending.clear()
        stream.images.clear()
        log.info("%s: finished, %d frames", stream_id, stream.processed)

    @property
    def done(self) -> bool:
        """Whether every stream has finished."""
        return all(stream.finished for stream in self.streams.values())

    def close(self) -> None:
        """Stop: process what is in order, finish every stream, close the outputs."""
        self.pump(flush=True)
        for stream_id in self.streams:
            self.finish(stream_id)
        if self.unknowns is not None:
            self.unknowns.close()
        self.outputs.close()
        self.matcher.close()


# ------------------------------------------------------------------------------------------------
# the sink process


class SinkStage(StageProcess):
    """The sink process: descriptors in, gallery match, tracking, events and the other outputs out, in order."""

    role = "sink"
    quit = False  # the user closed the live window: the whole run stops

    def run(self) -> int:
        """Receive until every stream has finished or the run stops, then flush the outputs."""
        pipeline, outputs_spec = self.config.pipeline, self.spec["outputs"]
        hwm = int(pipeline.faces_hwm)
        self.descriptors = open_socket(self.context, zmq.PULL, self.endpoints["descriptors"], bind=True, hwm=hwm)
        self.sink_in = open_socket(
            self.context, zmq.PULL, self.endpoints["sink_in"], bind=True, hwm=4 * int(pipeline.inflight_frames) + 64
        )
        self.acks = open_socket(self.context, zmq.PUB, self.endpoints["acks"], bind=True, hwm=100_000)
        self.events = open_socket(self.context, zmq.PUB, self.endpoints["events"], bind=True, hwm=100_000)
        control = self.subscribe_control()
        streams = {item["stream_id"]: item["kind"] in LIVE_KINDS for item in self.spec["sources"]}
        fps = {
            sid: float(self.spec["stream_fps"].get(sid) or self.config.outputs.live_video_fps) for sid in streams
        }
        matcher = open_matcher(self.config, outputs_spec.get("gallery"))
        outputs = SinkOutputs(
            events=outputs_spec.get("events"),
            detections=outputs_spec.get("detections"),
            video=outputs_spec.get("video"),
            stream_fps=fps,
            codec=str(self.config.outputs.video_codec),
            show=bool(outputs_spec.get("show")),
            publish=lambda topic, line: self.events.send_multipart([topic.encode(), line], zmq.NOBLOCK),
            web=self._web_feed(outputs_spec),
        )
        unknowns = None
        if outputs_spec.get("unknowns"):
            sources = {item["stream_id"]: str(item.get("uri", "")) for item in self.spec["sources"]}
            unknowns = UnknownTracks(outputs_spec["unknowns"], sources=sources,
                                     chip_dir=chips_dir(outputs_spec["unknowns"]))  # fmt: skip
        kiosk = None
        if self.config.kiosk.enabled:
            from .domain.kiosk import KioskPolicy

            kiosk = KioskDecider(KioskPolicy.from_config(self.config.kiosk))
        self.core = SinkCore(
            streams,
            matcher,
            outputs,
            self.config.tracker,
            detect_every=int(pipeline.detect_every),
            live_hold_s=live_reorder_s(pipeline, self.endpoints),
            stats=self.stats,
            unknowns=unknowns,
            kiosk=kiosk,
            event_descriptors=bool(self.config.outputs.event_descriptors),
            stream_fps=fps,
        )
        self.extra_stats = self._extra_stats
        refresh_every = float(pipeline.gallery_refresh_s)
        next_refresh = time.monotonic() + refresh_every
        poller = zmq.Poller()
        for socket in (self.descriptors, self.sink_in, control):
            poller.register(socket, zmq.POLLIN)
        self.ready()
        try:
            while not self.stopping and not self.core.done:
                ready = dict(poller.poll(20))
                if control in ready:
                    self.handle_control()
                if self.sink_in in ready:
                    self._drain(self.sink_in, "sink_in")
                if self.descriptors in ready:
                    self._drain(self.descriptors, "descriptors")
                self.core.pump()
                self._publish_acks()
                if outputs.window is not None and outputs.window.quit:
                    self.quit = True
                    self.request_stop("q pressed in the window")
                if refresh_every > 0 and time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh_every
                    try:
                        if matcher.refresh():
                            log.info("gallery changed: reloaded")
                            self.stats.count("gallery_reloads")
                    except Exception as error:  # a gallery being rewritten must not stop the run
                        log.warning("gallery refresh failed (keeping the previous state): %s", error)
                self.send_stats()
        finally:
            self.core.close()
        return 0

    def _web_feed(self, outputs_spec: dict[str, Any]) -> WebFeed | None:
        """The ``preview`` PUB socket and what goes on it, when the run serves a web view (spec outputs "web")."""
        if not outputs_spec.get("web"):
            return None
        web = self.config.web
        self.preview = open_socket(self.context, zmq.PUB, self.endpoints["preview"], bind=True, hwm=64)

        def publish(topic: bytes, payload: bytes) -> None:
            try:
                self.preview.send_multipart([topic, payload], zmq.NOBLOCK)
            except zmq.Again:
                self.stats.count("preview_dropped")

        return WebFeed(publish, fps=float(web.preview_fps), max_width=int(web.preview_max_width),
                       jpeg_quality=int(web.jpeg_quality))  # fmt: skip

    def _drain(self, socket: zmq.Socket, channel: str, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                message = messages.recv(socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            except MessageError as error:
                self.malformed(f"{channel}: {error}")
                continue
            try:
                self.core.add(message, channel)
            except MessageError as error:
                self.malformed(str(error))

    def _publish_acks(self) -> None:
        for stream_id, frames in self.core.take_acks().items():
            try:
                self.acks.send(encode_json({"type": "ack", "stream_id": stream_id, "frames": frames}), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the source re-sends and we ack again

    def _extra_stats(self) -> dict[str, Any]:
        streams = {
            sid: {"processed": s.processed, "waiting": len(s.pending), "finished": s.finished}
            for sid, s in self.core.streams.items()
        }
        return {
            "streams": streams,
            "summaries": self.core.summaries,
            "events": self.core.outputs.event_count,
            "gallery_people": getattr(self.core.matcher, "people_count", None),  # Prometheus (integrations/metrics.py)
            "quit": self.quit,
        }
