"""Gallery speed: SQLite enrolment, FAISS build and search, against numpy brute force in the same run.

    python bench/gallery.py [--sizes 10000 100000 1000000] [--ef-search 32 64 128] [--json]

Synthetic descriptors shaped like dlib's: a shared mean of norm 1.3, people spread around it by
0.56 and samples around their person by 0.25, in a random rotation of a power-law spectrum
(variance of component i ~ 1/(i+1)). That gives norms ~1.44, impostor distances with median
~0.83 and genuine ones with median ~0.34, and a participation ratio of ~15 on 84 faces — the data
pack's 84 real descriptors give 1.43, 0.82 and 14. Ten samples a person; queries are new faces of
enrolled people (what a camera sees), so the nearest sample has close rivals of the same person —
the hard case for recall@1 against exact search.

For each size: enrolment rate into the store (batches of 1,000 in one transaction), index build
times (flat and HNSW), latency p50/p99 of one query and of a batch of 64 for the flat index, HNSW
(for each efSearch) and numpy brute force (|x|^2 - 2x.q, argmin), `Gallery.identify` end to end,
and recall@1 of HNSW against the exact index (same nearest sample, and same nearest person).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from facestream.enroll.gallery import Gallery
from facestream.enroll.index import (
    DEFAULT_APPROXIMATE_ABOVE,
    DEFAULT_HNSW_EF_SEARCH,
    FaceIndex,
    index_path,
    set_threads,
)
from facestream.enroll.store import Store

from common import emit, machine

PER_PERSON = 10


class Synthetic:
    """Clustered descriptors shaped like dlib's (module docstring); `probes` are new faces of enrolled people."""

    def __init__(self, people: int, seed: int = 0, alpha: float = 1.0) -> None:
        self.rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(self.rng.normal(size=(128, 128)))
        variance = (np.arange(128) + 1.0) ** -alpha
        self.basis = (np.sqrt(variance / variance.sum())[:, None] * rotation.T).astype(np.float32)  # (128,128)
        mean = self.rng.normal(size=128)
        self.mean = (1.3 * mean / np.linalg.norm(mean)).astype(np.float32)
        self.centers = self.mean + 0.56 * self._noise(people)

    def _noise(self, n: int) -> np.ndarray:
        out = np.empty((n, 128), np.float32)
        for start in range(0, n, 1 << 16):
            count = min(1 << 16, n - start)
            out[start : start + count] = self.rng.standard_normal((count, 128), dtype=np.float32) @ self.basis
        return out

    def samples(self, person: np.ndarray) -> np.ndarray:
        return self.centers[person] + 0.25 * self._noise(len(person))


def percentiles(function: Callable[[np.ndarray], object], batches: list[np.ndarray]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of one call per batch (after two warm-up calls)."""
    function(batches[0])
    function(batches[-1])
    times = []
    for batch in batches:
        start = time.perf_counter()
        function(batch)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99)


def numpy_search(vectors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Exact nearest neighbour by brute force in numpy: argmin of |x|^2 - 2 x.q over the whole set."""
    norms = np.einsum("nd,nd->n", vectors, vectors)

    def search(queries: np.ndarray) -> np.ndarray:
        return np.argmin(norms[None, :] - 2 * (queries @ vectors.T), axis=1)

    return search


def run_size(n: int, ef_values: list[int], queries_count: int, workdir: Path) -> dict:
    people = n // PER_PERSON
    data = Synthetic(people, seed=n)
    person = np.repeat(np.arange(people), PER_PERSON)
    vectors = data.samples(person)
    ids = np.arange(1, n + 1, dtype=np.int64)
    probe_person = data.rng.integers(0, people, queries_count)
    probes = data.samples(probe_person)
    singles = [probes[i : i + 1] for i in range(queries_count)]
    batches = [probes[i : i + 64] for i in range(0, queries_count - 63, 64)]
    row: dict = {"size": n, "people": people}

    # Enrolment into the store: batches of 1,000 samples, one transaction each, people created on the way.
    db = workdir / f"bench-{n}.db"
    store = Store(db)
    names = [f"person-{p:07d}" for p in range(people)]
    start = time.perf_counter()
    for s in range(0, n, 1000):
        store.add_samples([names[p] for p in person[s : s + 1000]], vectors[s : s + 1000])
    row["enrol_samples_per_s"] = n / (time.perf_counter() - start)
    stored = store.samples()
    assert np.array_equal(stored.descriptors, vectors)
    ids, person_ids = stored.ids, stored.person_ids  # the store's ids, so the index can be the gallery's

    flat = FaceIndex(approximate_above=n)
    start = time.perf_counter()
    flat.build(ids, person_ids, vectors)
    row["flat_build_s"] = time.perf_counter() - start
    hnsw = FaceIndex(approximate_above=0)
    start = time.perf_counter()
    hnsw.build(ids, person_ids, vectors)
    row["hnsw_build_s"] = time.perf_counter() - start

    _, exact_ids, exact_person = flat.search(probes, 1)
    row["flat_1_ms"] = percentiles(lambda q: flat.search(q, 1), singles)
    row["flat_64_ms"] = percentiles(lambda q: flat.search(q, 1), batches)
    row["hnsw"] = []
    for ef in ef_values:
        hnsw.hnsw_ef_search = ef
        hnsw._update_selector()
        _, got_ids, got_person = hnsw.search(probes, 1)
        row["hnsw"].append(
            {
                "ef_search": ef,
                "recall_at_1": float(np.mean(got_ids[:, 0] == exact_ids[:, 0])),
                "person_recall_at_1": float(np.mean(got_person[:, 0] == exact_person[:, 0])),
                "one_ms": percentiles(lambda q, index=hnsw: index.search(q, 1), singles),
                "batch64_ms": percentiles(lambda q, index=hnsw: index.search(q, 1), batches),
            }
        )
    row["probe_person_accuracy"] = float(np.mean(exact_person[:, 0] == person_ids[probe_person * PER_PERSON]))

    # End to end through Gallery with the default configuration (flat up to 100,000 samples, HNSW above).
    # Opening rebuilds the index from the store (timed for flat; for HNSW that is the build time above,
    # so the index just built is saved as the gallery's instead), then opens with the saved index.
    if n > DEFAULT_APPROXIMATE_ABOVE:
        state = store.state()
        hnsw.hnsw_ef_search = DEFAULT_HNSW_EF_SEARCH
        hnsw.save(index_path(db), {"uuid": store.uuid, "revision": state.revision, "token": state.token})
    else:
        index_path(db).unlink(missing_ok=True)
        start = time.perf_counter()
        Gallery(db).close()
        row["gallery_open_build_s"] = time.perf_counter() - start
    store.close()
    del hnsw  # free its memory before the Gallery loads its own copy
    start = time.perf_counter()
    gallery = Gallery(db)
    row["gallery_open_saved_s"] = time.perf_counter() - start
    row["gallery_kind"] = gallery.index.kind
    row["identify_1_ms"] = percentiles(gallery.identify, singles)
    row["identify_64_ms"] = percentiles(gallery.identify, batches)
    gallery.close()

    # numpy last: OpenBLAS threads keep spinning after a call and would slow what runs next on two cores.
    brute = numpy_search(vectors)
    assert np.mean(ids[brute(probes)] == exact_ids[:, 0]) > 0.99, "numpy and the flat index disagree"
    row["numpy_1_ms"] = percentiles(brute, singles)
    row["numpy_64_ms"] = percentiles(brute, batches)
    for suffix in ("", ".faiss", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return row


def table(result: dict) -> list[str]:
    def ms(pair: list[float] | tuple[float, float]) -> str:
        return f"{pair[0]:.3f} / {pair[1]:.3f}"

    lines = [
        f"machine: {result['machine']}, faiss {result['faiss']}, threads {result['threads']}",
        "",
        "| size | enrol samples/s | flat build s | HNSW build s | open: rebuild / saved s | numpy 1q p50/p99 ms |"
        " flat 1q | numpy 64q | flat 64q | identify 1q | identify 64q | index |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']:,} | {r['enrol_samples_per_s']:,.0f} | {r['flat_build_s']:.2f} | {r['hnsw_build_s']:.1f} |"
            f" {r.get('gallery_open_build_s', float('nan')):.2f} / {r['gallery_open_saved_s']:.2f} |"
            f" {ms(r['numpy_1_ms'])} | {ms(r['flat_1_ms'])} | {ms(r['numpy_64_ms'])} | {ms(r['flat_64_ms'])} |"
            f" {ms(r['identify_1_ms'])} | {ms(r['identify_64_ms'])} | {r['gallery_kind']} |"
        )
    lines += [
        "",
        "| size | efSearch | recall@1 (sample) | recall@1 (person) | HNSW 1q p50/p99 ms | HNSW 64q ms |"
        " speed-up vs numpy 1q (p50) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        for h in r["hnsw"]:
            lines.append(
                f"| {r['size']:,} | {h['ef_search']} | {h['recall_at_1']:.4f} | {h['person_recall_at_1']:.4f} |"
                f" {ms(h['one_ms'])} | {ms(h['batch64_ms'])} | {r['numpy_1_ms'][0] / h['one_ms'][0]:.1f}x |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ef-search", type=int, nargs="+", default=sorted({32, DEFAULT_HNSW_EF_SEARCH, 128}))
    parser.add_argument("--queries", type=int, default=2000, help="probe faces per size")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0 = all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as workdir:
        for n in args.sizes:
            rows.append(run_size(n, args.ef_search, args.queries, Path(workdir)))
            print(f"size {n:,} done", file=sys.stderr)
    result = {
        "benchmark": "gallery",
        "machine": machine(),
        "faiss": faiss.__version__,
        "threads": threads,
        "rows": rows,
    }
    emit(result, args.json, table(result))


if __name__ == "__main__":
    main()
