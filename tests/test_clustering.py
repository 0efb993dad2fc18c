"""Chinese whispers against dlib's own (dlib-bin as the oracle), and unknown faces grouped into people."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from facestream.enroll.clustering import (
    UnknownFace,
    chinese_whispers,
    chinese_whispers_graph,
    cluster_unknowns,
    dlib_rand_picks,
    similarity_edges,
)

from conftest import golden_images, golden_video, require_dlib

dlib = require_dlib()


def bald_guys() -> np.ndarray:
    return np.array([f["descriptor"] for f in golden_images()["dlib_faces/bald_guys.jpg"]["cnn_faces"]])


def dlib_labels(descriptors: np.ndarray, threshold: float = 0.6) -> list[int]:
    return list(dlib.chinese_whispers_clustering([dlib.vector(row.tolist()) for row in descriptors], threshold))


def synthetic(seed: int) -> np.ndarray:
    """People as random centres in 128-d with faces scattered around them: within-person distances
    around 0.35-0.65 and centres 0.6-1.4 apart, so the 0.6 graph is neither complete nor empty."""
    rng = np.random.default_rng(seed)
    people, n = int(rng.integers(1, 15)), int(rng.integers(2, 160))
    centres = rng.normal(0, 0.7 / np.sqrt(128), (people, 128)) * rng.uniform(0.8, 1.6)
    return centres[rng.integers(0, people, n)] + rng.normal(0, rng.uniform(0.02, 0.04), (n, 128))


def components(n: int, edges: np.ndarray) -> list[int]:
    """Connected components, labelled in order of first appearance (what a plain 'link below 0.6' gives)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges.tolist():
        parent[root(i)] = root(j)
    first: dict[int, int] = {}
    return [first.setdefault(root(i), len(first)) for i in range(n)]


# -- dlib parity -------------------------------------------------------------------------------


def test_bald_guys_four_people_of_six_and_one_stray_as_dlib() -> None:
    descriptors = bald_guys()
    ours = chinese_whispers(descriptors, 0.6).tolist()
    theirs = dlib_labels(descriptors)
    assert ours == theirs
    assert sorted(Counter(ours).values()) == [1, 6, 6, 6, 6]


def test_every_golden_face_as_dlib() -> None:
    descriptors = np.array([f["descriptor"] for image in golden_images().values() for f in image["cnn_faces"]])
    assert len(descriptors) == 84
    for threshold in (0.5, 0.6, 0.7):
        assert chinese_whispers(descriptors, threshold).tolist() == dlib_labels(descriptors, threshold)


def test_random_descriptor_sets_as_dlib() -> None:
    differs_from_components = 0
    for seed in range(15):
        descriptors = synthetic(seed)
        ours = chinese_whispers(descriptors).tolist()
        assert ours == dlib_labels(descriptors), f"seed {seed}"
        differs_from_components += ours != components(len(descriptors), similarity_edges(descriptors, 0.6))
    # The random order of updates matters: plain connected components would not pass this test.
    assert differs_from_components >= 2


def test_weighted_and_unweighted_graphs_as_dlib() -> None:
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        n, e = int(rng.integers(2, 60)), int(rng.integers(1, 250))
        i, j = rng.integers(0, n, e), rng.integers(0, n, e)  # duplicates and self-loops included
        weights = rng.uniform(0.0, 1.0, e) if seed % 2 else rng.choice([0.5, 1.0, 2.0], e)
        theirs = list(dlib.chinese_whispers([(int(a), int(b), float(w)) for a, b, w in zip(i, j, weights)]))
        assert chinese_whispers_graph(np.stack([i, j], axis=1), weights).tolist() == theirs, f"seed {seed}"
        theirs = list(dlib.chinese_whispers([(int(a), int(b)) for a, b in zip(i, j)]))
        assert chinese_whispers_graph(np.stack([i, j], axis=1)).tolist() == theirs, f"seed {seed}"


def test_dlib_random_numbers() -> None:
    # mt19937 seeded 5489: output 1 is 3499211612 and output 10000 is 4123659995 (C++ [rand.predef]).
    picks = dlib_rand_picks(5000, 1 << 62, discard=0)
    assert int(picks[0]) >> 32 == 3499211612 & ((1 << 30) - 1)
    assert int(picks[4999]) & 0xFFFFFFFF == 4123659995
    # dlib::rand discards 10,000 outputs first, then combines two per 64-bit number.
    assert dlib_rand_picks(3, 1 << 62)[0] == dlib_rand_picks(5003, 1 << 62, discard=0)[5000]


def test_seed_matters_and_labels_are_canonical() -> None:
    # Another random sequence gives another partition somewhere: reproducing dlib's own sequence matters.
    assert any(
        chinese_whispers(synthetic(seed), seed=1).tolist() != chinese_whispers(synthetic(seed)).tolist()
        for seed in range(15)
    )
    descriptors = synthetic(3)
    labels = chinese_whispers(descriptors)
    assert labels[0] == 0 and set(labels.tolist()) == set(range(labels.max() + 1))
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(labels.max() + 1)]
    assert first == sorted(first)  # numbered in order of first appearance, as dlib renumbers


def test_edges_are_exact_at_the_threshold() -> None:
    a = np.zeros((1, 128))
    b = np.zeros((1, 128))
    b[0, 0] = float(np.float32(0.6))  # exactly dlib's float threshold: not below it, no edge
    c = np.zeros((1, 128))
    c[0, 0] = np.nextafter(float(np.float32(0.6)), 0)  # just below: an edge
    assert similarity_edges(np.concatenate([a, b]), 0.6).tolist() == [[0, 0], [1, 1]]
    assert similarity_edges(np.concatenate([a, c]), 0.6).tolist() == [[0, 0], [0, 1], [1, 1]]
    assert chinese_whispers(np.concatenate([a, b]), 0.6).tolist() == dlib_labels(np.concatenate([a, b]))
    assert chinese_whispers(np.concatenate([a, c]), 0.6).tolist() == dlib_labels(np.concatenate([a, c]))


def test_edge_cases() -> None:
    assert chinese_whispers(np.zeros((0, 128))).tolist() == []
    assert chinese_whispers(np.zeros((1, 128))).tolist() == [0]
    assert chinese_whispers(np.zeros((5, 128))).tolist() == [0] * 5  # identical faces: one person
    far = np.eye(4, 128) * 10
    assert chinese_whispers(far).tolist() == [0, 1, 2, 3]
    assert chinese_whispers_graph(np.zeros((0, 2)), num_nodes=3).tolist() == [0, 1, 2]
    assert chinese_whispers_graph([[0, 1]], num_nodes=4).tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="finite"):
        chinese_whispers(np.full((2, 128), np.nan))
    with pytest.raises(ValueError, match="positive"):
        chinese_whispers(np.zeros((2, 128)), 0.0)
    with pytest.raises(ValueError, match="weights"):
        chinese_whispers_graph([[0, 1]], [1.0, 2.0])


# -- unknown people ----------------------------------------------------------------------------


def video_and_photo_faces() -> list[UnknownFace]:
    """Frames 0-29 of the demo clip as two tracks (Lin-Manuel Miranda 0-19, Alex Lacamoire 20-29) and the
    25 bald_guys.jpg faces as 25 one-face tracks of another stream, all dlib's golden descriptors."""
    faces = []
    frames = golden_video()["frames"]
    for key in sorted(frames, key=int):
        for face in frames[key]["cnn_faces"]:
            frame = int(key)
            l, t, r, b = face["rect"][:4]
            faces.append(UnknownFace(np.array(face["descriptor"], np.float32), "clip", frame, frame / 29.97,
                                     1 if frame < 20 else 2, (l, t, r, b), face["rect"][4]))  # fmt: skip
    for i, face in enumerate(golden_images()["dlib_faces/bald_guys.jpg"]["cnn_faces"]):
        faces.append(UnknownFace(np.array(face["descriptor"], np.float32), "photos", 0, 100.0 + i, 100 + i))
    return faces


def test_cluster_unknowns_numbers_people_by_visits() -> None:
    faces = video_and_photo_faces()
    clusters = cluster_unknowns(faces)
    labels = chinese_whispers(np.stack([f.descriptor for f in faces]))
    assert labels.tolist() == dlib_labels(np.stack([f.descriptor for f in faces]).astype(np.float64))
    # Every cluster is exactly one chinese-whispers label.
    assert sorted(sorted(c.faces) for c in clusters) == sorted(
        np.flatnonzero(labels == k).tolist() for k in range(labels.max() + 1)
    )
    summary = [(len(c.tracks), len(c.faces)) for c in clusters]
    assert summary == sorted(summary, key=lambda s: (-s[0], -s[1]))
    assert [c.number for c in clusters] == list(range(1, len(clusters) + 1))
    assert clusters[0].label == "unknown person 1"
    # The clip's two people are one track each.
    lin = next(c for c in clusters if ("clip", 1) in c.tracks)
    alex = next(c for c in clusters if ("clip", 2) in c.tracks)
    assert sorted(faces[i].frame_index for i in lin.faces if faces[i].stream_id == "clip") == list(range(20))
    assert sorted(faces[i].frame_index for i in alex.faces if faces[i].stream_id == "clip") == list(range(20, 30))
    # bald_guys face 24 joins Alex's cluster (dlib's partition too): two visits rank above one long visit.
    assert lin.tracks == [("clip", 1)] and alex.tracks == [("clip", 2), ("photos", 124)]
    assert alex.number < lin.number
    assert faces[lin.first_seen].frame_index == 0 and faces[lin.last_seen].frame_index == 19
    for cluster in clusters:
        assert set(cluster.representatives) <= set(cluster.faces)
        assert len(cluster.representatives) == min(3, len(cluster.faces))
        record = cluster.to_record(faces)
        assert record["faces"] == len(cluster.faces) and record["tracks"] == len(cluster.tracks)
        assert len(record["id"]) == 12


def test_cluster_ids_are_stable_and_representatives_central() -> None:
    faces = video_and_photo_faces()
    clusters = cluster_unknowns(faces)
    again = cluster_unknowns(list(faces))
    assert [c.key(faces) for c in clusters] == [c.key(faces) for c in again]
    assert len({c.key(faces) for c in clusters}) == len(clusters)
    for cluster in clusters:
        vectors = np.stack([faces[i].descriptor for i in cluster.faces]).astype(np.float64)
        distance = np.linalg.norm(vectors - vectors.mean(axis=0), axis=1)
        nearest = np.array(cluster.faces)[np.argsort(distance, kind="stable")][: len(cluster.representatives)]
        assert np.allclose(
            np.sort(distance[[cluster.faces.index(i) for i in cluster.representatives]]),
            np.sort(distance[[cluster.faces.index(i) for i in nearest]]),
        )


def test_cluster_unknowns_empty() -> None:
    assert cluster_unknowns([]) == []
