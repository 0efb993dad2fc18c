"""enroll/matching.py: the rules, on hand-built cases and against an independent oracle.

The oracle (`oracle_identify`) restates the rules in plain Python over numpy brute-force
distances to every sample, one face at a time; `Gallery.identify` (k-NN search, per-person
reduction, widening, vectorised decisions) must agree with it on random galleries. Calibration is
checked against impostor distances computed here from scratch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facestream.enroll.gallery import Gallery
from facestream.enroll.matching import (
    EMPTY,
    MARGIN,
    MATCH,
    NEGATIVE,
    NO_MATCH,
    best_per_person,
    decide,
    false_accept_rate,
    nearest_negatives,
    threshold_for_far,
)


def at(distance: float, dim: int = 0) -> np.ndarray:
    """A descriptor `distance` from the origin along one axis (exact when `distance` is a float32)."""
    vector = np.zeros((1, 128), np.float32)
    vector[0, dim] = distance
    return vector


def one(distance: float, threshold: float = 0.6, **kwargs: object):
    """decide() for one face with one candidate (person 1, "Alice")."""
    return decide(np.array([[1]]), np.array([[distance]]), np.array([[threshold]]), {1: "Alice"}, **kwargs)


# -- pure rules -------------------------------------------------------------------------------------------


def test_threshold_is_inclusive_at_exactly_0_6() -> None:
    assert one(0.6).identities == ["Alice"] and one(0.6).reasons == [MATCH]
    above = one(float(np.nextafter(0.6, 1.0)))
    assert above.identities == ["unknown"] and above.reasons == [NO_MATCH] and above.names == ["Alice"]
    assert above.distances[0] == np.nextafter(0.6, 1.0) and above.thresholds[0] == 0.6


def test_threshold_boundary_through_the_gallery(tmp_path: Path) -> None:
    # 0.375^2 + 0.5^2 = 0.625^2 exactly in binary, so the distance is exactly 0.625 (0.6 has no such pair).
    query = at(0.375, 0) + at(0.5, 1)
    with Gallery(tmp_path / "g.db", distance_threshold=0.625) as gallery:
        gallery.add_samples("Alice", at(0.0))
        matches = gallery.identify(query)
        assert matches.distances[0] == 0.625 and matches.identities == ["Alice"]
        gallery.set_threshold("Alice", float(np.nextafter(0.625, 0)))
        assert gallery.identify(query).identities == ["unknown"]


def test_margin_rule() -> None:
    candidates, thresholds, names = np.array([[1, 2]]), np.full((1, 2), 0.6), {1: "Alice", 2: "Bob"}
    close = decide(candidates, np.array([[0.40, 0.45]]), thresholds, names, margin=0.1)
    assert close.identities == ["unknown"] and close.reasons == [MARGIN]
    assert (close.names, close.runner_up) == (["Alice"], ["Bob"])
    clear = decide(candidates, np.array([[0.40, 0.55]]), thresholds, names, margin=0.1)
    assert clear.identities == ["Alice"] and clear.runner_up_distances[0] == 0.55
    off = decide(candidates, np.array([[0.40, 0.45]]), thresholds, names, margin=0.0)
    assert off.identities == ["Alice"]
    alone = decide(np.array([[1, -1]]), np.array([[0.40, np.inf]]), thresholds, names, margin=0.1)
    assert alone.identities == ["Alice"] and alone.runner_up == [None] and np.isnan(alone.runner_up_distances[0])


def test_per_person_threshold(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_samples("Alice", at(0.0))
        gallery.add_samples("Bob", at(5.0))
        assert gallery.identify(at(0.4)).identities == ["Alice"]
        gallery.set_threshold("Alice", 0.3)
        strict = gallery.identify(at(0.4))
        assert strict.identities == ["unknown"] and strict.thresholds[0] == pytest.approx(0.3)
        assert gallery.identify(at(5.5)).identities == ["Bob"]  # the default still applies to Bob


def test_runner_up_is_another_person_not_another_sample(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", search_k=2) as gallery:  # k=2: must widen past Alice's 6 samples
        gallery.add_samples("Alice", np.concatenate([at(0.01 * i) for i in range(6)]))
        gallery.add_samples("Bob", at(0.5, 1))
        gallery.add_samples("Carol", at(0.9, 1))
        matches = gallery.identify(np.concatenate([at(0.0), at(0.9, 1)]))
        assert matches.identities == ["Alice", "Carol"]
        assert matches.runner_up == ["Bob", "Bob"]
        assert matches.runner_up_distances[0] == pytest.approx(0.5) and matches.distances[0] == 0.0


def test_negative_examples(tmp_path: Path) -> None:
    def point(x: float, y: float) -> np.ndarray:
        return at(x, 0) + at(y, 1)

    with Gallery(tmp_path / "g.db", negative_threshold=0.45) as gallery:
        gallery.add_samples("Alice", point(0, 0))
        gallery.add_samples("Bob", point(0, 0.55))
        gallery.add_negative("Alice", point(0.6, 0))  # "the face at (0.6, 0) is NOT Alice"
        assert gallery.identify(point(-0.1, 0)).identities == ["Alice"]  # far from the negative: no effect
        # Nearer Alice's negative (0.05) than Alice (0.55): Alice excluded; Bob (0.78) is too far.
        near_negative = gallery.identify(point(0.55, 0))
        assert near_negative.identities == ["unknown"] and near_negative.reasons == [NEGATIVE]
        assert [r.name for r in near_negative.rejected[0]] == ["Alice"]
        assert near_negative.names == ["Bob"] and "Alice excluded" in near_negative.explain(0)
        # Alice nearest (0.47) but nearer her negative (0.32): excluded, and Bob (0.50) is the match.
        second = gallery.identify(point(0.4, 0.25))
        assert second.identities == ["Bob"] and second.reasons == ["match"]
        assert second.rejected[0][0].distance == pytest.approx(np.hypot(0.4, 0.25))
        # Nearer Alice (0.32) than her negative (0.40), but within negative_threshold of it: still excluded.
        absolute = gallery.identify(point(0.25, 0.2))
        assert absolute.identities == ["Bob"]
        assert absolute.rejected[0][0].negative_distance == pytest.approx(np.hypot(0.35, 0.2))
    with Gallery(tmp_path / "g.db", negative_threshold=0.0) as gallery:  # the absolute test off
        kept = gallery.identify(point(0.25, 0.2))
        assert kept.identities == ["Alice"] and kept.rejected == [()]
        assert gallery.identify(point(0.55, 0)).identities == ["unknown"]  # the relative test stays


def test_empty_gallery_gives_unknown(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        matches = gallery.identify(np.zeros((3, 128), np.float32))
        assert matches.identities == ["unknown"] * 3 and matches.reasons == [EMPTY] * 3
        assert np.isnan(matches.distances).all() and matches.runner_up == [None] * 3
        gallery.add_person("Alice")  # people without samples: still nobody to compare with
        assert gallery.identify(np.zeros((1, 128), np.float32)).reasons == [EMPTY]
        assert len(gallery.identify(np.zeros((0, 128), np.float32))) == 0
        with pytest.raises(ValueError):
            gallery.identify(np.zeros((2, 64), np.float32))


def test_best_per_person_and_nearest_negatives_against_loops() -> None:
    rng = np.random.default_rng(0)
    distances = np.sort(rng.random((50, 12)), axis=1)
    persons = rng.integers(-1, 5, (50, 12))
    cand, cand_d = best_per_person(distances, persons)
    for i in range(50):
        best = {}
        for d, p in zip(distances[i], persons[i]):
            if p >= 0:
                best[p] = min(best.get(p, np.inf), d)
        expected = sorted(best.items(), key=lambda item: item[1])
        assert [(int(p), d) for p, d in zip(cand[i], cand_d[i]) if p >= 0] == expected

    queries = rng.normal(size=(7, 128))
    negatives = rng.normal(size=(20, 128))
    negative_person = rng.integers(0, 6, 20)
    candidates = rng.integers(-1, 8, (7, 4))
    got = nearest_negatives(queries, candidates, negatives, negative_person)
    for i in range(7):
        for c in range(4):
            mine = negatives[(negative_person == candidates[i, c]) & (candidates[i, c] >= 0)]
            expected = np.linalg.norm(mine - queries[i], axis=1).min() if len(mine) else np.inf
            assert got[i, c] == pytest.approx(expected, rel=1e-12)


# -- identify against an oracle --------------------------------------------------------------------------------


def oracle_identify(query, vectors, person, negatives, negative_person, thresholds, margin, negative_threshold):
    """The rules, stated plainly: (identity, nearest eligible person, runner-up person, reason)."""
    d = np.linalg.norm(vectors.astype(np.float64) - query, axis=1)
    nd = np.linalg.norm(negatives.astype(np.float64) - query, axis=1)
    people = sorted({int(p) for p in person}, key=lambda p: d[person == p].min())
    eligible, rejected_within = [], False
    for p in people:
        best = d[person == p].min()
        neg = nd[negative_person == p].min() if (negative_person == p).any() else np.inf
        if neg < best or neg <= negative_threshold:
            if not eligible and best <= thresholds[p]:
                rejected_within = True
            continue
        eligible.append((p, best))
    if not eligible:
        return "unknown", None, None, NEGATIVE if rejected_within else NO_MATCH
    (p, best), runner = eligible[0], (eligible[1] if len(eligible) > 1 else None)
    if best > thresholds[p]:
        return "unknown", p, runner and runner[0], NEGATIVE if rejected_within else NO_MATCH
    if margin > 0 and runner is not None and runner[1] - best < margin:
        return "unknown", p, runner[0], MARGIN
    return f"p{p}", p, runner and runner[0], MATCH


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identify_agrees_with_the_oracle(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    people = 25
    centers = np.zeros((people, 128))
    centers[:, :8] = rng.normal(0, 0.2, (people, 8))  # low-dimensional spread: people at many distances
    person = rng.integers(0, people, 300)
    vectors = (centers[person] + rng.normal(0, 0.025, (300, 128))).astype(np.float32)
    # Negatives: look-alikes near their own person (the usual case: a corrected false accept), and strays.
    negative_person = rng.integers(0, people, 30)
    near = np.where(np.arange(30) < 20, negative_person, rng.integers(0, people, 30))
    negatives = centers[near] + rng.normal(0, 0.02, (30, 128))
    negatives[:, :8] += rng.normal(0, 0.06, (30, 8))
    negatives = negatives.astype(np.float32)
    thresholds = {p: 0.6 for p in range(people)}
    margin, negative_threshold = 0.03, 0.35
    with Gallery(tmp_path / f"g{seed}.db", margin=margin, negative_threshold=negative_threshold, search_k=4) as gallery:
        present = sorted(set(person.tolist()))
        gallery.add_samples([f"p{p}" for p in person], vectors)
        for p in present[:8]:
            thresholds[p] = float(rng.uniform(0.3, 0.7))
            gallery.set_threshold(f"p{p}", thresholds[p])
        keep = np.isin(negative_person, present)
        for p in np.unique(negative_person[keep]):
            gallery.add_negative(f"p{p}", negatives[keep][negative_person[keep] == p])
        negatives, negative_person = negatives[keep], negative_person[keep]
        strangers = np.zeros((5, 128))
        strangers[:, :8] = rng.normal(0, 0.2, (5, 8))  # people not enrolled
        sources = np.concatenate([centers, strangers])
        queries = (sources[rng.integers(0, people + 5, 200)] + rng.normal(0, 0.03, (200, 128))).astype(np.float32)
        matches = gallery.identify(queries)
    reasons = []
    for i, query in enumerate(queries):
        identity, nearest, runner, reason = oracle_identify(
            query, vectors, person, negatives, negative_person, thresholds, margin, negative_threshold
        )
        assert (matches.identities[i], matches.reasons[i]) == (identity, reason), i
        assert matches.names[i] == (None if nearest is None else f"p{nearest}")
        assert matches.runner_up[i] == (None if runner is None else f"p{runner}")
        reasons.append(reason)
    assert set(reasons) == {MATCH, NO_MATCH, MARGIN, NEGATIVE}, sorted(reasons)  # every rule is exercised


# -- calibration ----------------------------------------------------------------------------------------------------


def test_threshold_for_far() -> None:
    rng = np.random.default_rng(0)
    distances = rng.uniform(0.3, 1.2, 5000)
    for target in (1e-3, 1e-2, 0.1):
        t = threshold_for_far(distances, target)
        assert false_accept_rate(distances, t) <= target
        assert false_accept_rate(distances, float(np.nextafter(t, np.inf))) > target  # the largest such
    assert threshold_for_far(np.zeros(0), 0.1) is None


def test_calibrate_on_clustered_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    people, per = 40, 6
    centers = np.zeros((people, 128))
    centers[:, :8] = rng.normal(0, 0.22, (people, 8))  # ~6% of impostor pairs within 0.6
    person = np.repeat(np.arange(people), per)
    vectors = (centers[person] + rng.normal(0, 0.02, (people * per, 128))).astype(np.float32)
    outsiders = np.zeros((10, 128), np.float32)
    outsiders[:, :8] = rng.normal(0, 0.22, (10, 8))
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_samples([f"p{p}" for p in person], vectors)
        result = gallery.calibrate(target_far=1e-3, impostor_descriptors=outsiders)

    # Independently: every pair of samples of different people, and every outsider against every sample.
    v = vectors.astype(np.float64)
    all_pairs = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    upper = np.triu(np.ones_like(all_pairs, dtype=bool), 1)
    impostor = np.concatenate([
        all_pairs[upper & (person[:, None] != person[None])],
        np.sqrt(((outsiders[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)).ravel(),
    ])  # fmt: skip
    genuine = all_pairs[upper & (person[:, None] == person[None])]
    assert result["impostor_pairs"] == len(impostor) == 240 * 234 // 2 + 2400
    assert result["impostor_pairs_exhaustive"] is True
    assert result["far"] == pytest.approx(np.mean(impostor <= 0.6), abs=1e-12)
    assert 0.001 < result["far"] < 0.2  # the data is built so that the question is not trivial
    t = result["threshold_for_target_far"]
    assert np.mean(impostor <= t) <= 1e-3 < np.mean(impostor <= np.nextafter(t, 1))
    assert result["genuine_pairs"] == len(genuine) and result["frr"] == pytest.approx(np.mean(genuine > 0.6))
    # Open set: each sample's nearest sample of another person, each outsider's nearest sample.
    other = np.where(person[:, None] != person[None], all_pairs, np.inf).min(axis=1)
    outsider_nearest = np.sqrt(((outsiders[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)).min(axis=1)
    nearest = np.concatenate([other, outsider_nearest])
    assert result["identification"]["probes"] == 250
    assert result["identification"]["far"] == pytest.approx(np.mean(nearest <= 0.6), abs=1e-12)
    assert result["meaningful"] is True and result["note"] == "ok"

    with Gallery(tmp_path / "small.db") as gallery:  # too few to mean anything: said so
        gallery.add_samples(["a", "a", "b"], vectors[:3])
        small = gallery.calibrate()
        assert small["meaningful"] is False and "only 2 impostor pairs" in small["note"]
