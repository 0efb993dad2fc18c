"""Kiosk access decisions: grant a person only on consistent evidence from one track, else deny.

A pure state machine (no sockets, no gallery): the sink feeds it, per track, each embedded face's match
(`FrameEvidence`: the nearest enrolled person, distance, that person's threshold, the runner-up person
and distance, as `enroll.matching.Matches` gives them) and the stream's clock; it answers with one
`KioskDecision` per track:

* a frame **votes** for person P when P is the nearest enrolled person, the distance is at most the
  threshold (the person's own gallery threshold, capped by `KioskPolicy.threshold` when that is set) and
  the runner-up (another person) is at least `margin` farther (no runner-up: nobody else is enrolled, the
  margin holds);
* **granted** as soon as, among the last `n` frames of the track, at least `k` vote for the same person
  and at most `max_conflicts` vote for anyone else (0: a window that also holds confident frames of
  another person, e.g. after a tracker id switch or on a face between two people, grants nobody);
* **denied** when `timeout_s` passes (stream time, from the track's first frame) without a grant
  (reason ``timeout``), or when the track ends first (reason ``track_ended``).

Each track is decided once; later frames of a decided track are ignored. The decision carries its
evidence: every frame in the window with its distances, margin and why it did or did not vote, the
frames that made the grant, and the policy. ``KioskDecision.to_record()`` is the JSON event
(``"event": "access_decision"``).

Why k-of-n plus a margin, and not the tracker's identity vote: the vote is built to name people on
screen and tolerates a look-alike frame; a door must not open on one. A look-alike tends to sit near
the threshold (some frames under, some over) or between two enrolled people (small margin, alternating
names): neither gives k clean frames in a row of n.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import KioskConfig

__all__ = [
    "DENIED",
    "GRANTED",
    "FrameEvidence",
    "KioskDecider",
    "KioskDecision",
    "KioskPolicy",
    "evidence_from_matches",
    "frame_vote",
]

GRANTED, DENIED = "granted", "denied"
K_OF_N, TIMEOUT, TRACK_ENDED = "k_of_n", "timeout", "track_ended"
# Why a frame did or did not vote.
VOTE, NO_CANDIDATE, OVER_THRESHOLD, SMALL_MARGIN = "match", "no_candidate", "over_threshold", "margin"


@dataclass(frozen=True)
class KioskPolicy:
    """The rules (config.yaml `kiosk:`)."""

    k: int = 3
    n: int = 5
    margin: float = 0.05
    timeout_s: float = 10.0
    threshold: float = 0.55  # cap on every person's threshold; 0 = the gallery's thresholds as they are
    max_conflicts: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and isinstance(self.n, int) and 1 <= self.k <= self.n):
            raise ValueError(f"kiosk: need 1 <= k <= n, got k={self.k}, n={self.n}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"kiosk.margin must be >= 0, got {self.margin}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"kiosk.timeout_s must be > 0, got {self.timeout_s}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"kiosk.threshold must be >= 0 (0: the gallery's), got {self.threshold}")
        if not (isinstance(self.max_conflicts, int) and self.max_conflicts >= 0):
            raise ValueError(f"kiosk.max_conflicts must be >= 0, got {self.max_conflicts}")

    @classmethod
    def from_config(cls, section: KioskConfig) -> KioskPolicy:
        """From the typed `kiosk` section (the `enabled` key is the caller's business)."""
        return cls(
            k=int(section.k),
            n=int(section.n),
            margin=float(section.margin),
            timeout_s=float(section.timeout_s),
            threshold=float(section.threshold),
            max_conflicts=int(section.max_conflicts),
        )

    def to_record(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "margin": self.margin, "timeout_s": self.timeout_s,
                "threshold": self.threshold, "max_conflicts": self.max_conflicts}  # fmt: skip


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclass(frozen=True)
class FrameEvidence:
    """One embedded face of a track: its match against the gallery."""

    frame_index: int
    timestamp: float
    name: str | None  # nearest enrolled person (matched or not); None: nobody eligible
    distance: float | None = None
    threshold: float | None = None  # that person's gallery threshold
    runner_up: str | None = None  # next nearest enrolled person (a different person)
    runner_up_distance: float | None = None

    def __post_init__(self) -> None:
        for name in ("distance", "threshold", "runner_up_distance"):
            object.__setattr__(self, name, _finite(getattr(self, name)))
        if self.name is not None and (self.distance is None or self.threshold is None):
            raise ValueError(f"frame {self.frame_index}: a candidate needs a distance and a threshold")


def evidence_from_matches(matches: Any, frame_index: int, timestamp: float) -> list[FrameEvidence]:
    """One FrameEvidence per face of an `enroll.matching.Matches` (a frame's faces, in order)."""
    return [
        FrameEvidence(
            frame_index,
            float(timestamp),
            matches.names[i],
            float(matches.distances[i]),
            float(matches.thresholds[i]),
            matches.runner_up[i],
            float(matches.runner_up_distances[i]),
        )
        for i in range(len(matches))
    ]


def effective_threshold(frame: FrameEvidence, policy: KioskPolicy) -> float | None:
    if frame.threshold is None:
        return None
    return min(frame.threshold, policy.threshold) if policy.threshold > 0 else frame.threshold


def frame_vote(frame: FrameEvidence, policy: KioskPolicy) -> tuple[str | None, str]:
    """(the person this frame votes for or None, why): "match", "no_candidate", "over_threshold", "margin"."""
    if frame.name is None or frame.distance is None:
        return None, NO_CANDIDATE
    threshold = effective_threshold(frame, policy)
    if threshold is None or frame.distance > threshold:
        return None, OVER_THRESHOLD
    if frame.runner_up_distance is not None and frame.runner_up_distance - frame.distance < policy.margin:
        return None, SMALL_MARGIN
    return frame.name, VOTE


@dataclass(frozen=True)
class KioskDecision:
    """One track's decision, with the evidence it rests on."""

    stream_id: str
    track_id: int
    decision: str  # "granted" or "denied"
    reason: str  # "k_of_n" (granted), "timeout" or "track_ended" (denied)
    identity: str | None  # granted: the person; denied: the person with most votes in the window, if any
    frame_index: int  # the frame the decision was taken at (denied on a clock tick: the last frame seen)
    timestamp: float
    first_timestamp: float
    frames: tuple[dict[str, Any], ...]  # the window: each frame with its vote and why
    votes: dict[str, int]  # per person, votes in the window
    used_frames: tuple[int, ...]  # granted: the frames that voted for the person
    policy: KioskPolicy
    observed: int  # frames of the track seen in all

    @property
    def granted(self) -> bool:
        return self.decision == GRANTED

    def to_record(self) -> dict[str, Any]:
        """The JSON event (no NaN: missing numbers are null)."""
        return {
            "event": "access_decision",
            "decision": self.decision,
            "reason": self.reason,
            "identity": self.identity,
            "stream_id": self.stream_id,
            "track_id": self.track_id,
            "frame_index": self.frame_index,
            "timestamp": round(self.timestamp, 6),
            "elapsed_s": round(self.timestamp - self.first_timestamp, 6),
            "evidence": {
                "votes": dict(self.votes),
                "used_frames": list(self.used_frames),
                "frames_observed": self.observed,
                "window": [dict(frame) for frame in self.frames],
            },
            "policy": self.policy.to_record(),
        }


@dataclass
class _TrackState:
    first_timestamp: float
    last_frame: int
    last_timestamp: float
    window: deque[tuple[FrameEvidence, str | None, str]] = field(default_factory=deque)
    observed: int = 0


def _frame_record(frame: FrameEvidence, vote: str | None, why: str, policy: KioskPolicy) -> dict[str, Any]:
    margin = None
    if frame.distance is not None and frame.runner_up_distance is not None:
        margin = round(frame.runner_up_distance - frame.distance, 6)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    return {
        "frame_index": frame.frame_index,
        "timestamp": round(frame.timestamp, 6),
        "name": frame.name,
        "distance": rounded(frame.distance),
        "threshold": rounded(effective_threshold(frame, policy)),
        "runner_up": frame.runner_up,
        "runner_up_distance": rounded(frame.runner_up_distance),
        "margin": margin,
        "vote": vote,
        "why": why,
    }


class KioskDecider:
    """Per (stream, track): a window of the last n frames and at most one decision. Not thread-safe."""

    def __init__(self, policy: KioskPolicy) -> None:
        self.policy = policy
        self.tracks: dict[tuple[str, int], _TrackState] = {}
        self.decided: set[tuple[str, int]] = set()

    def observe(self, stream_id: str, track_id: int, frame: FrameEvidence) -> KioskDecision | None:
        """One embedded face of a track. The decision when this frame decides the track, else None."""
        key = (stream_id, int(track_id))
        if key in self.decided:
            return None
        state = self.tracks.get(key)
        if state is None:
            state = self.tracks[key] = _TrackState(frame.timestamp, frame.frame_index, frame.timestamp)
            state.window = deque(maxlen=self.policy.n)
        vote, why = frame_vote(frame, self.policy)
        state.window.append((frame, vote, why))
        state.observed += 1
        state.last_frame, state.last_timestamp = frame.frame_index, frame.timestamp
        votes = Counter(v for _, v, _ in state.window if v is not None)
        if votes:
            (leader, count), *rest = votes.most_common()
            tied = bool(rest) and rest[0][1] == count
            conflicts = sum(votes.values()) - count
            if count >= self.policy.k and conflicts <= self.policy.max_conflicts and not tied:
                return self._decide(key, state, GRANTED, K_OF_N, leader)
        if frame.timestamp - state.first_timestamp >= self.policy.timeout_s:
            return self._decide(key, state, DENIED, TIMEOUT, None)
        return None

    def advance(self, stream_id: str, now: float) -> list[KioskDecision]:
        """The stream's clock moved to `now` (e.g. a frame without this track's face): tracks of the stream
        undecided for `timeout_s` are denied."""
        decisions = []
        for key, state in list(self.tracks.items()):
            if key[0] == stream_id and now - state.first_timestamp >= self.policy.timeout_s:
                decisions.append(self._decide(key, state, DENIED, TIMEOUT, None, now))
        return decisions

    def end_track(self, stream_id: str, track_id: int) -> KioskDecision | None:
        """The track ended: denied if it was not decided yet (and had a frame). Forgets the track."""
        key = (stream_id, int(track_id))
        self.decided.discard(key)
        state = self.tracks.get(key)
        if state is None:
            return None
        return self._decide(key, state, DENIED, TRACK_ENDED, None, forget=True)

    def finish(self, stream_id: str | None = None) -> list[KioskDecision]:
        """End every track (of one stream, or all)."""
        keys = [key for key in list(self.tracks) if stream_id is None or key[0] == stream_id]
        decisions = [d for key in keys if (d := self.end_track(*key)) is not None]
        self.decided = {key for key in self.decided if stream_id is not None and key[0] != stream_id}
        return decisions

    def _decide(
        self,
        key: tuple[str, int],
        state: _TrackState,
        decision: str,
        reason: str,
        identity: str | None,
        now: float | None = None,
        forget: bool = False,
    ) -> KioskDecision:
        votes = Counter(v for _, v, _ in state.window if v is not None)
        if identity is None and votes:
            identity = votes.most_common(1)[0][0]
        used = tuple(f.frame_index for f, v, _ in state.window if decision == GRANTED and v == identity)
        del self.tracks[key]
        if not forget:
            self.decided.add(key)
        return KioskDecision(
            stream_id=key[0],
            track_id=key[1],
            decision=decision,
            reason=reason,
            identity=identity,
            frame_index=state.last_frame,
            timestamp=state.last_timestamp if now is None else float(now),
            first_timestamp=state.first_timestamp,
            frames=tuple(_frame_record(f, v, why, self.policy) for f, v, why in state.window),
            votes=dict(votes),
            used_frames=used,
            policy=self.policy,
            observed=state.observed,
        )
