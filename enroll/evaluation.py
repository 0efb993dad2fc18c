"""Accuracy figures, as pure functions: face verification (LFW protocol) and identification in video.

Verification (``facestream eval pairs``):

* :func:`parse_pairs` reads the LFW ``pairs.txt`` format: a header ``FOLDS PAIRS`` (``10 300`` for
  LFW's View 2; a single number means one fold, as ``pairsDevTrain.txt``), then per fold ``PAIRS``
  matched lines ``Name n1 n2`` followed by ``PAIRS`` mismatched lines ``Name1 n1 Name2 n2``. Image
  ``n`` of a person is ``Name/Name_%04d.jpg``. Errors name the line.
* A pair is "same" when its descriptor distance is at most the threshold. :func:`accuracy` at a fixed
  threshold; :func:`kfold_accuracy` the protocol's figure: for each fold, the threshold that is best on
  the other folds (:func:`best_threshold`) is applied to it; :func:`roc_curve` and :func:`tar_at_far`.

Identification in video (``facestream eval video``):

* :func:`parse_truth` reads the truth JSON (which enrolled people are visible in which frame ranges),
  :func:`predictions_from_records` reads per-frame predictions (``facestream run --detections`` lines,
  or dlib's golden per-frame labels), :func:`score_identification` compares them frame by frame:
  per-identity precision and recall of frames, false identifications, identity switches per track.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

UNKNOWN = "unknown"

# ------------------------------------------------------------------------------------------------
# the pairs file


class PairsFormatError(InputError, ValueError):
    """A pairs file that does not follow the LFW format; the message names the file and the line."""


@dataclass(frozen=True)
class Pair:
    fold: int  # 0-based
    name1: str
    number1: int
    name2: str
    number2: int
    line: int  # 1-based line in the pairs file

    @property
    def same(self) -> bool:
        return self.name1 == self.name2

    @property
    def images(self) -> tuple[str, str]:
        """Paths relative to the image root: ``Name/Name_0001.jpg``."""
        return lfw_image(self.name1, self.number1), lfw_image(self.name2, self.number2)


@dataclass(frozen=True)
class PairsFile:
    folds: int
    per_fold: int  # matched pairs per fold (= mismatched pairs per fold)
    pairs: list[Pair]

    @property
    def same(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def fold_of_pair(self) -> np.ndarray:
        return np.array([p.fold for p in self.pairs], dtype=np.int64)

    def images(self) -> list[str]:
        """Every image the pairs use, once, in order of first use."""
        return list(dict.fromkeys(path for pair in self.pairs for path in pair.images))


def lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def _positive_int(text: str, what: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise PairsFormatError(f"{where}: {what} must be a positive whole number, got {text!r}")
    return int(text)


def parse_pairs(text: str, source: str = "pairs file") -> PairsFile:
    """Parse an LFW-style pairs file (see the module docstring); raises PairsFormatError naming the line."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise PairsFormatError(f"{source}: empty; expected a header line 'FOLDS PAIRS' such as '10 300'")
    header = lines[0].split()
    if len(header) not in (1, 2):
        raise PairsFormatError(f"{source} line 1: expected a header 'FOLDS PAIRS' such as '10 300', got {lines[0]!r}")
    numbers = [_positive_int(value, "the header", f"{source} line 1") for value in header]
    folds, per_fold = (1, numbers[0]) if len(numbers) == 1 else numbers
    expected = folds * 2 * per_fold
    body = lines[1:]
    if len(body) != expected:
        raise PairsFormatError(
            f"{source}: the header (line 1) announces {folds} fold(s) of {per_fold} matched + {per_fold} "
            f"mismatched pairs = {expected} lines, but {len(body)} follow"
        )
    pairs = []
    for index, raw in enumerate(body):
        number = index + 2
        fold, within = divmod(index, 2 * per_fold)
        matched = within < per_fold
        fields = raw.split()
        where = f"{source} line {number}"
        kind = "matched pair 'Name n1 n2'" if matched else "mismatched pair 'Name1 n1 Name2 n2'"
        position = f"fold {fold + 1}, {'matched' if matched else 'mismatched'} pair {within % per_fold + 1}"
        if len(fields) != (3 if matched else 4):
            raise PairsFormatError(f"{where}: expected a {kind} ({position}), got {len(fields)} fields: {raw!r}")
        if matched:
            name1 = name2 = fields[0]
            n1, n2 = (_positive_int(v, "an image number", where) for v in fields[1:])
        else:
            name1, name2 = fields[0], fields[2]
            n1, n2 = (
                _positive_int(fields[1], "an image number", where),
                _positive_int(fields[3], "an image number", where),
            )
            if name1 == name2:
                raise PairsFormatError(f"{where}: a mismatched pair ({position}) names {name1} twice")
        for name in (name1, name2):
            if "/" in name or "\\" in name or name in (".", ".."):
                raise PairsFormatError(f"{where}: {name!r} is not a person's name (no path separators)")
            if name.isdigit():
                raise PairsFormatError(f"{where}: a number ({name}) where a person's name should be: {raw!r}")
        pairs.append(Pair(fold, name1, n1, name2, n2, number))
    return PairsFile(folds, per_fold, pairs)


# ------------------------------------------------------------------------------------------------
# verification metrics


def _check(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(same, dtype=bool).reshape(-1)
    if d.shape != s.shape:
        raise ValueError(f"{len(d)} distances but {len(s)} labels")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances must be finite")
    return d, s


def accuracy(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified right when 'same' means distance <= threshold."""
    d, s = _check(distances, same)
    if len(d) == 0:
        return math.nan
    return float(np.mean((d <= threshold) == s))


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the highest accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct distances (and one below the smallest
    and one above the largest), so the result never sits on a pair's distance. Ties: the smallest.
    """
    d, s = _check(distances, same)
    if len(d) == 0:
        raise ValueError("no pairs to choose a threshold on")
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    # accepting the first k pairs (k = 0..n): correct = same among them + different among the rest
    same_below = np.concatenate([[0], np.cumsum(s)])
    diff_above = np.concatenate([[0], np.cumsum(~s)])
    correct = same_below + (diff_above[-1] - diff_above)
    valid = np.ones(len(d) + 1, dtype=bool)
    valid[1:-1] = d[1:] > d[:-1]  # a threshold can only fall between distinct distances
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        return float(d[0] - 1e-6)
    if k == len(d):
        return float(d[-1] + 1e-6)
    return float((d[k - 1] + d[k]) / 2)


@dataclass(frozen=True)
class FoldResult:
    accuracies: np.ndarray  # (k,) accuracy of each fold at the threshold chosen on the others
    thresholds: np.ndarray  # (k,)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Standard deviation over folds (population, as the LFW results page and scikit-learn report it)."""
        return float(np.std(self.accuracies))


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> FoldResult:
    """LFW's protocol: each fold tested at the best threshold of the other folds. Needs >= 2 folds."""
    d, s = _check(distances, same)
    f = np.asarray(folds).reshape(-1)
    if f.shape != d.shape:
        raise ValueError(f"{len(d)} distances but {len(f)} fold numbers")
    ids = np.unique(f)
    if len(ids) < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds")
    thresholds = np.array([best_threshold(d[f != i], s[f != i]) for i in ids])
    accuracies = np.array([accuracy(d[f == i], s[f == i], t) for i, t in zip(ids, thresholds)])
    return FoldResult(accuracies, thresholds)


def roc_curve(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds): one point per distinct distance, accepting pairs with distance <= it.

    Starts at (0, 0) with threshold -inf. FAR = impostor pairs accepted / impostor pairs; TAR = genuine
    pairs accepted / genuine pairs (nan when there are none of that kind).
    """
    d, s = _check(distances, same)
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    last = np.ones(len(d), dtype=bool)
    last[:-1] = d[1:] > d[:-1]  # the last pair of each run of equal distances
    genuine = np.cumsum(s)[last]
    impostor = np.cumsum(~s)[last]
    n_genuine, n_impostor = int(s.sum()), int((~s).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tar = np.concatenate([[0.0], genuine / n_genuine]) if n_genuine else np.full(len(genuine) + 1, math.nan)
        far = np.concatenate([[0.0], impostor / n_impostor]) if n_impostor else np.full(len(genuine) + 1, math.nan)
    return far, tar, np.concatenate([[-math.inf], d[last]])


@dataclass(frozen=True)
class OperatingPoint:
    target_far: float
    tar: float
    far: float  # achieved (<= target)
    threshold: float  # accept distance <= threshold

    def to_json(self) -> dict[str, float | None]:
        return {k: (None if not math.isfinite(v) else round(v, 6)) for k, v in vars(self).items()}


def tar_at_far(distances: np.ndarray, same: np.ndarray, target_far: float) -> OperatingPoint:
    """The highest TAR whose FAR is at most ``target_far`` (the largest such threshold)."""
    far, tar, thresholds = roc_curve(distances, same)
    ok = np.flatnonzero(far <= target_far)
    i = int(ok[-1]) if len(ok) else 0
    return OperatingPoint(float(target_far), float(tar[i]), float(far[i]), float(thresholds[i]))


# ------------------------------------------------------------------------------------------------
# identification in video: the truth file


class TruthFormatError(InputError, ValueError):
    """A truth file that cannot be used; the message names the file and the segment."""


@dataclass(frozen=True)
class Segment:
    start: int  # first frame (0-based, inclusive)
    end: int  # last frame (inclusive)
    present: frozenset[str]  # enrolled people visible: naming them is right, missing them is a miss
    optional: frozenset[str] = frozenset()  # visible but hard (tiny, profile): naming them is no error, missing no miss
    unknown: int = 0  # people visible who are not enrolled (information; naming them as anyone is an error)


@dataclass(frozen=True)
class Truth:
    segments: list[Segment]
    video: str | None = None
    frames: int | None = None  # frames in the video, when given

    def frame_sets(self) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
        """frame -> (present, optional), for every frame some segment covers (overlaps: the union)."""
        frames: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        for seg in self.segments:
            for frame in range(seg.start, seg.end + 1):
                present, optional = frames.get(frame, (frozenset(), frozenset()))
                frames[frame] = (present | seg.present, optional | seg.optional)
        return {f: (p, o - p) for f, (p, o) in frames.items()}


def _names(value: Any, where: str, key: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TruthFormatError(f"{where}: {key!r} must be a list of names, got {value!r}")
    if UNKNOWN in value:
        raise TruthFormatError(f'{where}: {key!r} lists {UNKNOWN!r}; count unenrolled people with "unknown": N')
    return frozenset(value)


def parse_truth(data: Any, source: str = "truth file") -> Truth:
    """Validate a decoded truth JSON object::

        {"video": "clip.mp4", "frames": 275,
         "segments": [{"frames": [0, 19], "present": ["Lin_Manuel_Miranda"], "optional": ["Alex_Lacamoire"]},
                      {"frames": [211, 274], "present": [], "unknown": 4}]}

    Frames are 0-based decoded frame indices, ranges inclusive. Frames no segment covers are not scored.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("segments"), list):
        raise TruthFormatError(f'{source}: expected a JSON object with a "segments" list')
    frames = data.get("frames")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise TruthFormatError(f'{source}: "frames" must be a positive whole number, got {frames!r}')
    segments = []
    for i, seg in enumerate(data["segments"]):
        where = f"{source} segment {i + 1}"
        if not isinstance(seg, Mapping):
            raise TruthFormatError(f"{where}: expected an object, got {seg!r}")
        unknown_keys = set(seg) - {"frames", "present", "optional", "unknown", "note"}
        if unknown_keys:
            raise TruthFormatError(f"{where}: unknown keys {sorted(unknown_keys)}")
        span = seg.get("frames")
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                       for v in span)):  # fmt: skip
            raise TruthFormatError(f'{where}: "frames" must be [first, last] frame indices, got {span!r}')
        start, end = span
        if start < 0 or end < start or (frames is not None and end >= frames):
            raise TruthFormatError(f"{where}: frames [{start}, {end}] are not a range inside the video")
        present = _names(seg.get("present", []), where, "present")
        optional = _names(seg.get("optional", []), where, "optional")
        unknown = seg.get("unknown", 0)
        if not isinstance(unknown, int) or isinstance(unknown, bool) or unknown < 0:
            raise TruthFormatError(f'{where}: "unknown" must be a count of unenrolled people, got {unknown!r}')
        segments.append(Segment(start, end, present, optional, unknown))
    if not segments:
        raise TruthFormatError(f"{source}: no segments")
    video = data.get("video")
    return Truth(segments, str(video) if video is not None else None, frames)


# ------------------------------------------------------------------------------------------------
# identification in video: predictions and scores


@dataclass(frozen=True)
class FaceLabel:
    identity: str  # a name or "unknown"
    track_id: int | None = None


def predictions_from_records(records: Iterable[Mapping[str, Any]], label: str = "track",
                             stream: str | None = None) -> dict[int, list[FaceLabel]]:  # fmt: skip
    """frame -> faces, from ``facestream run --detections`` records or dlib's golden per-frame records.

    ``label="track"``: the track's decided identity (what `facestream run` reports); ``"match"``: each
    frame's own gallery answer (no tracker vote; frames the detector skipped have none and count as
    unknown). dlib's golden records (``{"frame", "faces": [{"label"}]}``) have one label per face and no
    tracks. ``stream`` picks one stream of a multi-stream detections file.
    """
    if label not in ("track", "match"):
        raise ValueError(f"label must be 'track' or 'match', got {label!r}")
    frames: dict[int, list[FaceLabel]] = {}
    for number, record in enumerate(records, 1):
        if stream is not None and record.get("stream_id", stream) != stream:
            continue
        frame = record.get("frame_index", record.get("frame"))
        faces = record.get("faces")
        if not isinstance(frame, int) or not isinstance(faces, list):
            raise ValueError(f'record {number}: expected "frame_index" (or "frame") and a "faces" list')
        labels = []
        for face in faces:
            if "label" in face:  # dlib's golden file
                labels.append(FaceLabel(str(face["label"])))
                continue
            if label == "match":
                match = face.get("match") or {}
                identity = match.get("identity") or UNKNOWN
            else:
                identity = face.get("identity") or UNKNOWN
            labels.append(FaceLabel(str(identity), face.get("track_id")))
        frames[frame] = labels
    return frames


@dataclass
class IdentityScore:
    truth_frames: int = 0  # frames where the person is present (optional frames excluded)
    named_frames: int = 0  # scored frames where someone was named as the person (optional frames excluded)
    correct_frames: int = 0  # both

    @property
    def precision(self) -> float | None:
        return self.correct_frames / self.named_frames if self.named_frames else None

    @property
    def recall(self) -> float | None:
        return self.correct_frames / self.truth_frames if self.truth_frames else None

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {
            "truth_frames": self.truth_frames,
            "named_frames": self.named_frames,
            "correct_frames": self.correct_frames,
            "precision": r(self.precision),
            "recall": r(self.recall),
        }


@dataclass
class TrackScore:
    track_id: int
    first_frame: int
    last_frame: int
    identities: list[str]  # the names it carried, in order (runs of one name collapsed; unknown left out)
    switches: int  # changes from one name to another


@dataclass
class VideoScore:
    scored_frames: int
    frames_without_prediction: int  # covered by the truth, absent from the predictions (counted as no face)
    exact_frames: int  # scored frames whose set of names equals the truth (optional names aside)
    identities: dict[str, IdentityScore]
    false_identifications: int  # faces named as someone not in the frame
    false_by_identity: dict[str, int]
    frames_with_false_identification: int
    false_in_frames_with_unknown_people: int  # of which in frames where the truth counts unenrolled people
    tracks: list[TrackScore] = field(default_factory=list)

    @property
    def identity_switches(self) -> int:
        return sum(t.switches for t in self.tracks)

    def to_json(self) -> dict[str, Any]:
        return {
            "scored_frames": self.scored_frames,
            "frames_without_prediction": self.frames_without_prediction,
            "exact_frames": self.exact_frames,
            "identities": {name: s.to_json() for name, s in sorted(self.identities.items())},
            "false_identifications": self.false_identifications,
            "false_by_identity": dict(sorted(self.false_by_identity.items())),
            "frames_with_false_identification": self.frames_with_false_identification,
            "false_in_frames_with_unknown_people": self.false_in_frames_with_unknown_people,
            "tracks": len(self.tracks),
            "identity_switches": self.identity_switches,
            "tracks_with_switches": [vars(t) for t in self.tracks if t.switches],
        }


def track_switches(frames: Mapping[int, list[FaceLabel]]) -> list[TrackScore]:
    """Per track id: the names it carried over the frames in order, and how often the name changed."""
    tracks: dict[int, TrackScore] = {}
    for frame in sorted(frames):
        for face in frames[frame]:
            if face.track_id is None:
                continue
            track = tracks.setdefault(face.track_id, TrackScore(face.track_id, frame, frame, [], 0))
            track.last_frame = frame
            if face.identity != UNKNOWN and (not track.identities or track.identities[-1] != face.identity):
                track.switches += bool(track.identities)
                track.identities.append(face.identity)
    return [tracks[k] for k in sorted(tracks)]


def score_identification(truth: Truth, frames: Mapping[int, list[FaceLabel]]) -> VideoScore:
    """Frame-level scores of predicted names against the truth (see the module docstring)."""
    truth_frames = truth.frame_sets()
    unknown_frames = {f for seg in truth.segments if seg.unknown for f in range(seg.start, seg.end + 1)}
    identities: dict[str, IdentityScore] = {}
    for seg in truth.segments:
        for name in seg.present | seg.optional:
            identities.setdefault(name, IdentityScore())
    false_by: dict[str, int] = {}
    false_total = false_frames = false_unknown = exact = missing = 0
    for frame, (present, optional) in sorted(truth_frames.items()):
        if frame not in frames:
            missing += 1
        faces = frames.get(frame, [])
        named = [face.identity for face in faces if face.identity != UNKNOWN]
        named_set = set(named)
        for name in present:
            identities[name].truth_frames += 1
        for name in named_set - optional:
            score = identities.setdefault(name, IdentityScore())
            score.named_frames += 1
            score.correct_frames += name in present
        wrong = [name for name in named if name not in present and name not in optional]
        for name in wrong:
            false_by[name] = false_by.get(name, 0) + 1
        false_total += len(wrong)
        false_frames += bool(wrong)
        false_unknown += len(wrong) if frame in unknown_frames else 0
        exact += (named_set - optional) == set(present)
    return VideoScore(
        scored_frames=len(truth_frames), frames_without_prediction=missing, exact_frames=exact,
        identities=identities, false_identifications=false_total, false_by_identity=false_by,
        frames_with_false_identification=false_frames, false_in_frames_with_unknown_people=false_unknown,
        tracks=track_switches(frames),
    )  # fmt: skip
