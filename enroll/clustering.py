"""Who are the unknown faces? Chinese whispers clustering, as dlib does it, and "unknown person 1, 2, ...".

`chinese_whispers(descriptors, threshold)` gives the same labels as dlib's
``dlib.chinese_whispers_clustering(descriptors, threshold)`` (dlib/clustering/chinese_whispers.h and the
Python binding in tools/python/src/face_recognition.cpp), not merely an equivalent partition:

* the graph: an edge between faces i <= j (a self-loop for every face included) when their Euclidean
  distance, in float64, is strictly below the threshold; the binding takes the threshold as a C ``float``,
  so 0.6 is compared as float32(0.6) = 0.6000000238 (we do the same). Every edge weighs 1;
* the edges become ordered pairs both ways (a self-loop once), sorted by (node, neighbour);
* every node starts with its own label; then ``iterations * N`` times: pick a node with dlib's default
  ``dlib::rand`` (Mersenne twister mt19937 seeded 5489, 10,000 outputs discarded, each pick
  ``((a << 32) | b) % N`` from two 32-bit outputs), sum the edge weights per label over its neighbours,
  and give it the label with the largest sum (the smallest label on a tie: dlib walks an ordered map
  and keeps the first strict maximum). Labels change one node at a time, in that random order, so the
  result depends on the exact sequence: this loop is inherently sequential;
* finally labels are renumbered 0, 1, ... in order of first appearance.

The graph is built vectorised and in blocks (memory grows with the edges, not N^2), the random picks are
drawn in one call of numpy's MT19937 (set to dlib's state), and nodes with no neighbour but themselves
are skipped (their label cannot change). `chinese_whispers_graph` is the same over an explicit edge list,
weights allowed, like ``dlib.chinese_whispers(edges)``.

`cluster_unknowns(faces)` applies it to unknown faces seen by a run (`UnknownFace`: descriptor, stream,
frame, timestamp, track, optional chip path) and returns `UnknownCluster`s numbered "unknown person 1,
2, ..." by how many tracks (visits) they hold, with face counts, first and last seen and the faces
nearest the cluster's mean as representatives. Pure: no files, no gallery (see pipeline/domain/unknowns.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DLIB_RAND_DISCARD",
    "DLIB_RAND_SEED",
    "UnknownCluster",
    "UnknownFace",
    "chinese_whispers",
    "chinese_whispers_graph",
    "cluster_unknowns",
    "dlib_rand_picks",
    "similarity_edges",
]

DLIB_RAND_SEED = 5489  # mersenne_twister::seed() default, used by a default-constructed dlib::rand
DLIB_RAND_DISCARD = 10_000  # dlib::rand's constructor "primes the generator" with this many outputs
DEFAULT_ITERATIONS = 100  # dlib's chinese_whispers default num_iterations
_NUMPY_PATH_DEGREE = 256  # above this many neighbours the label count runs in numpy (measured faster there)


# ------------------------------------------------------------------------------------------------
# dlib's random numbers


def _mt19937_state(seed: int) -> np.ndarray:
    """The 624-word state of mt19937 after init_genrand(seed) (Matsumoto & Nishimura 2002, dlib's seed())."""
    key = np.empty(624, np.uint32)
    value = seed & 0xFFFFFFFF
    key[0] = value
    for i in range(1, 624):
        value = (1812433253 * (value ^ (value >> 30)) + i) & 0xFFFFFFFF
        key[i] = value
    return key


def dlib_rand_picks(
    count: int, modulo: int, seed: int = DLIB_RAND_SEED, discard: int = DLIB_RAND_DISCARD
) -> np.ndarray:
    """The first `count` values of ``dlib::rand().get_random_64bit_number() % modulo``, as int64.

    dlib::rand wraps a standard mt19937; ``get_random_64bit_number`` is ``(a << 32) | b`` of two
    consecutive 32-bit outputs. numpy's MT19937 is the same generator: we set its state to dlib's.
    """
    if modulo <= 0:
        raise ValueError(f"modulo must be positive, got {modulo}")
    generator = np.random.MT19937()
    generator.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_state(seed), "pos": 624}}
    if discard:
        generator.random_raw(discard)
    raw = generator.random_raw(2 * count).astype(np.uint64)
    combined = (raw[0::2] << np.uint64(32)) | raw[1::2]
    return (combined % np.uint64(modulo)).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# the graph


def _as_descriptors(descriptors: Any) -> np.ndarray:
    array = np.asarray(descriptors, dtype=np.float64)
    if array.ndim != 2 or (len(array) and array.shape[1] == 0):
        raise ValueError(f"descriptors must be an (N, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("descriptors must be finite (NaN or inf found)")
    return array


def similarity_edges(descriptors: Any, threshold: float, block: int = 2048) -> np.ndarray:
    """(E,2) int64 pairs (i, j), i <= j, self-loops included, whose float64 Euclidean distance is
    strictly below float32(`threshold`), as dlib's ``chinese_whispers_clustering`` builds them; sorted by
    (i, j).

    Candidates come from a matrix product (|x|^2 + |y|^2 - 2xy, `block` rows at a time: memory grows with
    the edges, not N^2); every candidate within 1e-6 of the threshold or below is then measured again
    from differences, as dlib does, so the rounding of the product never decides an edge.
    """
    array = _as_descriptors(descriptors)
    limit = float(np.float32(threshold))
    if not limit > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    n = len(array)
    norms = np.einsum("nd,nd->n", array, array)
    loose = (limit + 1e-6) ** 2
    parts = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        squared = norms[start:stop, None] + norms[None, start:] - 2.0 * (array[start:stop] @ array[start:].T)
        local_i, local_j = np.nonzero(squared < loose)
        i, j = local_i + start, local_j + start
        keep = j >= i
        i, j = i[keep], j[keep]
        exact = np.empty(len(i))
        for s in range(0, len(i), 1 << 16):
            diff = array[i[s : s + (1 << 16)]] - array[j[s : s + (1 << 16)]]
            exact[s : s + (1 << 16)] = np.sqrt(np.einsum("nd,nd->n", diff, diff))
        below = exact < limit
        parts.append(np.stack([i[below], j[below]], axis=1))
    if not parts:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(parts).astype(np.int64)


def _ordered_adjacency(
    edges: np.ndarray, weights: np.ndarray | None, num_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dlib's convert_unordered_to_ordered + sort by (index1, index2) + find_neighbor_ranges: CSR arrays
    (indptr (N+1,), neighbours (E',), weights (E',) or None)."""
    a = np.minimum(edges[:, 0], edges[:, 1])
    b = np.maximum(edges[:, 0], edges[:, 1])
    loop = a == b
    first = np.concatenate([a, b[~loop]])
    second = np.concatenate([b, a[~loop]])
    w = None if weights is None else np.concatenate([weights, weights[~loop]])
    order = np.lexsort((second, first))  # stable: duplicate edges keep their input order
    first, second = first[order], second[order]
    if w is not None:
        w = w[order]
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(first, minlength=num_nodes), out=indptr[1:])
    return indptr, second, w


# ------------------------------------------------------------------------------------------------
# chinese whispers


# Over 60 lines: dlib's chinese_whispers step by step, in one piece so it reads against dlib's source.
def chinese_whispers_graph(
    edges: Any,
    weights: Any = None,
    *,
    num_nodes: int | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = DLIB_RAND_SEED,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """dlib::chinese_whispers over undirected edges (E,2) (any order, i == j allowed), weights (E,) or None
    (every edge 1). Returns (N,) int64 labels 0, 1, ... in order of first appearance, N = `num_nodes` or
    the largest index + 1 (dlib: the largest index + 1; an empty edge list gives no labels at all).

    `progress(done, total)` is called now and then with the number of node updates done.
    """
    edge_array = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if len(edge_array) and edge_array.min() < 0:
        raise ValueError("edge indices must not be negative")
    weight_array = None
    if weights is not None:
        weight_array = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(weight_array) != len(edge_array):
            raise ValueError(f"{len(edge_array)} edges but {len(weight_array)} weights")
        if not np.all(np.isfinite(weight_array)):
            raise ValueError("edge weights must be finite")
        if np.all(weight_array == 1.0):
            weight_array = None  # the same sums, counted as integers
    largest = int(edge_array.max()) + 1 if len(edge_array) else 0
    n = largest if num_nodes is None else int(num_nodes)
    if n < largest:
        raise ValueError(f"num_nodes {n} but an edge refers to node {largest - 1}")
    if iterations < 0:
        raise ValueError(f"iterations must not be negative, got {iterations}")
    if len(edge_array) == 0:
        return np.arange(n, dtype=np.int64)  # nobody is anyone's neighbour: every node its own cluster
    if largest < n:  # nodes past the last one any edge names: dlib never sees them; each its own cluster
        inner = chinese_whispers_graph(edge_array, weight_array, iterations=iterations, seed=seed, progress=progress)
        start = int(inner.max()) + 1 if len(inner) else 0
        return np.concatenate([inner, np.arange(start, start + n - largest, dtype=np.int64)])

    indptr, neighbours, neighbour_weights = _ordered_adjacency(edge_array, weight_array, n)
    degree = np.diff(indptr)
    # A node whose only neighbour is itself (or who has none) keeps its own label: skip its picks.
    only_self = (degree == 0) | ((degree == 1) & (neighbours[np.minimum(indptr[:-1], len(neighbours) - 1)]
                                                   == np.arange(n)))  # fmt: skip
    total = n * iterations
    picks = dlib_rand_picks(total, n, seed=seed)
    picks = picks[~only_self[picks]]

    labels = list(range(n))
    label_array = np.arange(n, dtype=np.int64)
    lists: list[list[int] | None] = [None] * n
    weight_lists: list[list[float] | None] = [None] * n
    arrays: list[np.ndarray | None] = [None] * n
    for node in np.flatnonzero(~only_self).tolist():
        start, stop = int(indptr[node]), int(indptr[node + 1])
        if stop - start > _NUMPY_PATH_DEGREE:
            arrays[node] = neighbours[start:stop]
        else:
            lists[node] = neighbours[start:stop].tolist()
            if neighbour_weights is not None:
                weight_lists[node] = neighbour_weights[start:stop].tolist()
    report_every = max(1, len(picks) // 100)
    for step, node in enumerate(picks.tolist()):
        near = lists[node]
        if near is not None:
            counts: dict[int, float] = {}
            near_weights = weight_lists[node]
            if near_weights is None:
                for j in near:
                    label = labels[j]
                    counts[label] = counts.get(label, 0) + 1
            else:
                for j, w in zip(near, near_weights):
                    label = labels[j]
                    counts[label] = counts.get(label, 0.0) + w
            top = max(counts.values())
            best = min(label for label, count in counts.items() if count == top)
        else:
            start, stop = int(indptr[node]), int(indptr[node + 1])
            unique, inverse = np.unique(label_array[neighbours[start:stop]], return_inverse=True)
            sums = np.bincount(inverse, weights=None if neighbour_weights is None else neighbour_weights[start:stop])
            best = int(unique[int(np.argmax(sums))])  # first maximum: the smallest label, as dlib
        labels[node] = best
        label_array[node] = best
        if progress is not None and step % report_every == 0:
            progress(step, len(picks))
    if progress is not None:
        progress(len(picks), len(picks))
    _, first_seen, inverse = np.unique(label_array, return_index=True, return_inverse=True)
    rank = np.empty(len(first_seen), np.int64)
    rank[np.argsort(first_seen, kind="stable")] = np.arange(len(first_seen))
    return rank[inverse.reshape(-1)]


def chinese_whispers(
    descriptors: Any,
    threshold: float = 0.6,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = DLIB_RAND_SEED,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N,) int64 cluster labels of (N,D) descriptors, identical to ``dlib.chinese_whispers_clustering``
    (labels 0, 1, ... in order of first appearance). Two faces are linked when they are less than
    `threshold` apart (0.6: dlib's same-person rule)."""
    array = _as_descriptors(descriptors)
    if len(array) == 0:
        return np.zeros(0, np.int64)
    edges = similarity_edges(array, threshold)
    return chinese_whispers_graph(edges, num_nodes=len(array), iterations=iterations, seed=seed, progress=progress)


# ------------------------------------------------------------------------------------------------
# unknown people


@dataclass(frozen=True)
class UnknownFace:
    """One face of someone the gallery did not know, as a run saw it."""

    descriptor: np.ndarray  # (128,) float32
    stream_id: str
    frame_index: int
    timestamp: float  # seconds (video time for files, capture time for live sources)
    track_id: int
    box: tuple[int, int, int, int] | None = None
    score: float | None = None
    weight: float | None = None  # quality weight in [0, 1] (tracker.QualityGate.weights), when known
    chip: str | None = None  # path of the face's 150x150 chip (PNG), when one was saved
    source: str | None = None  # the stream's URI or the image file

    @property
    def visit(self) -> tuple[str, int]:
        """The track this face came from: one visit."""
        return (self.stream_id, self.track_id)


@dataclass
class UnknownCluster:
    """One unknown person: the faces chinese whispers put together."""

    number: int  # 1-based: "unknown person <number>"; 1 has the most tracks
    faces: list[int]  # indices into the faces given to cluster_unknowns, in their order
    tracks: list[tuple[str, int]]  # (stream_id, track_id) of those faces, distinct, in order of first sight
    first_seen: int  # index of the earliest face (timestamp, then stream, then frame)
    last_seen: int  # index of the latest face
    representatives: list[int]  # up to `representatives` faces nearest the cluster's mean descriptor
    spread: float  # largest distance of a face from the cluster's mean descriptor
    streams: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"unknown person {self.number}"

    def key(self, faces: Sequence[UnknownFace]) -> str:
        """A short id of exactly these faces (hash of their stream, track and frame): numbers can shift when
        the input grows, this id cannot, so "enrol the cluster I was shown" can name it safely."""
        members = sorted(f"{faces[i].stream_id}\0{faces[i].track_id}\0{faces[i].frame_index}" for i in self.faces)
        return hashlib.sha256("\n".join(members).encode()).hexdigest()[:12]

    def descriptors(self, faces: Sequence[UnknownFace]) -> np.ndarray:
        """(n,128) float32 descriptors of this cluster's faces (what `enroll` stores)."""
        return np.stack([np.asarray(faces[i].descriptor, np.float32) for i in self.faces])

    def to_record(self, faces: Sequence[UnknownFace]) -> dict[str, Any]:
        """JSON-ready summary (no descriptors) for `facestream unknowns --json` or a web page."""

        def seen(i: int) -> dict[str, Any]:
            face = faces[i]
            return {"stream_id": face.stream_id, "frame_index": face.frame_index,
                    "timestamp": round(float(face.timestamp), 6), "track_id": face.track_id}  # fmt: skip

        def face_record(i: int) -> dict[str, Any]:
            face = faces[i]
            return {**seen(i), "box": None if face.box is None else [int(v) for v in face.box],
                    "weight": face.weight, "chip": face.chip, "source": face.source}  # fmt: skip

        return {
            "number": self.number,
            "id": self.key(faces),
            "label": self.label,
            "faces": len(self.faces),
            "below_quality_gate": sum(1 for i in self.faces if faces[i].weight is not None and faces[i].weight <= 0),
            "tracks": len(self.tracks),
            "streams": list(self.streams),
            "first_seen": seen(self.first_seen),
            "last_seen": seen(self.last_seen),
            "spread": round(float(self.spread), 6),
            "representatives": [face_record(i) for i in self.representatives],
        }


def cluster_unknowns(
    faces: Sequence[UnknownFace],
    threshold: float = 0.6,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    representatives: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> list[UnknownCluster]:
    """Group unknown faces into people with chinese whispers at `threshold`.

    Clusters are numbered by tracks (visits) held, most first; then faces; then the earliest first
    seen; then the face order. A track whose faces fall into two clusters counts in both (it is listed
    in each cluster's `tracks`). Representatives are the faces nearest the cluster's mean descriptor,
    the more so the better (ties: higher quality weight, then earlier).
    """
    if not len(faces):
        return []
    descriptors = np.stack([np.asarray(face.descriptor, np.float64).reshape(-1) for face in faces])
    labels = chinese_whispers(descriptors, threshold, iterations=iterations, progress=progress)
    timestamps = np.array([float(face.timestamp) for face in faces])
    frames = np.array([int(face.frame_index) for face in faces])
    weights = np.array([-1.0 if face.weight is None else float(face.weight) for face in faces])
    streams = [face.stream_id for face in faces]
    # Chronological order of all faces once: (timestamp, stream, frame, input order).
    stream_rank = {sid: r for r, sid in enumerate(sorted(set(streams)))}
    chronological = np.lexsort((np.arange(len(faces)), frames, [stream_rank[s] for s in streams], timestamps))
    position = np.empty(len(faces), np.int64)
    position[chronological] = np.arange(len(faces))

    clusters = []
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        tracks = list(dict.fromkeys(faces[i].visit for i in members[np.argsort(position[members])]))
        centre = descriptors[members].mean(axis=0)
        distance = np.sqrt(((descriptors[members] - centre) ** 2).sum(axis=1))
        order = np.lexsort((members, -weights[members], distance))
        ordered_positions = position[members]
        clusters.append(
            UnknownCluster(
                number=0,
                faces=members.tolist(),
                tracks=tracks,
                first_seen=int(members[np.argmin(ordered_positions)]),
                last_seen=int(members[np.argmax(ordered_positions)]),
                representatives=members[order[:representatives]].tolist(),
                spread=float(distance.max()),
                streams=list(dict.fromkeys(streams[i] for i in members)),
            )
        )
    clusters.sort(key=lambda c: (-len(c.tracks), -len(c.faces), position[c.first_seen], c.faces[0]))
    for number, cluster in enumerate(clusters, start=1):
        cluster.number = number
    return clusters
