"""What the web view (`run --web`, `--preview`) gets from the sink, on its private ``preview`` PUB socket:
annotated frames as JPEGs at a capped rate and unknown faces with their descriptor and aligned chip
(`WebFeed`); `FrameChips` makes a frame's chips once for the web feed and the unknowns file."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable

import cv2
import numpy as np

from ..domain.tracker import UNKNOWN
from .records import TrackedFaces, json_line, json_number


def face_chip(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One face's 150x150 RGB chip from the frame and its 5 landmarks, exactly as the embed stage made it
    (the chips themselves do not travel back to the sink)."""
    from ...engines.chips import extract_face_chips

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

    def faces(self, stream_id: str, frame_index: int, timestamp: float, faces: TrackedFaces, weights: np.ndarray,
              chips: FrameChips | None) -> None:  # fmt: skip
        """One detected frame's embedded faces, each with its descriptor and its track's identity after the frame;
        `chips` makes their chips (None: the frame image did not reach the sink)."""
        for i in range(len(faces)):
            track_id = int(faces.track_ids[i])
            key, weight, score = (stream_id, track_id), float(weights[i]), float(faces.scores[i])
            if not weight > 0:
                continue
            best = self.best.get(key)
            better = best is None or (weight, score) > best[:2]
            if better:
                self.best[key] = best = (weight, score, False)
            if faces.identities[i] != UNKNOWN or best is None or best[2]:
                continue
            self.best[key] = (best[0], best[1], True)
            chip_png = None
            if chips is not None:
                chip = chips(i)
                ok, png = cv2.imencode(".png", np.ascontiguousarray(chip[:, :, ::-1]))
                chip_png = base64.b64encode(png.tobytes()).decode("ascii") if ok else None
            record = {
                "event": "unknown_face", "stream_id": stream_id, "track_id": track_id,
                "frame_index": int(frame_index), "timestamp": json_number(timestamp),
                "box": [int(v) for v in faces.boxes[i]], "quality": json_number(weight), "score": json_number(score),
                "descriptor": [float(v) for v in faces.descriptors[i]], "chip_png": chip_png,
            }  # fmt: skip
            self.publish(b"unknown_face", json_line(record).rstrip(b"\n"))
            self.faces_sent += 1

    def end(self, stream_id: str, track_id: int) -> None:
        """Forget a finished track's best faces."""
        self.best.pop((stream_id, track_id), None)
