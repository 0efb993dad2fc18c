"""Who is this face? The matching rules, as pure functions over arrays.

The steps, for N query faces at once:

1. `best_per_person`: the k nearest samples of each query -> each *person's* nearest distance,
   people sorted nearest first (a person with many samples counts once).
2. `nearest_negatives`: for those candidate people, the distance to each one's nearest negative
   example ("this face is NOT Alice").
3. `decide`: the rules, in this order —
   * negatives: a candidate is excluded for this query when the query is nearer one of their
     negative examples than their nearest positive sample, or within `negative_threshold` of a
     negative example. Excluded people are skipped (and listed in `Matches.rejected`);
   * the best person is the nearest candidate not excluded; the runner-up is the next one (always
     a different person, never just the second-nearest sample);
   * threshold: the best person is the identity when their distance is at most their own
     threshold (per-person if set, else the gallery's `distance_threshold`, 0.6 by default,
     dlib's rule); the boundary is inclusive;
   * margin: with `margin` > 0, the runner-up must be at least `margin` farther than the best,
     else the face is "unknown" (two people too close to call).

Reasons, one per face: "match", "no_match" (nearest person beyond their threshold), "margin",
"negative" (the person who would have matched was excluded by a negative example and nobody else
matched), "empty" (nobody to compare with).

Calibration helpers at the end: impostor distances and the threshold for a target false-accept rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .records import UNKNOWN

MATCH, NO_MATCH, MARGIN, NEGATIVE, EMPTY = "match", "no_match", "margin", "negative", "empty"
REASONS = (MATCH, NO_MATCH, MARGIN, NEGATIVE, EMPTY)


class Rejection(NamedTuple):
    """A person excluded for one query by their negative examples."""

    name: str
    distance: float  # to the person's nearest positive sample
    negative_distance: float  # to the person's nearest negative example


@dataclass
class Matches:
    """One row per query face (in the manner of `FaceBatch`: arrays, not a list of objects)."""

    identities: list[str]  # the matched person's name, or "unknown"
    names: list[str | None]  # the nearest eligible person, matched or not; None when there is none
    distances: np.ndarray  # (N,) float64 Euclidean distance to `names[i]`; NaN when None
    thresholds: np.ndarray  # (N,) the threshold applied to `names[i]`; NaN when None
    runner_up: list[str | None]  # the next eligible person (a different person); None when there is none
    runner_up_distances: np.ndarray  # (N,) float64; NaN when None
    reasons: list[str]  # one of REASONS
    rejected: list[tuple[Rejection, ...]]  # people nearer than `names[i]` excluded by negative examples

    def __len__(self) -> int:
        return len(self.identities)

    @property
    def matched(self) -> np.ndarray:
        return np.array([reason == MATCH for reason in self.reasons], dtype=bool)

    @classmethod
    def empty(cls, n: int) -> Matches:
        """Every face unknown: nobody enrolled."""
        nan = np.full(n, np.nan)
        return cls(
            [UNKNOWN] * n, [None] * n, nan, nan.copy(), [None] * n, nan.copy(), [EMPTY] * n, [()] * n
        )  # fmt: skip

    def explain(self, i: int) -> str:
        """One sentence on why face i got its identity."""
        parts = []
        for r in self.rejected[i]:
            parts.append(
                f"{r.name} excluded: {r.negative_distance:.3f} from one of their negative examples"
                f" (nearest sample {r.distance:.3f})"
            )
        name, distance, threshold = self.names[i], self.distances[i], self.thresholds[i]
        runner = f"; runner-up {self.runner_up[i]} at {self.runner_up_distances[i]:.3f}" if self.runner_up[i] else ""
        reason = self.reasons[i]
        if reason == EMPTY:
            parts.append("nobody is enrolled")
        elif name is None:
            parts.append("no other enrolled person")
        elif reason == MATCH:
            parts.append(f"{name} at {distance:.3f} <= {threshold:.3f}{runner}")
        elif reason == MARGIN:
            parts.append(f"{name} at {distance:.3f} but too close to the runner-up{runner}")
        else:
            parts.append(f"nearest {name} at {distance:.3f} > {threshold:.3f}{runner}")
        return f"{self.identities[i]} ({reason}): " + "; ".join(parts)

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready dicts, one per face."""

        def number(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        return [
            {
                "identity": self.identities[i],
                "reason": self.reasons[i],
                "name": self.names[i],
                "distance": number(self.distances[i]),
                "threshold": number(self.thresholds[i]),
                "runner_up": self.runner_up[i],
                "runner_up_distance": number(self.runner_up_distances[i]),
                "rejected": [r._asdict() for r in self.rejected[i]],
            }
            for i in range(len(self))
        ]


def best_per_person(distances: np.ndarray, person_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample hits (N,k) -> each person's nearest distance, nearest person first.

    `person_ids` is -1 where there is no hit. Returns (persons (N,C), distances (N,C)), C the most
    distinct people in any row, padded with -1 and inf.
    """
    distances = np.asarray(distances, dtype=np.float64)
    person_ids = np.asarray(person_ids, dtype=np.int64)
    n, k = person_ids.shape
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0))
    distances = np.where(person_ids >= 0, distances, np.inf)
    order = np.lexsort((distances, person_ids), axis=-1)  # by person, then nearest first
    persons = np.take_along_axis(person_ids, order, axis=1)
    dists = np.take_along_axis(distances, order, axis=1)
    first = np.ones_like(persons, dtype=bool)
    first[:, 1:] = persons[:, 1:] != persons[:, :-1]
    first &= persons >= 0
    dists = np.where(first, dists, np.inf)
    persons = np.where(first, persons, -1)
    order = np.argsort(dists, axis=1, kind="stable")
    width = max(1, int(first.sum(axis=1).max()))
    return np.take_along_axis(persons, order, axis=1)[:, :width], np.take_along_axis(dists, order, axis=1)[:, :width]


def euclidean(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(N,M) Euclidean distances in float64 from differences (no |x|^2+|y|^2-2xy cancellation)."""
    queries = np.asarray(queries, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    out = np.empty((len(queries), len(vectors)))
    step = max(1, (1 << 15) // max(1, len(vectors)))
    for start in range(0, len(queries), step):
        diff = queries[start : start + step, None, :] - vectors[None, :, :]
        out[start : start + step] = np.sqrt(np.einsum("nmd,nmd->nm", diff, diff))
    return out


def nearest_negatives(
    queries: np.ndarray, candidates: np.ndarray, negatives: np.ndarray, negative_person_ids: np.ndarray
) -> np.ndarray:
    """(N,C) distance from each query to the nearest negative example of each candidate person (inf if none).

    Exact over all negative examples: they are few (one per false accept an operator corrected).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    out = np.full(candidates.shape, np.inf)
    if len(negatives) == 0 or candidates.size == 0:
        return out
    negative_person_ids = np.asarray(negative_person_ids, dtype=np.int64)
    order = np.argsort(negative_person_ids, kind="stable")
    people, starts = np.unique(negative_person_ids[order], return_index=True)
    per_person = np.minimum.reduceat(euclidean(queries, np.asarray(negatives)[order]), starts, axis=1)  # (N,U)
    column = np.searchsorted(people, candidates)
    column = np.minimum(column, len(people) - 1)
    has = (people[column] == candidates) & (candidates >= 0)
    rows = np.arange(len(candidates))[:, None]
    out[has] = np.broadcast_to(per_person[rows, column], candidates.shape)[has]
    return out


def excluded_by_negatives(
    distances: np.ndarray, negative_distances: np.ndarray, negative_threshold: float | None
) -> np.ndarray:
    """(N,C) True where a candidate is excluded: nearer a negative example than their nearest positive
    sample, or within `negative_threshold` (None or 0 turns that second test off) of a negative."""
    excluded = negative_distances < distances
    if negative_threshold:
        excluded |= negative_distances <= negative_threshold
    return excluded & np.isfinite(distances)


def decide(
    candidates: np.ndarray,
    distances: np.ndarray,
    thresholds: np.ndarray,
    names: Mapping[int, str],
    *,
    margin: float = 0.0,
    negative_distances: np.ndarray | None = None,
    negative_threshold: float | None = 0.5,
) -> Matches:
    """Apply the rules (module docstring) to candidates from `best_per_person`.

    `thresholds` (N,C) is the threshold of each candidate (per-person, else the default);
    `negative_distances` (N,C) from `nearest_negatives`, or None for no negative rule.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n, width = candidates.shape
    valid = (candidates >= 0) & np.isfinite(distances)
    if negative_distances is None:
        excluded = np.zeros_like(valid)
        negative_distances = np.full(candidates.shape, np.inf)
    else:
        excluded = excluded_by_negatives(distances, negative_distances, negative_threshold) & valid
    eligible = valid & ~excluded
    rows = np.arange(n)
    has_best = eligible.any(axis=1)
    best = np.argmax(eligible, axis=1)
    after_best = eligible & (np.arange(width)[None, :] > best[:, None])
    has_runner = after_best.any(axis=1)
    runner = np.argmax(after_best, axis=1)

    best_distance = np.where(has_best, distances[rows, best] if width else np.nan, np.nan)
    best_threshold = np.where(has_best, thresholds[rows, best] if width else np.nan, np.nan)
    runner_distance = np.where(has_runner, distances[rows, runner] if width else np.nan, np.nan)
    within = has_best & (best_distance <= best_threshold)
    clear = ~has_runner | (runner_distance - best_distance >= margin) if margin > 0 else np.ones(n, dtype=bool)
    matched = within & clear
    # People excluded who would otherwise have been the answer: within their own threshold.
    excluded_within = excluded & (distances <= thresholds)

    def name_of(person_id: np.int64) -> str:
        return names.get(int(person_id)) or f"person #{int(person_id)}"

    identities, best_names, runner_names, reasons, rejected = [], [], [], [], []
    for i in range(n):
        name = name_of(candidates[i, best[i]]) if has_best[i] else None
        best_names.append(name)
        runner_names.append(name_of(candidates[i, runner[i]]) if has_runner[i] else None)
        stop = best[i] if has_best[i] else width
        rejected.append(
            tuple(
                Rejection(name_of(candidates[i, c]), float(distances[i, c]), float(negative_distances[i, c]))
                for c in range(stop)
                if excluded[i, c]
            )
        )
        if not valid[i].any():
            reason = EMPTY
        elif matched[i]:
            reason = MATCH
        elif within[i]:
            reason = MARGIN
        elif excluded_within[i, :stop].any():
            reason = NEGATIVE
        else:
            reason = NO_MATCH
        reasons.append(reason)
        identities.append(name if reason == MATCH and name is not None else UNKNOWN)
    return Matches(
        identities, best_names, best_distance, best_threshold, runner_names, runner_distance, reasons, rejected
    )


# -- calibration -------------------------------------------------------------------------------------


def pair_distances(
    vectors: np.ndarray, person_ids: np.ndarray, max_pairs: int = 2_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Distances of sample pairs: (impostor (different people), genuine (same person), exhaustive).

    Every pair when there are at most `max_pairs`, else `max_pairs` pairs drawn at random
    (uniformly over ordered pairs of distinct samples, a fixed seed: the same gallery gives the
    same answer). Distances in float64 from differences, as identification computes them.
    """
    vectors = np.asarray(vectors, dtype=np.float32)  # float64 per chunk only: a 1M gallery stays at 512 MB
    person_ids = np.asarray(person_ids, dtype=np.int64)
    n = len(vectors)
    if n < 2:
        return np.zeros(0), np.zeros(0), True
    if n * (n - 1) // 2 <= max_pairs:
        impostor, genuine = [], []
        for i in range(n - 1):
            d = np.sqrt(((vectors[i + 1 :].astype(np.float64) - vectors[i]) ** 2).sum(axis=1))
            same = person_ids[i + 1 :] == person_ids[i]
            impostor.append(d[~same])
            genuine.append(d[same])
        return np.concatenate(impostor), np.concatenate(genuine), True
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, max_pairs)
    second = (first + rng.integers(1, n, max_pairs)) % n  # never the same sample
    d = np.empty(max_pairs)
    step = 1 << 16
    for start in range(0, max_pairs, step):
        a, b = first[start : start + step], second[start : start + step]
        d[start : start + step] = np.sqrt(((vectors[a].astype(np.float64) - vectors[b]) ** 2).sum(axis=1))
    same = person_ids[first] == person_ids[second]
    return d[~same], d[same], False


def false_accept_rate(impostor_distances: np.ndarray, threshold: float) -> float:
    """Share of impostor distances accepted at `threshold` (distance <= threshold); NaN without any."""
    impostor_distances = np.asarray(impostor_distances)
    if len(impostor_distances) == 0:
        return float("nan")
    return float(np.count_nonzero(impostor_distances <= threshold) / len(impostor_distances))


def threshold_for_far(impostor_distances: np.ndarray, target_far: float) -> float | None:
    """The largest threshold whose observed false-accept rate is at most `target_far` (None without data).

    With m = floor(target * n) false accepts allowed, that is just below the (m+1)-th smallest
    impostor distance (the rule is inclusive, so that distance itself would be one too many).
    """
    ordered = np.sort(np.asarray(impostor_distances, dtype=np.float64))
    if len(ordered) == 0:
        return None
    allowed = int(np.floor(target_far * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], -np.inf))
