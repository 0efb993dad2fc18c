"""Followers and scans: the detect worker's per-stream plan for running the detector on less of each frame.

Full-frame MMOD costs ~250 ms for a 640x360 frame and ~0.9 s for 1280x720 on two cores, so a live camera
cannot get a full-frame detection on every frame. Instead (``detector.follow``: ``live`` for live
streams, ``all`` for every stream, ``off`` for today's full-frame detection on every frame):

* **followers**: per stream, the detect worker keeps the faces it saw on its last frame. On each new frame
  it runs the detector only around each face's predicted box (last box moved by its velocity; the
  region covers it grown by ``detector.region_margin`` of its size on each side, for motion):
  ``FaceDetector.detect_regions`` (only the pyramid levels that can produce a face of that size, and
  the same rectangles full-frame detection gives for faces there: tests/test_follow.py compares them with
  dlib's full-frame boxes on the demo clip). Landmarks, chips and quality follow as for full-frame boxes. Every box sent
  is the detector's box on that very frame (``box_source`` "region").
* **scans**: full-frame detection, whose faces become followers. A scan runs
  - *at once* when the follower state cannot be trusted: a stream's first frame, a change of frame size,
    a scene cut (the 64x36 thumbnail test of `scenes.scene_changed`, ``pipeline.scene_cut_threshold``).
    The followers are dropped; files scan that very frame (``box_source`` "scan"), live streams start a
    background scan (below) and send frames without faces until it ends, so that no live frame ever
    waits for a full-frame detection (capture-to-result stays that of region detection). The faces
    message of a cut or a size change says ``new_scene``, and the sink ends the stream's tracks there;
  - *in the background*, live streams: every ``detector.scan_interval_s`` of wall-clock time, and at once
    when the picture changed outside the followed regions (``detector.motion_threshold`` of the pixels
    of a small grey image, NVR-style motion detection, changed by more than ``detector.motion_pixel_delta``
    grey levels). A background scan runs in its own thread with its own ONNX Runtime session
    (``detector.scan_threads`` intra-op threads; its thread's niceness raised by ``detector.scan_nice``),
    so the per-frame path never waits for it: on two cores
    the followers keep their frame rate while a scan is under way; a cut stops the scan under way before
    its next network call (`FaceDetector.detect`'s ``stop``). When it ends, its faces that no
    follower covers become followers from the next frame on (found there by region detection, so
    their first boxes are region boxes of that frame).
  - file streams (``follow: all``) scan synchronously on the frame where ``scan_interval_s`` of media time
    has passed (or motion outside the followed regions): results do not depend on thread timing, so a
    file gives the same output on every run.
* **embedding** (item 5 of issue 14): a face is embedded when its follower has had fewer than
  ``embedder.embed_first`` faces embedded (its identity is still being decided: the sink's decision
  averages a track's best faces), when its quality weight (`tracker.QualityGate`) is
  ``embedder.improve_factor`` times the best embedded so far, or when ``embedder.reembed_interval_s``
  have passed since its last embedding; else it travels without a descriptor (``embed`` 0). With
  ``follow: off`` every face is embedded, as before.

State is per detect worker: with several workers each follows the frames it receives (a worker that
gets every other frame predicts over two frame intervals). A follower its region missed on two frames
in a row and has not found for ``detector.follow_miss_s`` is dropped; the next scan finds the face again
if it is still there.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ...engines.detector import DetectionStoppedError
from ...engines.face_batch import BOX_REGION, BOX_SCAN, FaceBatch
from ...errors import ConfigError
from ..runtime.messages import FacesMessage, FrameMessage
from .scenes import frame_thumbnail, scene_changed
from .tracker import QualityGate, box_iou, greedy_assignment

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

FOLLOW_MODES = ("off", "live", "all")
MOTION_WIDTH = 96  # px: the motion image's width (height keeps the aspect ratio); ~0.2 ms a frame


def faces_message(
    frame: FrameMessage, predictor: Any, boxes: np.ndarray, scores: np.ndarray, box_source: np.ndarray,
    embed: np.ndarray | None, scanned: bool, gate: QualityGate | None = None,
) -> FacesMessage:  # fmt: skip
    """Landmarks, chips and quality of `boxes` on the frame, as one FacesMessage. `embed` None: decided by
    nobody yet (every face embedded)."""
    from ...engines.chips import extract_face_chips
    from ...engines.quality import face_quality

    image = frame.image
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    faces = FaceBatch()
    if len(boxes):  # embed None: an empty column, which FacesMessage fills with 1 (every face)
        landmarks = predictor.predict(image, boxes)
        chips = extract_face_chips(image, landmarks)
        faces = FaceBatch(
            boxes, np.asarray(scores, np.float64), landmarks, chips, quality=face_quality(chips, boxes, scores),
            box_source=np.asarray(box_source, np.uint8), embed=FaceBatch().embed if embed is None else embed,
        )  # fmt: skip
    return FacesMessage(frame.stream_id, frame.frame_index, frame.timestamp, width, height, faces, scanned,
                        frame.new_scene)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# geometry (pure)


def grow_boxes(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """(R,4) float regions: each [l,t,r,b] box grown by `margin` of its width/height on every side, clipped
    to the image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
    grown = boxes + np.concatenate([-size, size], axis=1) * margin
    return np.clip(grown, 0, [width - 1, height - 1, width - 1, height - 1])


def detect_regions(detector: Any, image: np.ndarray, faces: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Region detection around predicted face boxes (`FaceDetector.detect_regions`: the pyramid levels that
    can give a face of each box's size, cells within the box grown by `margin` per side)."""
    boxes, scores = detector.detect_regions(image, np.asarray(faces, np.float64).reshape(-1, 4), pad=margin)
    return np.asarray(boxes, np.int64).reshape(-1, 4), np.asarray(scores, np.float64)


def motion_image(image: np.ndarray) -> np.ndarray:
    """A small grey int16 picture of an RGB frame for `motion_outside`."""
    height, width = image.shape[:2]
    size = (MOTION_WIDTH, max(1, round(height * MOTION_WIDTH / width)))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (3, 3), 0).astype(np.int16)  # blur: sensor noise is not motion


def motion_outside(previous: np.ndarray, current: np.ndarray, regions: np.ndarray, frame_width: int,
                   pixel_delta: float) -> float:  # fmt: skip
    """The share of the motion image's pixels outside `regions` (frame coordinates) that changed by more
    than `pixel_delta` grey levels between two motion images of the same frame size."""
    changed = np.abs(current - previous) > pixel_delta
    scale = current.shape[1] / frame_width
    outside = np.ones_like(changed)
    for left, top, right, bottom in np.asarray(regions, np.float64).reshape(-1, 4).tolist():
        outside[
            int(top * scale) : int(np.ceil((bottom + 1) * scale)), int(left * scale) : int(np.ceil((right + 1) * scale))
        ] = False
    count = int(outside.sum())
    return float((changed & outside).sum()) / count if count else 0.0


def lower_thread_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux sets it per thread: ``PRIO_PROCESS`` with 0 is the
    calling thread). The scan thread runs the scan's network calls itself (one ONNX Runtime thread), so
    on a busy machine the followers, the embedder and the sink get the cores first and the scan takes
    what is left. Where it cannot be set (another OS, a limit), the scan runs at normal priority."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except OSError as error:
        log.debug("scan thread priority not lowered: %s", error)


# ------------------------------------------------------------------------------------------------
# per-stream state


@dataclass
class Followed:
    """One face being followed: its last box and when, its velocity (px per second per side), embeddings."""

    box: np.ndarray
    seen_at: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    embedded: int = 0
    best_weight: float = 0.0
    last_embed: float = -np.inf
    misses: int = 0  # frames in a row its region did not find it

    def predicted(self, timestamp: float, horizon: float) -> np.ndarray:
        """The last box moved by its velocity for the time since, at most `horizon` seconds: after a camera
        stall or a slow frame the velocity says nothing (2 s of it moved a slow face out of its region)."""
        return self.box + self.velocity * min(max(0.0, timestamp - self.seen_at), horizon)


@dataclass
class StreamState:
    size: tuple[int, int] | None = None
    thumbnail: np.ndarray | None = None
    motion: np.ndarray | None = None
    followed: list[Followed] = field(default_factory=list)
    last_scan: float = -np.inf  # timestamp of the frame the last scan ran on
    scan: Future | None = None  # a background scan under way
    scan_stop: threading.Event = field(default_factory=threading.Event)  # set: the scan under way stops early
    scan_frame: int = -1
    generation: int = 0  # +1 at each cut or size change
    scan_generation: int = 0  # the generation the scan under way started in


@dataclass(frozen=True)
class FollowSettings:
    mode: str = "live"
    scan_interval_s: float = 1.0
    region_margin: float = 0.25
    follow_miss_s: float = 0.3
    motion_threshold: float = 0.01
    motion_pixel_delta: float = 20.0
    scene_cut_threshold: float = 20.0
    embed_first: int = 16
    improve_factor: float = 1.5
    reembed_interval_s: float = 1.0
    scan_nice: int = 10

    @classmethod
    def from_config(cls, config: Config) -> FollowSettings:
        """The settings held in the typed ``detector:``, ``embedder:`` and ``pipeline:`` sections."""
        detector, embedder = config.detector, config.embedder
        mode = str(detector.follow)
        if mode not in FOLLOW_MODES:
            raise ConfigError(f"detector.follow must be one of {', '.join(FOLLOW_MODES)}, got {mode!r}")
        return cls(mode, float(detector.scan_interval_s), float(detector.region_margin),
                   float(detector.follow_miss_s), float(detector.motion_threshold),
                   float(detector.motion_pixel_delta), float(config.pipeline.scene_cut_threshold),
                   int(embedder.embed_first), float(embedder.improve_factor),
                   float(embedder.reembed_interval_s), int(detector.scan_nice))  # fmt: skip

    def applies(self, live: bool) -> bool:
        return self.mode == "all" or (self.mode == "live" and live)


class Follower:
    """The per-frame plan of one detect worker (module docstring): region detection around followed faces
    every frame, full-frame scans at once or in the background. `scan_detector` is a second FaceDetector
    (own session, own threads) for background scans; None runs every scan synchronously."""

    def __init__(self, settings: FollowSettings, detector: Any, predictor: Any, gate: QualityGate,
                 scan_detector: Any = None, stats: Any = None) -> None:  # fmt: skip
        """`stats`: a StageStats-like object whose count() also gets every counter (the stage's --stats)."""
        self.settings, self.detector, self.predictor, self.gate = settings, detector, predictor, gate
        self.stats = stats
        self.scan_detector = scan_detector
        self.executor = None
        if scan_detector is not None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="scan", initializer=lower_thread_priority,
                                               initargs=(settings.scan_nice,))  # fmt: skip
        self.streams: dict[str, StreamState] = {}
        self.counters: dict[str, int] = {}
        self.lock = threading.Lock()

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount
        if self.stats is not None:
            self.stats.count(name, amount)

    def close(self) -> None:
        """Stop the scans under way (at their next network call: the process exits without waiting out a
        full-frame detection) and the scan thread."""
        for state in self.streams.values():
            state.scan_stop.set()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the per-frame path ------------------------------------------------------------------------

    def process(self, frame: FrameMessage) -> FacesMessage:
        s, state = self.settings, self.streams.setdefault(frame.stream_id, StreamState())
        image, now = frame.image, frame.timestamp
        height, width = image.shape[:2]
        thumbnail = frame_thumbnail(image)
        motion = motion_image(image)
        reason = ""
        if state.size is None:
            reason = "first_frame"
        elif state.size != (width, height):
            reason = "size_change"
        elif scene_changed(state.thumbnail, thumbnail, s.scene_cut_threshold):
            reason = "scene_cut"
        previous_motion = state.motion
        state.size, state.thumbnail, state.motion = (width, height), thumbnail, motion
        if reason:  # the followed faces belong to another picture
            self.count(f"scan_{reason}")
            state.generation += 1  # a scan under way saw the old picture: its faces are not followed
            state.followed = []
            if self.executor is None or not frame.live:
                return self._new_scene(self._scan_now(frame, state), reason)
            # Live: even this scan runs in the background, so no frame waits for a full-frame detection
            # (capture-to-result stays that of region detection); its faces are followed once it ends. A
            # scan already under way saw the old picture: it is told to stop (it does so before its next
            # network call, one per tile of a large frame) and the new one starts as soon as it has.
            if state.scan is None:
                self._start_scan(state, frame)
            else:
                state.scan_stop.set()
                state.last_scan = -np.inf
            empty = faces_message(frame, self.predictor, np.zeros((0, 4)), np.zeros(0), np.zeros(0), None, False)
            return self._new_scene(empty, reason)

        self._collect_scan(state, now)
        # Followers unseen too long are gone (the next scan finds the face again if it is still there); "too
        # long" also needs two looks that missed, so a stalled camera or a slow frame does not drop a face.
        state.followed = [f for f in state.followed if f.misses < 2 or now - f.seen_at <= s.follow_miss_s]
        predicted = np.array([f.predicted(now, s.follow_miss_s) for f in state.followed]).reshape(-1, 4)
        regions = grow_boxes(predicted, s.region_margin, width, height)
        moved = (
            previous_motion is not None and previous_motion.shape == motion.shape
            and motion_outside(previous_motion, motion, regions, width, s.motion_pixel_delta) > s.motion_threshold
        )  # fmt: skip
        due = now - state.last_scan >= s.scan_interval_s
        if moved or due:
            if self.executor is None or not frame.live:
                self.count("scan_motion" if moved else "scan_interval")
                return self._scan_now(frame, state)
            if state.scan is None:
                self.count("scan_motion" if moved else "scan_interval")
                self._start_scan(state, frame)
        if not len(regions):
            return faces_message(frame, self.predictor, np.zeros((0, 4)), np.zeros(0), np.zeros(0), None, False)
        boxes, scores = detect_regions(self.detector, image, predicted, s.region_margin)
        self.count("region_frames")
        self.count("region_faces", len(boxes))
        return self._followed_faces(frame, state, boxes, scores, np.full(len(boxes), BOX_REGION), False)

    @staticmethod
    def _new_scene(message: FacesMessage, reason: str) -> FacesMessage:
        """Tell the sink the picture changed, so that it ends the stream's tracks: else a stranger where a
        tracked face was would continue that track, and its identity (a stream's first frame here need not
        be the sink's: another detect worker may have sent earlier ones)."""
        message.new_scene = message.new_scene or reason != "first_frame"
        return message

    def _start_scan(self, state: StreamState, frame: FrameMessage) -> None:
        assert self.executor is not None
        state.last_scan, state.scan_frame = frame.timestamp, frame.frame_index
        state.scan_stop = threading.Event()
        state.scan = self.executor.submit(self.scan_detector.detect, frame.image.copy(), None, state.scan_stop.is_set)
        state.scan_generation = state.generation

    def _scan_now(self, frame: FrameMessage, state: StreamState) -> FacesMessage:
        boxes, scores = self.detector.detect(frame.image)
        state.last_scan = frame.timestamp
        self.count("scan_frames")
        return self._followed_faces(frame, state, boxes, scores, np.full(len(boxes), BOX_SCAN), True)

    def _collect_scan(self, state: StreamState, now: float) -> None:
        """A background scan that ended: its faces no follower covers become followers."""
        if state.scan is None or not state.scan.done():
            return
        future, state.scan = state.scan, None
        if future.cancelled() or state.scan_generation != state.generation:
            # it ran on a picture before a cut or a size change, and was stopped early or had ended
            stopped = not future.cancelled() and isinstance(future.exception(), DetectionStoppedError)
            self.count("scans_stopped" if stopped else "scans_discarded")
            return
        try:
            boxes, _scores = future.result()
        except Exception as error:  # a scan must never stop the followers
            log.warning("background scan failed: %s", error)
            return
        self.count("scans_finished")
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        current = np.array([f.predicted(now, self.settings.follow_miss_s) for f in state.followed]).reshape(-1, 4)
        covered = (box_iou(boxes, current) >= 0.3).any(axis=1) if len(current) else np.zeros(len(boxes), bool)
        for box in boxes[~covered]:
            state.followed.append(Followed(box.copy(), now))
            self.count("scan_new_faces")

    def _followed_faces(self, frame: FrameMessage, state: StreamState, boxes: np.ndarray, scores: np.ndarray,
                        source: np.ndarray, scanned: bool) -> FacesMessage:  # fmt: skip
        """This frame's boxes continue the followers they overlap (greedy IoU on the predicted boxes, the
        tracker's rule); the others start followers. Then landmarks, chips, quality and the embed choice."""
        now = frame.timestamp
        boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
        followed = state.followed
        predicted = np.array([f.predicted(now, self.settings.follow_miss_s) for f in followed]).reshape(-1, 4)
        rows, columns = greedy_assignment(box_iou(predicted, boxes), 0.2) if len(followed) and len(boxes) else (
            np.zeros(0, np.int64), np.zeros(0, np.int64))  # fmt: skip
        owner: list[Followed | None] = [None] * len(boxes)
        for row, column in zip(rows.tolist(), columns.tolist()):
            owner[column] = followed[row]
        kept = [followed[row] for row in rows.tolist()]
        missed = [f for i, f in enumerate(followed) if i not in set(rows.tolist())]  # kept a while
        for item in missed:
            item.misses += 1
        kept += missed
        for column, box in enumerate(boxes.astype(np.float64)):
            item = owner[column]
            if item is None:
                item = owner[column] = Followed(box.copy(), now)
                kept.append(item)
            else:
                elapsed = now - item.seen_at
                if elapsed > 0:
                    item.velocity = 0.5 * (box - item.box) / elapsed + 0.5 * item.velocity
                item.box, item.seen_at, item.misses = box.copy(), now, 0
        state.followed = kept
        message = faces_message(frame, self.predictor, boxes, scores, source, None, scanned)
        if len(message):
            faces = message.faces
            weights = self.gate.weights(faces.quality, faces.scores)
            embed = np.zeros(len(faces), np.uint8)
            for i, item in enumerate(owner):
                assert item is not None
                if self._wants_embedding(item, float(weights[i]), now):
                    embed[i] = 1
                    item.embedded += 1
                    item.best_weight = max(item.best_weight, float(weights[i]))
                    item.last_embed = now
            faces.embed = embed
            self.count("embed_chosen", int(embed.sum()))
            self.count("embed_skipped", int(len(embed) - embed.sum()))
        return message

    def _wants_embedding(self, item: Followed, weight: float, now: float) -> bool:
        s = self.settings
        if item.embedded < s.embed_first or now - item.last_embed >= s.reembed_interval_s:
            return True
        return weight > 0 and weight >= s.improve_factor * item.best_weight
