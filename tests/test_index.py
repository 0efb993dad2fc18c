"""enroll/index.py and the Gallery's index life cycle.

Oracles: numpy brute force in float64 (exact search must give the same neighbours and the same
distances), and the store itself (whatever the saved index file says, the gallery must answer
from the store's current content: a missing, corrupt, stale or foreign index file is caught up or
rebuilt, never trusted blindly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facestream.enroll.gallery import Gallery
from facestream.enroll.index import FLAT, HNSW, FaceIndex, IndexFileError
from facestream.enroll.store import Store


def clustered(people: int, per_person: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """dlib-shaped synthetic descriptors (as bench/gallery.py): shared mean, people 0.56 apart-ish,
    samples 0.25 around their person, power-law spectrum."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    variance = 1.0 / (np.arange(128) + 1.0)
    basis = np.sqrt(variance / variance.sum())[:, None] * rotation.T
    mean = rng.normal(size=128)
    centers = 1.3 * mean / np.linalg.norm(mean) + 0.56 * rng.normal(size=(people, 128)) @ basis
    person = np.repeat(np.arange(people), per_person)
    samples = centers[person] + 0.25 * rng.normal(size=(len(person), 128)) @ basis
    return samples.astype(np.float32), person


def brute_force(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(N,M) Euclidean distances by numpy in float64 (|q|^2 + |x|^2 - 2q.x: ~1e-8 absolute at worst)."""
    q, x = queries.astype(np.float64), vectors.astype(np.float64)
    squared = (q**2).sum(axis=1)[:, None] + (x**2).sum(axis=1)[None, :] - 2 * q @ x.T
    return np.sqrt(np.maximum(squared, 0))


def test_exact_search_equals_numpy_brute_force() -> None:
    vectors, person = clustered(300, 10, seed=1)
    rng = np.random.default_rng(2)
    queries = np.concatenate([vectors[:5], vectors[rng.integers(0, 3000, 195)] + rng.normal(0, 0.02, (195, 128))])
    queries = queries.astype(np.float32)
    index = FaceIndex()
    index.build(np.arange(1, 3001), person, vectors)
    assert index.kind == FLAT
    for batch in (queries[:1], queries):  # the one-query path and the batch path
        distances, sample_ids, person_ids = index.search(batch, 10)
        truth = brute_force(batch, vectors)
        order = np.argsort(truth, axis=1)[:, :10]
        assert np.array_equal(sample_ids, order + 1)
        assert np.array_equal(person_ids, person[order])
        np.testing.assert_allclose(distances, np.take_along_axis(truth, order, axis=1), rtol=1e-10, atol=1e-7)
    assert np.all(index.search(queries[:5], 1)[0][:, 0] == 0.0)  # a duplicate is at exactly 0 (re-ranked)
    # k above the number of rows: the missing hits are -1 and inf.
    small = FaceIndex()
    small.build(np.array([1, 2]), np.array([0, 1]), vectors[:2])
    distances, sample_ids, _ = small.search(queries[:3], 5)
    assert distances.shape == (3, 2) and sample_ids.min() >= 1


def test_hnsw_recall_at_1_is_at_least_99_percent() -> None:
    vectors, person = clustered(2000, 10, seed=3)  # 20k samples
    rng = np.random.default_rng(4)
    probes_of = rng.integers(0, 2000, 500)
    # New faces of enrolled people: a sample's neighbours include rivals of the same person.
    probes = (vectors[probes_of * 10] + 0.25 * (vectors[probes_of * 10 + 1] - vectors[probes_of * 10 + 2])).astype(
        np.float32
    )
    index = FaceIndex(approximate_above=10_000)
    index.build(np.arange(1, 20_001), person, vectors)
    assert index.kind == HNSW
    distances, sample_ids, _ = index.search(probes, 1)
    truth = brute_force(probes, vectors)
    recall = np.mean(sample_ids[:, 0] == np.argmin(truth, axis=1) + 1)
    assert recall >= 0.99
    # Distances are Euclidean (not FAISS's squared ones) and exact for the rows found.
    np.testing.assert_allclose(distances[:, 0], truth[np.arange(500), sample_ids[:, 0] - 1], rtol=1e-10)


@pytest.mark.parametrize("kind", [FLAT, HNSW])
def test_remove_rows(kind: str) -> None:
    vectors, person = clustered(100, 10, seed=5)
    index = FaceIndex(approximate_above=0 if kind == HNSW else 10**6)
    index.build(np.arange(1, 1001), person, vectors)
    assert index.kind == kind
    gone = np.arange(1, 1001, 10)  # 10%: HNSW keeps them as tombstones
    assert index.remove(gone) == 100 and index.remove(gone) == 0
    assert len(index) == 900 and index.rows == (1000 if kind == HNSW else 900)
    _, sample_ids, _ = index.search(vectors[gone - 1], 20)
    assert not np.isin(sample_ids, gone).any()
    kept = np.setdiff1d(np.arange(1, 1001), gone)
    assert np.array_equal(index.search(vectors[kept - 1], 1)[1][:, 0], kept)
    index.remove(np.arange(2, 1001, 3))  # past a quarter removed: HNSW compacts
    assert index.rows == len(index)
    live_ids, _, live_vectors = index.live()
    assert np.array_equal(index.search(live_vectors, 1)[1][:, 0], live_ids)
    with pytest.raises(ValueError, match="ascending"):
        index.add(np.array([5]), np.array([0]), vectors[:1])


def test_flat_becomes_hnsw_above_the_threshold() -> None:
    vectors, person = clustered(20, 10, seed=6)
    index = FaceIndex(approximate_above=150)
    index.build(np.arange(1, 101), person[:100], vectors[:100])
    assert index.kind == FLAT
    index.add(np.arange(101, 201), person[100:], vectors[100:])
    assert index.kind == HNSW and len(index) == 200
    assert np.array_equal(index.search(vectors, 1)[1][:, 0], np.arange(1, 201))


@pytest.mark.parametrize("kind", [FLAT, HNSW])
def test_save_and_load(tmp_path: Path, kind: str) -> None:
    vectors, person = clustered(50, 10, seed=7)
    index = FaceIndex(approximate_above=0 if kind == HNSW else 10**6)
    index.build(np.arange(1, 501), person, vectors)
    index.remove(np.array([3, 4]))
    path = tmp_path / "g.db.faiss"
    index.save(path, {"uuid": "u", "revision": 7, "token": "t"})
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded, stamp = FaceIndex.load(path, approximate_above=index.approximate_above)
    assert (stamp["uuid"], stamp["revision"], stamp["token"], loaded.kind) == ("u", 7, "t", kind)
    for got, expected in zip(loaded.search(vectors, 3), index.search(vectors, 3)):
        assert np.array_equal(got, expected)

    data = path.read_bytes()
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 1
    for content, message in [
        (bytes(damaged), "checksum"),
        (data[: len(data) // 2], "not a facestream index|truncated"),
        (b"\0" * 1000, "not a facestream index"),
        (b"", "too short"),
    ]:
        path.write_bytes(content)
        with pytest.raises(IndexFileError, match=message):
            FaceIndex.load(path)
    path.unlink()
    with pytest.raises(IndexFileError, match="no saved index"):
        FaceIndex.load(path)


# -- the gallery's index life cycle ----------------------------------------------------------------------------


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts full index builds (FaceIndex.build calls)."""
    calls: list[int] = []
    original = FaceIndex.build

    def counting(self: FaceIndex, *args: object) -> None:
        calls.append(1)
        original(self, *args)

    monkeypatch.setattr(FaceIndex, "build", counting)
    return calls


def make_gallery(path: Path, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    vectors, person = clustered(30, 5, seed=8)
    with Gallery(path, **kwargs) as gallery:
        gallery.add_samples([f"p{p}" for p in person], vectors)
    return vectors, person


def expected_names(vectors: np.ndarray, person: np.ndarray, queries: np.ndarray) -> list[str]:
    return [f"p{p}" for p in person[np.argmin(brute_force(queries, vectors), axis=1)]]


def test_saved_index_is_used_when_current(tmp_path: Path, builds: list[int]) -> None:
    vectors, person = make_gallery(tmp_path / "g.db")
    assert (tmp_path / "g.db.faiss").exists()
    builds.clear()
    with Gallery(tmp_path / "g.db") as gallery:
        assert builds == [] and len(gallery.index) == 150
        assert gallery.identify(vectors[::7]).identities == expected_names(vectors, person, vectors[::7])


def test_index_rebuilt_when_missing_or_corrupt(tmp_path: Path, builds: list[int]) -> None:
    vectors, person = make_gallery(tmp_path / "g.db")
    path = tmp_path / "g.db.faiss"
    for damage in ("delete", "corrupt", "garbage"):
        if damage == "delete":
            path.unlink()
        else:
            data = bytearray(path.read_bytes())
            data[len(data) // 3] ^= 0xFF
            path.write_bytes(bytes(data) if damage == "corrupt" else b"junk")
        builds.clear()
        with Gallery(tmp_path / "g.db") as gallery:
            assert builds == [1], damage
            assert gallery.identify(vectors[1::9]).identities == expected_names(vectors, person, vectors[1::9])
        FaceIndex.load(path)  # saved again, whole


def test_stale_index_is_caught_up_from_the_store(tmp_path: Path, builds: list[int]) -> None:
    vectors, person = make_gallery(tmp_path / "g.db")
    store = Store(tmp_path / "g.db")  # changes the index file does not know about
    store.remove_person("p3")
    new = clustered(1, 5, seed=99)[0]
    store.add_samples("newcomer", new)
    store.close()
    builds.clear()
    with Gallery(tmp_path / "g.db") as gallery:
        assert builds == []  # caught up, not rebuilt: rows shared with the store were checked equal
        assert len(gallery.index) == 150 - 5 + 5
        assert gallery.identify(new).identities == ["newcomer"] * 5
        assert "p3" not in gallery.identify(vectors[person == 3]).names
    _, stamp = FaceIndex.load(tmp_path / "g.db.faiss")
    assert stamp["revision"] == Store(tmp_path / "g.db").revision()


def test_index_from_another_history_or_gallery_is_rebuilt(tmp_path: Path, builds: list[int]) -> None:
    make_gallery(tmp_path / "g.db")
    shutil.copy(tmp_path / "g.db", tmp_path / "backup.db")
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_samples("later", clustered(1, 3, seed=50)[0])
    # Restore the backup, then make a different change: same gallery, same sample ids, other descriptors.
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"g.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", tmp_path / "g.db")
    other = clustered(1, 3, seed=51)[0]
    store = Store(tmp_path / "g.db")
    store.add_samples("different", other)
    store.close()
    builds.clear()
    with Gallery(tmp_path / "g.db") as gallery:
        assert builds == [1]
        assert gallery.identify(other).identities == ["different"] * 3
        assert len(gallery.index) == 153

    make_gallery(tmp_path / "h.db")  # another gallery's index file next to this one
    shutil.copy(tmp_path / "h.db.faiss", tmp_path / "g.db.faiss")
    builds.clear()
    with Gallery(tmp_path / "g.db") as gallery:
        assert builds == [1] and gallery.identify(other).identities == ["different"] * 3


def test_gallery_with_hnsw(tmp_path: Path, builds: list[int]) -> None:
    vectors, person = make_gallery(tmp_path / "g.db", approximate_above=100)
    with Gallery(tmp_path / "g.db", approximate_above=100) as gallery:
        assert gallery.index.kind == HNSW
        assert gallery.identify(vectors[::5]).identities == expected_names(vectors, person, vectors[::5])
        gallery.remove_person("p0")
        assert "p0" not in gallery.identify(vectors[person == 0]).names
    builds.clear()
    with Gallery(tmp_path / "g.db", approximate_above=100) as gallery:
        assert builds == [] and gallery.index.kind == HNSW and len(gallery.index) == 145
    with Gallery(tmp_path / "g.db", approximate_above=100, hnsw_m=16) as gallery:  # other graph parameters
        assert builds == [1] and gallery.index.hnsw_m == 16
    builds.clear()
    with Gallery(tmp_path / "g.db") as gallery:  # 145 rows under the default 100,000: exact again
        assert builds == [1] and gallery.index.kind == FLAT
