"""What the sink makes of a frame and a track, and their JSON records.

`FrameResult`: one processed frame; its faces are a `TrackedFaces`, the `FaceBatch` the frame's descriptors
message brought (arrays, row i is face i) with the tracker's and the gallery's columns added. The records,
one JSON object a line (`json_line`; NaN is refused, so every line stays valid JSON):

* events (``--events FILE`` and the ``events`` PUB socket): ``track_started``, ``track_identified``,
  ``track_ended`` with ``stream_id, track_id, frame_index, timestamp, box`` (+ ``identity, distance,
  previous_identity``; ``track_ended`` + ``identity, distance, first_frame, first_timestamp, last_frame,
  last_timestamp, decided``: stamped with the frame where the end was decided, so events are in frame order;
  ``identity`` "unknown" and ``decided`` false when no face of the track passed the quality gate), and at each
  stream's end one ``summary`` line: per identity, its on-screen intervals (frames and seconds). On the PUB
  socket each event is two frames: the event name (subscribe to a prefix of it) and the same JSON;
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
  ``faces_carried``).

`describe_summary` / `format_time` turn a summary record into the lines `facestream run` prints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...engines.face_batch import BOX_CARRIED, BOX_REGION, BOX_SCAN, FaceBatch
from ..domain.tracker import UNKNOWN, OnScreenInterval, TrackEnded, TrackEvent


@dataclass
class TrackedFaces(FaceBatch):
    """One processed frame's faces as arrays, row i of every column face i: the `FaceBatch` of the frame's
    descriptors message (`of`; ``chips`` stay behind in the embed stage), or for a frame the tracker carried
    boxes over, ``boxes`` with ``scores`` NaN and ``box_source`` BOX_CARRIED (no detector ran for them on this
    frame; the other `FaceBatch` columns empty), with who each face is."""

    # (N,) int64; never None here
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # (N,) str: the track's decided identity, "unknown" while undecided
    identities: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    # (N,) float64: the decision's distance, NaN while undecided
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # (N,) str or None: this frame's own gallery answer; None: the face was not embedded on this frame
    match_identities: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    # (N,) float64: that answer's distance; NaN where there is none (or the gallery is empty)
    match_distances: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    @classmethod
    def of(cls, faces: FaceBatch, **columns: np.ndarray) -> TrackedFaces:
        """`faces`' columns (arrays shared, not copied) plus the given ones."""
        shared = {name: getattr(faces, name) for name in FaceBatch.__dataclass_fields__}
        return cls(**{**shared, **columns})


def no_faces() -> TrackedFaces:
    """A frame without faces."""
    return TrackedFaces(np.zeros((0, 4), np.int64), np.zeros(0, np.float64))


@dataclass
class FrameResult:
    """One processed frame of one stream: its faces, as written to --detections."""

    stream_id: str
    frame_index: int
    timestamp: float
    width: int
    height: int
    detected: bool
    faces: TrackedFaces = field(default_factory=no_faces)
    scanned: bool = False  # a full-frame detector ran on this frame


BOX_SOURCES = {BOX_SCAN: "scan", BOX_REGION: "region", BOX_CARRIED: "carried"}


def box_source_name(code: int) -> str:
    """A `FaceBatch.box_source` code as the records name it ("carried" for a code no detector gives)."""
    return BOX_SOURCES.get(int(code), "carried")


def json_number(value: float | None, digits: int = 6) -> float | None:
    """A float as it goes into a JSON record: rounded to `digits`, None for None, NaN or infinity."""
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
            value = json_number(value)
        record[name] = value
    if isinstance(event, TrackEnded):
        record["decided"] = event.identity is not None
        if event.identity is None:
            record["identity"] = UNKNOWN
    return record


def detection_record(result: FrameResult) -> dict[str, Any]:
    """A frame's JSON record for --detections."""
    faces, records = result.faces, []
    for i in range(len(faces)):
        match = None
        if faces.match_identities[i] is not None:
            match = {"identity": faces.match_identities[i], "distance": json_number(faces.match_distances[i])}
        records.append(
            {
                "box": [int(v) for v in faces.boxes[i]],
                "box_source": box_source_name(faces.box_source[i]),
                "score": json_number(faces.scores[i]),
                "track_id": int(faces.track_ids[i]),
                "identity": faces.identities[i],
                "distance": json_number(faces.distances[i]),
                "match": match,
            }
        )
    return {
        "stream_id": result.stream_id,
        "frame_index": result.frame_index,
        "timestamp": json_number(result.timestamp),
        "width": result.width,
        "height": result.height,
        "detected": result.detected,
        "scanned": result.scanned,
        "faces": records,
    }


def summary_record(stream_id: str, frames: int, summary: dict[str, list[OnScreenInterval]]) -> dict[str, Any]:
    """Per identity, its on-screen intervals; `seconds` adds up the intervals' durations."""
    identities = {}
    for identity, intervals in summary.items():
        spans = [
            {
                "first_frame": i.first_frame,
                "last_frame": i.last_frame,
                "first_timestamp": json_number(i.first_timestamp),
                "last_timestamp": json_number(i.last_timestamp),
                "track_ids": list(i.track_ids),
            }
            for i in intervals
        ]
        seconds = sum(i.last_timestamp - i.first_timestamp for i in intervals)
        identities[identity] = {"intervals": spans, "seconds": json_number(seconds, 3)}
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


def json_line(record: dict[str, Any]) -> bytes:
    """One record as a compact JSON line (NaN refused: records must stay valid JSON)."""
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
