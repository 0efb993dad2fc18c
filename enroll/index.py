"""The FAISS index over positive descriptors: derived data, rebuilt from the store whenever in doubt.

Exact search (IndexFlatL2) up to `approximate_above` rows, HNSW (IndexHNSWFlat) above: a flat
index answers one query at 1M rows in tens of milliseconds on two cores, HNSW in well under one.

FAISS returns squared L2 distances computed as |x|^2 + |y|^2 - 2x.y in float32, which loses
precision near 0 (a duplicate can come back at 3e-4 instead of 0). The hits are therefore
re-ranked with distances recomputed in float64 from the stored vectors, so a reported distance is
the Euclidean distance to ~1e-7 and the 0.6 rule is applied to the true value.

HNSW cannot delete: removed rows become tombstones, skipped during search by an ID selector, and
the index is rebuilt from its live rows once a quarter of it is tombstones. The flat index removes
rows in place.

Saved form (`save`/`load`), one file so that replacing it is atomic:
`MAGIC | sample ids (int64) | person ids (int64, -1 = removed) | faiss index | trailer JSON |
trailer length (uint64) | MAGIC`; the trailer holds the caller's stamp and the sha256 of
everything before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError

try:
    import faiss
except ImportError as error:  # neither extra installed: faiss is not a hard dependency (cpu / gpu extras)
    raise ImportError(f"{error}: install facestream with the cpu extra (pip install 'facestream[cpu]', faiss-cpu) "
                      "or the gpu extra (faiss-gpu)") from error

DIM = 128
FLAT = "flat"
HNSW = "hnsw"
log = logging.getLogger(__name__)

DEFAULT_APPROXIMATE_ABOVE = 100_000
DEFAULT_HNSW_M = 32
# Tuned with bench/gallery.py on dlib-shaped synthetic descriptors, M=32, 2 cores: at 1M rows
# efSearch 32/48/64/96/128 gave recall@1 (same nearest sample as exact search) 0.985/0.9945/
# 0.9965/0.999/1.0; 64 keeps >= 0.99 with room to spare at ~1 ms p99 for one query (96 or 128
# for harder data, ~+0.3/+0.6 ms). efConstruction 80 gave the same recall as 40 (0.996 vs 0.9965
# at efSearch 64) for a slower build, so FAISS's default 40 stays.
DEFAULT_HNSW_EF_SEARCH = 64
DEFAULT_HNSW_EF_CONSTRUCTION = 40
COMPACT_FRACTION = 0.25  # rebuild an HNSW index once this share of its rows are tombstones
MAGIC = b"FSGIDX01"
FORMAT_VERSION = 1
_RERANK_ELEMENTS = 1 << 15  # hits re-ranked per chunk: bounds the (n,k,128) float64 temporary to 32 MB


class IndexFileError(GalleryError):
    """A saved index cannot be used (missing, corrupt, foreign); the caller rebuilds it from the store."""


def set_threads(threads: int = 0) -> int:
    """FAISS's OpenMP threads for this process (0 = every core this process may use); returns the count."""
    count = int(threads) if threads and threads > 0 else len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(count)
    return count


GPU_MODES = ("off", "on", "auto")
# faiss-gpu's k-selection limit (faiss/gpu/utils/DeviceDefs.cuh; validateKSelect throws "GPU index only
# supports min/max-K selection up to 2048 (requested k)"; some releases refuse k == 2048 too). A deeper
# search (many samples of one person, tombstones, calibrate's exclusion loop) runs on the CPU index.
GPU_MAX_SELECTION_K = 2048


def gpu_mode(value: Any) -> str:
    """`gallery.gpu` as "off" | "on" | "auto": YAML's false/true (and off/on, which YAML reads as booleans)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    text = {"false": "off", "no": "off", "true": "on", "yes": "on"}.get(text, text)
    if text not in GPU_MODES:
        raise ValueError(f"gpu must be one of false, true, auto (or {GPU_MODES}), got {value!r}")
    return text


def faiss_gpu_status(module: Any = None) -> tuple[bool, str]:
    """(usable, why): whether this faiss build (default: the imported one) has GPU support and a CUDA device."""
    module = faiss if module is None else module
    if not hasattr(module, "StandardGpuResources") or not hasattr(module, "index_cpu_to_gpu"):
        return False, "this faiss build has no GPU support (faiss-cpu)"
    try:
        count = int(module.get_num_gpus())
    except Exception as error:  # a GPU build on a machine without a driver
        return False, f"faiss cannot query GPUs ({type(error).__name__}: {error})"
    return (True, f"{count} GPU(s)") if count > 0 else (False, "no CUDA device is present")


def index_path(db_path: str | Path) -> Path:
    """Where the index of a gallery file is saved: next to it, `<db>.faiss`."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".faiss")


class FaceIndex:
    """Rows of positive descriptors in FAISS, each row mapped to its sample id and person id."""

    def __init__(
        self,
        approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
        hnsw_m: int = DEFAULT_HNSW_M,
        hnsw_ef_search: int = DEFAULT_HNSW_EF_SEARCH,
        hnsw_ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION,
        gpu: str | bool = "off",
    ) -> None:
        mode = gpu_mode(gpu)
        self.approximate_above = int(approximate_above)
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_search = int(hnsw_ef_search)
        self.hnsw_ef_construction = int(hnsw_ef_construction)
        self.kind = FLAT
        self._index: faiss.Index = faiss.IndexFlatL2(DIM)
        self._sample_ids = np.zeros(0, np.int64)  # ascending
        self._person_ids = np.zeros(0, np.int64)  # -1: tombstone (HNSW only)
        self._removed = 0
        self._params: faiss.SearchParameters | None = None
        self._bitmap: np.ndarray | None = None  # keeps the selector's memory alive
        # faiss-gpu: a GPU copy of the flat index answers searches (FAISS has no GPU HNSW); the CPU index
        # stays the one that is edited, saved and read back, and the copy is remade after a change.
        # Off by default: every process opening a gallery (sink, web view, CLI) would otherwise reserve GPU
        # memory for a search the CPU answers in well under a millisecond up to ~10k samples.
        self.gpu_enabled, self.gpu_reason = faiss_gpu_status() if mode != "off" else (False, "gallery.gpu is off")
        if mode == "on" and not self.gpu_enabled:
            log.warning("gallery.gpu is on but the search stays on the CPU: %s", self.gpu_reason)
        self._gpu_resources: Any = None
        self._gpu_index: Any = None

    # -- state ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live rows (tombstones excluded)."""
        return len(self._sample_ids) - self._removed

    @property
    def rows(self) -> int:
        return len(self._sample_ids)

    @property
    def max_sample_id(self) -> int:
        return int(self._sample_ids[-1]) if len(self._sample_ids) else 0

    def kind_for(self, n: int) -> str:
        return HNSW if n > self.approximate_above else FLAT

    def storage(self) -> np.ndarray:
        """The stored vectors (rows, 128) float32, a view of FAISS's own memory (no copy)."""
        flat = self._index if self.kind == FLAT else faiss.downcast_index(self._index.storage)
        n = flat.ntotal
        if n == 0:
            return np.zeros((0, DIM), np.float32)
        return faiss.rev_swig_ptr(flat.get_xb(), n * DIM).reshape(n, DIM)

    def live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample ids, person ids, vectors copy) of the live rows."""
        keep = self._person_ids >= 0
        return self._sample_ids[keep], self._person_ids[keep], self.storage()[keep].copy()

    def sync(self, sample_ids: np.ndarray, person_ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Make this index hold exactly these rows (ascending sample ids) by removing and appending.

        Rows present in both must agree bit for bit (same person, same descriptor); when any does
        not, or a new row's id is below those indexed, nothing is changed and False is returned:
        the index belongs to another history of the gallery and must be rebuilt.
        """
        keep = self._person_ids >= 0
        live_rows = np.flatnonzero(keep)
        live_ids = self._sample_ids[keep]
        _, in_index, in_new = np.intersect1d(live_ids, sample_ids, assume_unique=True, return_indices=True)
        rows = live_rows[in_index]
        if not np.array_equal(self._person_ids[rows], np.asarray(person_ids)[in_new]):
            return False
        stored, vectors = self.storage(), np.asarray(vectors, np.float32)
        for start in range(0, len(rows), 1 << 16):  # in blocks: no second copy of a 1M-row gallery
            block = slice(start, start + (1 << 16))
            if not np.array_equal(stored[rows[block]], vectors[in_new[block]]):
                return False
        added = np.ones(len(sample_ids), dtype=bool)
        added[in_new] = False
        if added.any() and np.asarray(sample_ids)[added].min() <= self.max_sample_id:
            return False
        self.remove(np.setdiff1d(live_ids, sample_ids, assume_unique=True))
        self.add(np.asarray(sample_ids)[added], np.asarray(person_ids)[added], np.asarray(vectors)[added])
        return True

    # -- changes ------------------------------------------------------------------------------------

    def _new_faiss(self, kind: str) -> faiss.Index:
        if kind == FLAT:
            return faiss.IndexFlatL2(DIM)
        index = faiss.IndexHNSWFlat(DIM, self.hnsw_m)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        index.hnsw.efSearch = self.hnsw_ef_search
        return index

    def build(self, sample_ids: np.ndarray, person_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace everything with these rows; flat or HNSW by their number."""
        order = np.argsort(sample_ids, kind="stable")
        sample_ids = np.asarray(sample_ids, np.int64)[order]
        person_ids = np.asarray(person_ids, np.int64)[order]
        vectors = np.ascontiguousarray(np.asarray(vectors, np.float32)[order])
        self.kind = self.kind_for(len(sample_ids))
        self._index = self._new_faiss(self.kind)
        if len(vectors):
            self._index.add(vectors)
        self._sample_ids, self._person_ids, self._removed = sample_ids, person_ids, 0
        self._update_selector()

    def add(self, sample_ids: np.ndarray, person_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows; their sample ids must be larger than every id already here (the store's ids grow)."""
        sample_ids = np.asarray(sample_ids, np.int64)
        if len(sample_ids) == 0:
            return
        if np.any(np.diff(sample_ids) <= 0) or sample_ids[0] <= self.max_sample_id:
            raise ValueError("FaceIndex.add: sample ids must be ascending and above those already indexed")
        if self.kind == FLAT and self.kind_for(len(self) + len(sample_ids)) == HNSW:
            ids, persons, stored = self.live()
            self.build(
                np.concatenate([ids, sample_ids]),
                np.concatenate([persons, np.asarray(person_ids, np.int64)]),
                np.concatenate([stored, np.asarray(vectors, np.float32)]),
            )
            return
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._sample_ids = np.concatenate([self._sample_ids, sample_ids])
        self._person_ids = np.concatenate([self._person_ids, np.asarray(person_ids, np.int64)])
        self._update_selector()

    def remove(self, sample_ids: np.ndarray) -> int:
        """Remove rows by sample id (ids not indexed are ignored); returns how many were removed."""
        sample_ids = np.asarray(sample_ids, np.int64).reshape(-1)
        if len(sample_ids) == 0 or len(self._sample_ids) == 0:
            return 0
        positions = np.searchsorted(self._sample_ids, sample_ids)
        positions = positions[positions < len(self._sample_ids)]
        rows = np.unique(positions[np.isin(self._sample_ids[positions], sample_ids)])
        rows = rows[self._person_ids[rows] >= 0]
        if len(rows) == 0:
            return 0
        if self.kind == FLAT:
            self._index.remove_ids(faiss.IDSelectorBatch(rows.astype(np.int64)))
            self._sample_ids = np.delete(self._sample_ids, rows)
            self._person_ids = np.delete(self._person_ids, rows)
        else:
            self._person_ids[rows] = -1
            self._removed += len(rows)
            if self._removed > COMPACT_FRACTION * len(self._sample_ids):
                self.build(*self.live())
                return len(rows)
        self._update_selector()
        return len(rows)

    def _search_index(self) -> faiss.Index:
        """The index to search: the GPU copy of a flat index when faiss-gpu can, else the CPU index."""
        if not self.gpu_enabled or self.kind != FLAT:
            return self._index
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
        return self._gpu_index

    def _update_selector(self) -> None:
        """HNSW search parameters; with tombstones, a bitmap selector that lets only live rows through.
        Called after every change of the index: the GPU copy is remade on the next search."""
        self._gpu_index = None
        if self.kind != HNSW:
            self._params, self._bitmap = None, None
            return
        params = faiss.SearchParametersHNSW()
        params.efSearch = self.hnsw_ef_search
        if self._removed:
            self._bitmap = np.packbits(self._person_ids >= 0, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(self._person_ids), faiss.swig_ptr(self._bitmap))
        else:
            self._bitmap = None
        self._params = params

    # -- search ---------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k nearest live rows of each query: Euclidean distances (N,k) float64 ascending (inf where
        fewer than k rows), sample ids (N,k) and person ids (N,k), -1 where there is no hit."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        k = min(int(k), len(self))
        if k <= 0 or n == 0:
            return np.zeros((n, 0)), np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64)
        if self._params is not None:
            self._params.efSearch = max(self.hnsw_ef_search, k)
            _, rows = self._index.search(queries, k, params=self._params)
        elif self.gpu_enabled and self.kind == FLAT and k < GPU_MAX_SELECTION_K:
            _, rows = self._search_index().search(queries, k)
        elif n == 1:
            # One query on a flat index: FAISS splits the scan over its threads, which on two cores was
            # 4x slower than one thread (9 ms vs 2 ms at 100k rows). The setting is per calling thread.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                _, rows = self._index.search(queries, k)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            _, rows = self._index.search(queries, k)
        distances = self._exact_distances(queries, rows)
        order = np.argsort(distances, axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        distances = np.take_along_axis(distances, order, axis=1)
        hit = rows >= 0
        safe = np.where(hit, rows, 0)
        sample_ids = np.where(hit, self._sample_ids[safe], -1)
        person_ids = np.where(hit, self._person_ids[safe], -1)
        return distances, sample_ids, person_ids

    def _exact_distances(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        stored = self.storage()
        out = np.full(rows.shape, np.inf)
        step = max(1, _RERANK_ELEMENTS // max(1, rows.shape[1]))
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            hit = block >= 0
            diff = stored[np.where(hit, block, 0)].astype(np.float64) - queries[start : start + step, None, :]
            out[start : start + step] = np.where(hit, np.sqrt(np.einsum("nkd,nkd->nk", diff, diff)), np.inf)
        return out

    # -- saving -----------------------------------------------------------------------------------------

    def save(self, path: str | Path, stamp: dict[str, Any]) -> None:
        """Write atomically (temp file, fsync, rename), mode 0600: the vectors are biometric data."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:

                def write(data: bytes) -> None:
                    digest.update(data)
                    handle.write(data)

                write(MAGIC)
                write(self._sample_ids.astype("<i8").tobytes())
                write(self._person_ids.astype("<i8").tobytes())
                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write))
                payload = handle.tell()
                trailer = {
                    **stamp,
                    "format": FORMAT_VERSION,
                    "kind": self.kind,
                    "rows": self.rows,
                    "removed": self._removed,
                    "hnsw_m": self.hnsw_m if self.kind == HNSW else None,
                    "payload_bytes": payload,
                    "sha256": digest.hexdigest(),
                }
                text = json.dumps(trailer).encode()
                handle.write(text + len(text).to_bytes(8, "little") + MAGIC)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | Path, **params: Any) -> tuple[FaceIndex, dict[str, Any]]:
        """Read a saved index and its stamp; IndexFileError if it is missing, truncated or altered."""
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                return cls._read(handle, path, **params)
        except FileNotFoundError:
            raise IndexFileError(f"{path}: no saved index") from None
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
            raise IndexFileError(f"{path}: unreadable saved index ({error})") from None

    @classmethod
    def _read(cls, handle: Any, path: Path, **params: Any) -> tuple[FaceIndex, dict[str, Any]]:
        size = handle.seek(0, os.SEEK_END)
        if size < 2 * len(MAGIC) + 8:
            raise IndexFileError(f"{path}: too short to be a saved index ({size} bytes)")
        handle.seek(size - 8 - len(MAGIC))
        tail = handle.read(8 + len(MAGIC))
        handle.seek(0)
        if tail[8:] != MAGIC or handle.read(len(MAGIC)) != MAGIC:
            raise IndexFileError(f"{path}: not a facestream index file (or truncated)")
        trailer_bytes = int.from_bytes(tail[:8], "little")
        payload = size - 8 - len(MAGIC) - trailer_bytes
        if payload < len(MAGIC):
            raise IndexFileError(f"{path}: bad trailer length")
        handle.seek(payload)
        stamp = json.loads(handle.read(trailer_bytes))
        if stamp.get("format") != FORMAT_VERSION or stamp.get("payload_bytes") != payload:
            raise IndexFileError(f"{path}: unknown format or inconsistent sizes")
        handle.seek(0)
        digest, left = hashlib.sha256(), payload
        while left:
            block = handle.read(min(left, 1 << 22))
            if not block:
                raise IndexFileError(f"{path}: truncated")
            digest.update(block)
            left -= len(block)
        if digest.hexdigest() != stamp["sha256"]:
            raise IndexFileError(f"{path}: checksum mismatch (the file was altered or damaged)")
        rows = int(stamp["rows"])
        handle.seek(len(MAGIC))
        sample_ids = np.frombuffer(handle.read(8 * rows), "<i8").astype(np.int64)
        person_ids = np.frombuffer(handle.read(8 * rows), "<i8").astype(np.int64)
        reader: Callable[[int], bytes] = handle.read
        loaded = faiss.read_index(faiss.PyCallbackIOReader(reader))
        index = cls(**params)
        expected = faiss.IndexHNSWFlat if stamp["kind"] == HNSW else faiss.IndexFlatL2
        if not isinstance(loaded, expected) or loaded.d != DIM or loaded.ntotal != rows:
            raise IndexFileError(f"{path}: the FAISS index does not match its row table")
        if stamp["kind"] == HNSW and stamp["hnsw_m"] != index.hnsw_m:
            raise IndexFileError(f"{path}: built with HNSW M={stamp['hnsw_m']}, configured M={index.hnsw_m}")
        index.kind, index._index = stamp["kind"], loaded
        index._sample_ids, index._person_ids = sample_ids, person_ids
        index._removed = int(np.count_nonzero(person_ids < 0))
        index._update_selector()
        return index, stamp
