"""Per-stream face tracks: ids across frames, a quality gate, one identity decided over each track, events.

Tracking (SORT-like, without appearance): every live track predicts its box at the new frame with a
constant velocity per box side (l, t, r, b in pixels per frame, smoothed over observations); detections
are assigned to predictions greedily by IoU, highest first, down to ``iou_threshold``. Greedy IoU gives
the Hungarian assignment's answer whenever a face and its own prediction are each other's best overlap,
which holds for faces at video frame rates, and needs no scipy. A detection left over starts a track; a track unseen for
more than ``max_age`` frames ends. Only ``update`` (a frame where the detector ran) starts or ends
tracks; ``predict_only`` carries the boxes through frames where detection is skipped (detect every k-th
frame: keep ``max_age >= k``). With ``max_age_s`` set, age is time instead of frames: a track unseen
for more than ``max_age_s`` seconds of the frames' own timestamps ends (media time for files, wall-clock
capture time for live streams, so frames a live source dropped do not age a track), and the summary
merges an identity's stretches at most ``max_age_s`` apart. Without appearance the tracker cannot tell
a scene cut that puts a new face where the old one was (IoU above the threshold): the track goes on,
and its identity is corrected only once the new face's observations outvote the old ones (below), not
while they are too blurry to vote.

Identity: a track's identity is decided over its observations (one per embedded face: the match
stage's identity or ``"unknown"`` and its distance), never from one frame:

* quality gate: an observation counts only when the face is at least ``min_face_size`` px wide, its
  chip is sharp enough (variance of the Laplacian ``>= min_sharpness``) and the detector score is
  ``>= min_score`` (``QualityGate``); it then weighs ``min(1, size/good_face_size) * min(1,
  sharpness/good_sharpness)``, so a barely acceptable face counts for less than a good one;
* weighted vote with decay: each label's weight is the sum of its observations' weights, and every new
  observation first multiplies all sums by ``vote_decay`` (0.9: roughly the last ten observations
  matter, so an identity can be corrected after a tracker id switch, in bounded time however long the
  track has lived);
* hysteresis: the first decision goes to the leading label once it has ``min_votes`` observations;
  after that another label takes over only with ``switch_votes`` observations and ``switch_ratio`` times
  the current label's weight, so a single look-alike frame never flips an established identity.

Two ways to decide (``decision``):

* ``"mean"`` (the default in config.yaml): the track's descriptor is the quality-weighted mean of its
  ``best_faces`` best embedded faces (``add_face`` / ``mean_descriptor``); the sink matches that mean
  against the gallery and the match is the track's identity (after ``min_votes`` faces). Averaging
  cancels the frame-to-frame noise of single descriptors: on the demo clip the Alex Lacamoire close-up
  sits at 0.56-0.65 from his photo frame by frame (dlib names him in 2 of 23 frames), while the mean of
  his track's faces is 0.59 from the 7th face on and 0.58 at the end, and Lin-Manuel Miranda's track
  mean stays at 0.49-0.56 where single frames drift to 0.65.
* ``"vote"``: the weighted vote with decay and hysteresis above over per-face match results; the tracker
  never sees descriptors. Robust to one bad embedding, but a person whose single frames straddle the
  threshold stays unknown.

In both, the matcher keeps thresholds, margins and negatives in one place; the tracker sees only
match results (and, for "mean", the descriptors to average).

Events (``TrackStarted``, ``TrackIdentified``, ``TrackEnded``) are plain dataclasses queued in the
tracker and taken with ``pop_events``; ``identity_summary`` gives, per identity, the on-screen intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from ...engines.quality import FACE_WIDTH, QUALITY_COLUMNS, SHARPNESS

__all__ = [
    "QUALITY_COLUMNS",
    "QUALITY_FACE_SIZE",
    "QUALITY_SHARPNESS",
    "UNKNOWN",
    "FaceTracker",
    "OnScreenInterval",
    "QualityGate",
    "Track",
    "TrackEnded",
    "TrackEvent",
    "TrackIdentified",
    "TrackStarted",
    "box_iou",
    "greedy_assignment",
]

UNKNOWN = "unknown"

# Quality rows (N,k) come from engines.quality.face_quality; the tracker reads these two columns.
QUALITY_FACE_SIZE = FACE_WIDTH
QUALITY_SHARPNESS = SHARPNESS


@dataclass(frozen=True)
class QualityGate:
    """Which faces may vote on a track's identity, and how much. Defaults suit dlib's detector at upsample 1.

    The sharpness defaults were read off the demo clip's chips: in-focus faces score 20-200 (small
    faces 20-45), out-of-focus background faces 2-11.
    """

    min_face_size: float = 32.0  # px; dlib's detector finds faces from ~40 px at upsample 1
    min_sharpness: float = 15.0
    min_score: float = 0.3  # dlib's scores are ~1 for clear faces, near 0 for marginal detections
    good_face_size: float = 80.0  # at and above this a face votes with full weight for its size
    good_sharpness: float = 100.0

    def accepts(self, quality: ArrayLike, scores: ArrayLike) -> np.ndarray:
        """(N,) bool for (N,k) quality rows (or one (k,) row) and (N,) detector scores."""
        quality = np.atleast_2d(np.asarray(quality, np.float64))
        scores = np.asarray(scores, np.float64).reshape(-1)
        return (
            (quality[:, QUALITY_FACE_SIZE] >= self.min_face_size)
            & (quality[:, QUALITY_SHARPNESS] >= self.min_sharpness)
            & (scores >= self.min_score)
        )

    def weights(self, quality: ArrayLike, scores: ArrayLike) -> np.ndarray:
        """(N,) vote weights in [0, 1]; 0 for faces the gate rejects."""
        quality = np.atleast_2d(np.asarray(quality, np.float64))
        size = np.minimum(1.0, quality[:, QUALITY_FACE_SIZE] / self.good_face_size)
        sharpness = np.minimum(1.0, quality[:, QUALITY_SHARPNESS] / self.good_sharpness)
        return np.where(self.accepts(quality, scores), np.maximum(size, 0.0) * np.maximum(sharpness, 0.0), 0.0)


# ------------------------------------------------------------------------------------------------
# events


Box: TypeAlias = tuple[int, int, int, int]


@dataclass(frozen=True)
class TrackStarted:
    """A new face: its first detection."""

    kind: ClassVar[str] = "track_started"
    stream_id: str
    track_id: int
    frame_index: int
    timestamp: float
    box: Box


@dataclass(frozen=True)
class TrackIdentified:
    """The track's decided identity changed (first decision included); at the track's latest detection."""

    kind: ClassVar[str] = "track_identified"
    stream_id: str
    track_id: int
    frame_index: int
    timestamp: float
    box: Box
    identity: str  # a gallery name or "unknown"
    distance: float  # weighted mean match distance of the observations that voted for it
    previous_identity: str | None


@dataclass(frozen=True)
class TrackEnded:
    """The face left (unseen for more than max_age frames) or the stream ended; at its last detection."""

    kind: ClassVar[str] = "track_ended"
    stream_id: str
    track_id: int
    frame_index: int
    timestamp: float
    box: Box
    identity: str | None  # None: no observation passed the quality gate
    distance: float | None
    first_frame: int
    first_timestamp: float


TrackEvent: TypeAlias = TrackStarted | TrackIdentified | TrackEnded


@dataclass(frozen=True)
class OnScreenInterval:
    """One contiguous stretch of time an identity was on screen (inclusive frames)."""

    first_frame: int
    last_frame: int
    first_timestamp: float
    last_timestamp: float
    track_ids: tuple[int, ...]


# ------------------------------------------------------------------------------------------------
# geometry


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A,B) IoU of (A,4) and (B,4) inclusive [l, t, r, b] boxes; 0 where a box is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0] + 1, 0, None) * np.clip(a[:, 3] - a[:, 1] + 1, 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0] + 1, 0, None) * np.clip(b[:, 3] - b[:, 1] + 1, 0, None)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def greedy_assignment(similarity: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a one-to-one assignment: the highest similarity first, each >= threshold."""
    rows, columns = np.nonzero(similarity >= threshold)
    order = np.argsort(-similarity[rows, columns], kind="stable")
    used_rows: set[int] = set()
    used_columns: set[int] = set()
    chosen_rows, chosen_columns = [], []
    for row, column in zip(rows[order].tolist(), columns[order].tolist()):  # only the candidate pairs
        if row not in used_rows and column not in used_columns:
            used_rows.add(row)
            used_columns.add(column)
            chosen_rows.append(row)
            chosen_columns.append(column)
    return np.array(chosen_rows, np.int64), np.array(chosen_columns, np.int64)


def _merge_intervals(earlier: OnScreenInterval, later: OnScreenInterval) -> OnScreenInterval:
    """One interval covering both; `later` starts no earlier than `earlier` and may end before it."""
    end = later if later.last_frame > earlier.last_frame else earlier
    track_ids = earlier.track_ids + tuple(t for t in later.track_ids if t not in earlier.track_ids)
    return OnScreenInterval(earlier.first_frame, end.last_frame, earlier.first_timestamp, end.last_timestamp, track_ids)


# ------------------------------------------------------------------------------------------------
# tracks


@dataclass
class _Tally:
    weight: float = 0.0  # decayed sum of vote weights
    count: int = 0  # observations, not decayed
    weighted_distance: float = 0.0  # decayed sum of weight * distance

    @property
    def mean_distance(self) -> float:
        return self.weighted_distance / self.weight if self.weight > 0 else math.nan


@dataclass
class _Segment:
    """A stretch of one track under one decided identity (None: undecided); last_* None while open."""

    identity: str | None
    first_frame: int
    first_timestamp: float
    last_frame: int | None = None
    last_timestamp: float | None = None


@dataclass(eq=False)
class Track:
    """One face followed across frames. Boxes are float [l, t, r, b]; velocity is px per frame per side."""

    track_id: int
    first_frame: int
    first_timestamp: float
    box: np.ndarray  # last detection
    score: float  # last detection's
    quality: np.ndarray  # last detection's (k,)
    last_frame: int
    last_timestamp: float
    previous_frame: int  # the detection before the last one (== last_frame for a new track)
    previous_timestamp: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    identity: str | None = None  # decided identity: a gallery name, "unknown", or None (undecided)
    distance: float | None = None  # weighted mean distance of the observations behind `identity`
    votes: dict[str, _Tally] = field(default_factory=dict)
    last_embedded_frame: int | None = None
    best_embedded_weight: float = 0.0
    segments: list[_Segment] = field(default_factory=list)
    best_descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))  # decision="mean"
    best_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def predicted_box(self, frame_index: int) -> np.ndarray:
        return self.box + self.velocity * (frame_index - self.last_frame)

    @property
    def box_tuple(self) -> Box:
        left, top, right, bottom = np.rint(self.box).astype(np.int64).tolist()
        return left, top, right, bottom


class FaceTracker:
    """The tracks of one stream. Feed every frame in order: `update` where the detector ran, else `predict_only`."""

    def __init__(
        self,
        stream_id: str,
        *,
        iou_threshold: float = 0.3,
        max_age: int = 15,
        gate: QualityGate | None = None,
        min_votes: int = 1,
        switch_votes: int = 3,
        switch_ratio: float = 1.5,
        vote_decay: float = 0.9,
        reembed_every: int = 10,
        improve_factor: float = 1.5,
        velocity_smoothing: float = 0.5,
        decision: str = "vote",
        best_faces: int = 16,
        max_age_s: float | None = None,
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age < 0 or min_votes < 1 or switch_votes < 1 or reembed_every < 1:
            raise ValueError("max_age must be >= 0; min_votes, switch_votes and reembed_every >= 1")
        if switch_ratio < 1 or not 0 < vote_decay <= 1 or improve_factor <= 1 or not 0 < velocity_smoothing <= 1:
            raise ValueError("need switch_ratio >= 1, 0 < vote_decay <= 1, improve_factor > 1, 0 < smoothing <= 1")
        if decision not in ("vote", "mean") or best_faces < 1:
            raise ValueError(f"decision must be 'vote' or 'mean' and best_faces >= 1, got {decision!r}, {best_faces}")
        if max_age_s is not None and not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.max_age_s = max_age_s  # None: max_age counts frames
        self.decision = decision
        self.best_faces = best_faces
        self.stream_id = stream_id
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.gate = gate if gate is not None else QualityGate()
        self.min_votes = min_votes
        self.switch_votes = switch_votes
        self.switch_ratio = switch_ratio
        self.vote_decay = vote_decay
        self.reembed_every = reembed_every
        self.improve_factor = improve_factor
        self.velocity_smoothing = velocity_smoothing
        self.tracks: dict[int, Track] = {}  # live tracks by id, oldest first
        self._next_id = 1
        self._last_update_frame: int | None = None
        self._events: list[TrackEvent] = []
        self._ended_stretches: list[tuple[str | None, OnScreenInterval]] = []  # of ended tracks, by identity

    # -- tracking ------------------------------------------------------------------------------

    def update(
        self, frame_index: int, timestamp: float, boxes: np.ndarray, scores: np.ndarray, quality: np.ndarray
    ) -> np.ndarray:
        """Assign (N,) int64 track ids to this frame's detections; start and end tracks (queued as events)."""
        boxes = np.asarray(boxes, np.float64)
        scores = np.asarray(scores, np.float64)
        quality = np.asarray(quality, np.float64)
        count = len(boxes)
        if boxes.shape != (count, 4) or scores.shape != (count,):
            raise ValueError(f"boxes must be (N,4) and scores (N,), got {boxes.shape} and {scores.shape}")
        if quality.ndim != 2 or len(quality) != count or quality.shape[1] < 2:
            raise ValueError(f"quality must be ({count},k) with k >= {2}, got {quality.shape}")
        frame_index, timestamp = int(frame_index), float(timestamp)  # plain numbers in the events
        if not math.isfinite(timestamp):
            raise ValueError(f"timestamp must be finite, got {timestamp}")
        if self._last_update_frame is not None and frame_index <= self._last_update_frame:
            raise ValueError(f"frame {frame_index} is not after the last updated frame {self._last_update_frame}")
        self._last_update_frame = frame_index

        # Tracks unseen for too long end before matching, so they cannot take a new face's detection.
        for track in [t for t in self.tracks.values() if self._too_old(t, frame_index, timestamp)]:
            self._end(track)

        live = list(self.tracks.values())
        track_ids = np.zeros(count, np.int64)
        if live and count:
            predicted = np.stack([track.predicted_box(frame_index) for track in live])
            rows, columns = greedy_assignment(box_iou(predicted, boxes), self.iou_threshold)
        else:
            rows = columns = np.zeros(0, np.int64)
        for row, column in zip(rows.tolist(), columns.tolist()):
            self._observe(live[row], frame_index, timestamp, boxes[column], scores[column], quality[column])
            track_ids[column] = live[row].track_id
        unmatched = np.ones(count, bool)
        unmatched[columns] = False
        for column in np.flatnonzero(unmatched).tolist():
            track_ids[column] = self._start(frame_index, timestamp, boxes[column], scores[column], quality[column])
        return track_ids

    def _too_old(self, track: Track, frame_index: int, timestamp: float | None) -> bool:
        if self.max_age_s is not None and timestamp is not None:
            return timestamp - track.last_timestamp > self.max_age_s
        return frame_index - track.last_frame > self.max_age

    def predict_only(self, frame_index: int, timestamp: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(T,) track ids and (T,4) int64 predicted boxes of the tracks the last detection saw, for a frame
        without detection (`timestamp`: its time, for ``max_age_s``; None: ages count frames).

        Changes nothing: tracks end only in `update`, where there is evidence that a face is gone.
        """
        frame_index = int(frame_index)
        if self._last_update_frame is not None and frame_index < self._last_update_frame:
            raise ValueError(f"frame {frame_index} is before the last updated frame {self._last_update_frame}")
        # Only tracks the last detection saw: one it missed is not known to be on screen, and carrying
        # its box over skipped frames would name a face that has left (e.g. across a scene cut).
        live = [
            t for t in self.tracks.values()
            if t.last_frame == self._last_update_frame and not self._too_old(t, frame_index, timestamp)
        ]  # fmt: skip
        ids = np.array([track.track_id for track in live], np.int64)
        if not live:
            return ids, np.zeros((0, 4), np.int64)
        return ids, np.rint(np.stack([track.predicted_box(frame_index) for track in live])).astype(np.int64)

    def finish(self) -> None:
        """End every live track (the stream ended); their TrackEnded events are queued."""
        for track in list(self.tracks.values()):
            self._end(track)

    def pop_events(self) -> list[TrackEvent]:
        """The events since the last call, in the order they happened."""
        events, self._events = self._events, []
        return events

    def _start(self, frame_index: int, timestamp: float, box: np.ndarray, score: float, quality: np.ndarray) -> int:
        track = Track(
            track_id=self._next_id, first_frame=frame_index, first_timestamp=timestamp, box=box.copy(),
            score=float(score), quality=quality.copy(), last_frame=frame_index, last_timestamp=timestamp,
            previous_frame=frame_index, previous_timestamp=timestamp,
            segments=[_Segment(None, frame_index, timestamp)],
        )  # fmt: skip
        self._next_id += 1
        self.tracks[track.track_id] = track
        self._events.append(TrackStarted(self.stream_id, track.track_id, frame_index, timestamp, track.box_tuple))
        return track.track_id

    def _observe(
        self, track: Track, frame_index: int, timestamp: float, box: np.ndarray, score: float, quality: np.ndarray
    ) -> None:
        elapsed = frame_index - track.last_frame
        measured = (box - track.box) / elapsed
        # The first measured velocity is taken as is; later ones are smoothed against detector jitter.
        alpha = 1.0 if track.hits == 1 else self.velocity_smoothing
        track.velocity = alpha * measured + (1 - alpha) * track.velocity
        track.box = box.copy()
        track.score = float(score)
        track.quality = quality.copy()
        track.previous_frame, track.previous_timestamp = track.last_frame, track.last_timestamp
        track.last_frame, track.last_timestamp = frame_index, timestamp
        track.hits += 1

    def _end(self, track: Track) -> None:
        del self.tracks[track.track_id]
        self._ended_stretches.extend(self._stretches(track))
        where = (self.stream_id, track.track_id, track.last_frame, track.last_timestamp, track.box_tuple)
        self._events.append(
            TrackEnded(*where, track.identity, track.distance, track.first_frame, track.first_timestamp)
        )

    # -- identity ------------------------------------------------------------------------------

    def _gated(self, track_id: int, quality: ArrayLike, score: float) -> tuple[Track | None, float]:
        """The live track and the face's gate weight; (None, 0) when the track ended or the gate rejects it."""
        track = self.tracks.get(track_id)
        weight = float(self.gate.weights(np.asarray(quality, np.float64).reshape(-1), [score])[0])
        return (track, weight) if track is not None and weight > 0 else (None, 0.0)

    def add_face(self, track_id: int, descriptor: ArrayLike, quality: ArrayLike, score: float) -> bool:
        """decision="mean": keep an embedded face of the track for its mean descriptor (the `best_faces`
        faces the quality gate weighs highest). False when the gate rejects it or the track has ended."""
        track, weight = self._gated(track_id, quality, score)
        if track is None:
            return False
        row = np.asarray(descriptor, np.float32).reshape(1, -1)
        if len(track.best_weights) < self.best_faces:
            track.best_descriptors = np.concatenate([track.best_descriptors.reshape(-1, row.shape[1]), row])
            track.best_weights = np.append(track.best_weights, weight)
            return True
        worst = int(np.argmin(track.best_weights))
        if weight >= track.best_weights[worst]:  # ties: the newer face (the person as they look now)
            track.best_descriptors[worst], track.best_weights[worst] = row[0], weight
        return True

    def mean_descriptor(self, track_id: int) -> np.ndarray | None:
        """The quality-weighted mean of the track's best faces (decision="mean"); None before any."""
        track = self.tracks.get(track_id)
        if track is None or not len(track.best_weights):
            return None
        weights = track.best_weights / track.best_weights.sum()
        return (weights[:, None] * track.best_descriptors.astype(np.float64)).sum(axis=0).astype(np.float32)

    def add_observation(self, track_id: int, identity: str, distance: float, quality: ArrayLike, score: float) -> bool:
        """Count one embedded face of the track: the match result (identity or "unknown", distance) and the
        face's quality row and detector score. True when the track's decided identity changed (a
        TrackIdentified event is queued). A face the gate rejects changes nothing; so does a track that
        has ended meanwhile (late results are normal in a pipeline).
        """
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"identity must be a non-empty string, got {identity!r}")
        if not math.isfinite(distance):
            raise ValueError(f"distance must be finite, got {distance}")
        track, weight = self._gated(track_id, quality, score)
        if track is None:
            return False
        track.best_embedded_weight = max(track.best_embedded_weight, weight)
        for label in list(track.votes):
            tally = track.votes[label]
            tally.weight *= self.vote_decay
            tally.weighted_distance *= self.vote_decay
            if tally.weight < 1e-9 and label != track.identity:  # long forgotten: keep the dict small
                del track.votes[label]
        tally = track.votes.setdefault(identity, _Tally())
        tally.weight += weight
        tally.count += 1
        tally.weighted_distance += weight * float(distance)

        previous = track.identity
        if self.decision == "mean":
            # `identity` is the match of the track's mean descriptor: the decision itself, once enough faces.
            enough = sum(t.count for t in track.votes.values()) >= self.min_votes
            decided = identity if enough else None
            if decided is not None:
                track.distance = float(distance)
        else:
            decided = self._decide(track)
            if decided is not None:
                track.distance = track.votes[decided].mean_distance
        if decided == previous:
            return False
        track.identity = decided
        self._start_segment(track, decided)
        where = (self.stream_id, track.track_id, track.last_frame, track.last_timestamp, track.box_tuple)
        self._events.append(TrackIdentified(*where, decided, track.distance, previous))
        return True

    def _decide(self, track: Track) -> str | None:
        current = track.identity
        leader = max(track.votes, key=lambda label: track.votes[label].weight)
        if current is None:
            return leader if track.votes[leader].count >= self.min_votes else None
        if leader == current:
            return current
        challenger, held = track.votes[leader], track.votes[current]
        switch = challenger.count >= self.switch_votes and challenger.weight >= self.switch_ratio * held.weight
        return leader if switch else current

    def _start_segment(self, track: Track, identity: str | None) -> None:
        segment = track.segments[-1]
        if segment.identity is None or track.previous_frame < segment.first_frame:
            # The first decision names the track from its start; so does a decision on the segment's first frame.
            segment.identity = identity
            return
        segment.last_frame, segment.last_timestamp = track.previous_frame, track.previous_timestamp
        track.segments.append(_Segment(identity, track.last_frame, track.last_timestamp))

    # -- embedding schedule --------------------------------------------------------------------

    def needs_embedding(self, track: Track | int, frame_index: int) -> bool:
        """Whether to embed the track's face detected at `frame_index`: it passes the quality gate and the
        track has no embedding yet, or its last one is `reembed_every` frames old, or this face weighs
        `improve_factor` times the best face embedded so far.
        """
        track = self.tracks[track] if isinstance(track, (int, np.integer)) else track
        if track.last_frame != frame_index:
            return False  # no detection at this frame, nothing to embed
        if not self.gate.accepts(track.quality, [track.score])[0]:
            return False  # it could not vote
        weight = float(self.gate.weights(track.quality, [track.score])[0])
        if track.last_embedded_frame is None or frame_index - track.last_embedded_frame >= self.reembed_every:
            return True
        return weight >= self.improve_factor * track.best_embedded_weight

    def mark_embedded(self, track: Track | int, frame_index: int) -> None:
        """Record that the track's face at `frame_index` goes to the embedder."""
        track = self.tracks[track] if isinstance(track, (int, np.integer)) else track
        track.last_embedded_frame = frame_index
        weight = float(self.gate.weights(track.quality, [track.score])[0])
        track.best_embedded_weight = max(track.best_embedded_weight, weight)

    def select_for_embedding(self, track_ids: Iterable[int], frame_index: int) -> np.ndarray:
        """(N,) bool: which of this frame's faces (by their track ids from `update`) to embed; marks them."""
        selected = []
        for track_id in track_ids:
            chosen = self.needs_embedding(int(track_id), frame_index)
            if chosen:
                self.mark_embedded(int(track_id), frame_index)
            selected.append(chosen)
        return np.array(selected, bool)

    # -- summary -------------------------------------------------------------------------------

    def identity_summary(self) -> dict[str, list[OnScreenInterval]]:
        """Per identity ("unknown" includes tracks never decided), its on-screen intervals in time order.

        Each track contributes its stretches under each identity it held (a change splits the track at
        the detection where the vote switched). Stretches of one identity merge when they overlap or are
        at most `max_age` frames (with `max_age_s`: that many seconds) apart, the gap the tracker itself bridges.
        """
        stretches = list(self._ended_stretches)
        for track in self.tracks.values():
            stretches.extend(self._stretches(track))
        by_identity: dict[str, list[OnScreenInterval]] = {}
        for identity, interval in stretches:
            by_identity.setdefault(identity or UNKNOWN, []).append(interval)

        summary: dict[str, list[OnScreenInterval]] = {}
        for identity, intervals in sorted(by_identity.items()):
            merged: list[OnScreenInterval] = []
            for interval in sorted(intervals, key=lambda i: (i.first_frame, i.track_ids)):
                if merged and self._bridged(merged[-1], interval):
                    interval = _merge_intervals(merged.pop(), interval)
                merged.append(interval)
            summary[identity] = merged
        return summary

    def _bridged(self, earlier: OnScreenInterval, later: OnScreenInterval) -> bool:
        if self.max_age_s is not None:
            return later.first_timestamp - earlier.last_timestamp <= self.max_age_s + 1e-6
        return later.first_frame <= earlier.last_frame + self.max_age + 1

    @staticmethod
    def _stretches(track: Track) -> list[tuple[str | None, OnScreenInterval]]:
        """The track's segments as (identity, interval), the open one ending at the track's last detection."""
        stretches = []
        for segment in track.segments:
            last_frame = track.last_frame if segment.last_frame is None else segment.last_frame
            last_timestamp = track.last_timestamp if segment.last_timestamp is None else segment.last_timestamp
            interval = OnScreenInterval(
                segment.first_frame, last_frame, segment.first_timestamp, last_timestamp, (track.track_id,)
            )
            stretches.append((segment.identity, interval))
        return stretches
