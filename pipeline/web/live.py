"""The web view's live state: what the feed thread hears (events, newest JPEG per stream, unknown tracks,
health), what the pages read; thread-safe, readers poll revision numbers."""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_TRACKS = 300  # live unknown tracks kept (the oldest ended ones go first)
FACES_PER_TRACK = 3
UNKNOWN = "unknown"


@dataclass
class UnknownTrack:
    """An unknown track seen live: its best faces (by quality, then detector score) as the sink sent them."""

    stream_id: str
    track_id: int
    faces: list[dict[str, Any]] = field(default_factory=list)  # + "descriptor" (np), "chip" (PNG bytes | None)
    identity: str | None = None  # a name once the track is identified: then it is no longer unknown
    ended: bool = False
    updated: float = 0.0


class LiveState:
    """Thread-safe: events, the newest JPEG per stream, unknown tracks, health. Readers poll sequence numbers."""

    def __init__(self, history: int = 200) -> None:
        self.lock = threading.Lock()
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(1, history))
        self.event_seq = 0
        self.frames: dict[str, tuple[int, bytes, float]] = {}
        self.frame_seq = 0
        self.unknowns: OrderedDict[tuple[str, int], UnknownTrack] = OrderedDict()
        self.unknowns_rev = 0
        self.health: dict[str, Any] | None = None
        self.health_rev = 0
        self.gallery_rev = 0
        self.closed = False
        self.pipeline = True  # False: `serve` with no pipeline to attach to (gallery management only)

    # -- writers (the feed thread, the supervisor) -------------------------------------------------

    def add_event(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.event_seq += 1
            self.events.append((self.event_seq, record))
            kind, key = record.get("event"), (str(record.get("stream_id")), record.get("track_id"))
            track = self.unknowns.get(key) if isinstance(key[1], int) else None
            if track is not None and kind == "track_identified":
                identity = record.get("identity")
                track.identity = None if identity in (None, UNKNOWN) else str(identity)
                self.unknowns_rev += 1
            elif track is not None and kind == "track_ended":
                track.ended = True

    def add_frame(self, stream_id: str, jpeg: bytes) -> None:
        with self.lock:
            self.frame_seq += 1
            self.frames[stream_id] = (self.frame_seq, jpeg, time.time())

    def add_unknown_face(self, record: dict[str, Any]) -> None:
        """One ``unknown_face`` record from the sink; ValueError when it is malformed."""
        stream_id, track_id = record.get("stream_id"), record.get("track_id")
        if not isinstance(stream_id, str) or not isinstance(track_id, int) or isinstance(track_id, bool):
            raise ValueError("unknown_face: stream_id (text) and track_id (integer) are required")
        descriptor = np.asarray(record.get("descriptor"), np.float32)
        if descriptor.shape != (128,) or not np.all(np.isfinite(descriptor)):
            raise ValueError("unknown_face: descriptor must be 128 finite numbers")
        chip = record.get("chip_png")
        face = {
            "frame_index": int(record.get("frame_index", 0)),
            "timestamp": float(record.get("timestamp") or 0.0),
            "box": record.get("box"),
            "quality": float(record.get("quality") or 0.0),
            "score": float(record.get("score") or 0.0),
            "descriptor": descriptor,
            "chip": base64.b64decode(chip, validate=True) if isinstance(chip, str) else None,
        }
        with self.lock:
            key = (stream_id, track_id)
            track = self.unknowns.pop(key, None) or UnknownTrack(stream_id, track_id)
            self.unknowns[key] = track  # most recently updated last
            track.faces = [f for f in track.faces if f["frame_index"] != face["frame_index"]] + [face]
            track.faces.sort(key=lambda f: (-f["quality"], -f["score"], f["frame_index"]))
            del track.faces[FACES_PER_TRACK:]
            track.updated = time.time()
            while len(self.unknowns) > MAX_TRACKS:
                oldest = next((k for k, t in self.unknowns.items() if t.ended), next(iter(self.unknowns)))
                del self.unknowns[oldest]
            self.unknowns_rev += 1

    def set_health(self, snapshot: dict[str, Any]) -> None:
        with self.lock:
            self.health = snapshot
            self.health_rev += 1

    def gallery_changed(self) -> None:
        with self.lock:
            self.gallery_rev += 1
            self.unknowns_rev += 1

    def forget_tracks(self, keys: list[tuple[str, int]]) -> None:
        with self.lock:
            for key in keys:
                self.unknowns.pop(key, None)
            self.unknowns_rev += 1

    # -- readers --------------------------------------------------------------------------------

    def events_after(self, seq: int) -> list[tuple[int, dict[str, Any]]]:
        with self.lock:
            return [(s, e) for s, e in self.events if s > seq]

    def frame(self, stream_id: str) -> tuple[int, bytes, float] | None:
        with self.lock:
            return self.frames.get(stream_id)

    def streams(self) -> dict[str, float]:
        with self.lock:
            return {sid: when for sid, (_, _, when) in self.frames.items()}

    def unknown_tracks(self) -> list[UnknownTrack]:
        with self.lock:
            return [UnknownTrack(t.stream_id, t.track_id, list(t.faces), t.identity, t.ended, t.updated)
                    for t in self.unknowns.values()]  # fmt: skip

    def revisions(self) -> dict[str, int]:
        with self.lock:
            return {"events": self.event_seq, "frames": self.frame_seq, "unknowns": self.unknowns_rev,
                    "health": self.health_rev, "gallery": self.gallery_rev}  # fmt: skip
