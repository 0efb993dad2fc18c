"""The gallery: the SQLite store, the FAISS index derived from it, and the matching rules, together.

    with Gallery("gallery.db") as gallery:
        gallery.add_samples("Alice", descriptors)          # (n,128) float32, one transaction
        matches = gallery.identify(face_batch.descriptors)  # Matches: identities, distances, runner-up...
        gallery.refresh()                                   # True when another process changed the gallery

The store is the truth. The index is rebuilt from it whenever it cannot be trusted: on open, a
saved index (`<db>.faiss`) is used as is when its stamp (gallery uuid, revision, random token)
equals the store's; when it is older but of the same gallery it is brought up to date (rows it
shares with the store are checked bit for bit first); otherwise — missing, corrupt, another
history, other HNSW parameters — it is rebuilt and saved again.

Another process's enrolments and removals reach a running pipeline through `refresh()`: it reads
one row (the revision) and, when that changed, only what changed (samples with larger ids, the
removal log, the people table if names or thresholds changed). Changes made through this object
go the same way, so the index is always exactly the store's state at some revision.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError
from .index import (
    DEFAULT_APPROXIMATE_ABOVE,
    DEFAULT_HNSW_EF_SEARCH,
    DEFAULT_HNSW_M,
    FaceIndex,
    IndexFileError,
    gpu_mode,
    index_path,
    set_threads,
)
from .matching import (
    Matches,
    best_per_person,
    decide,
    excluded_by_negatives,
    false_accept_rate,
    nearest_negatives,
    pair_distances,
    threshold_for_far,
)
from .records import (
    DESCRIPTOR_BYTES,
    DESCRIPTOR_DTYPE,
    NEGATIVE,
    POSITIVE,
    Person,
    SampleArrays,
    State,
    check_descriptors,
    check_threshold,
)
from .store import Store
from .thumbnails import Thumbnails, thumbnails_dir

log = logging.getLogger(__name__)

EXPORT_FORMAT = "facestream-gallery"
EXPORT_VERSION = 1
DEFAULT_DISTANCE_THRESHOLD = 0.6  # dlib's same-person rule
# A query within 0.5 of a negative example is very probably that example's person: stricter than
# the 0.6 same-person rule because the negative typically looks like the person it guards (it was a
# false accept), so genuine faces of that person often lie 0.5-0.6 from it.
DEFAULT_NEGATIVE_THRESHOLD = 0.5
DEFAULT_SEARCH_K = 16  # samples fetched per query before widening (x4) to find a second person


class Gallery:
    """Store + index + rules. Thread-safe (one lock); each process opens its own."""

    def __init__(
        self,
        path: str | Path = "gallery.db",
        *,
        distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
        margin: float = 0.0,
        negative_threshold: float | None = DEFAULT_NEGATIVE_THRESHOLD,
        approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
        hnsw_m: int = DEFAULT_HNSW_M,
        hnsw_ef_search: int = DEFAULT_HNSW_EF_SEARCH,
        gpu: str | bool = False,
        busy_timeout: float = 30.0,
        threads: int = 0,
        save_index: bool = True,
        lazy_index: bool = False,
        search_k: int = DEFAULT_SEARCH_K,
        create: bool = True,
    ) -> None:
        self.distance_threshold = check_threshold(distance_threshold)
        self.margin = float(margin)
        self.negative_threshold = None if negative_threshold is None else float(negative_threshold)
        if self.margin < 0 or (self.negative_threshold is not None and self.negative_threshold < 0):
            raise ValueError("margin and negative_threshold must not be negative")
        self.search_k = max(2, int(search_k))
        self.save_index_on_close = save_index
        self._index_params = {
            "approximate_above": int(approximate_above),
            "hnsw_m": int(hnsw_m),
            "hnsw_ef_search": int(hnsw_ef_search),
            "gpu": gpu_mode(gpu),
        }
        set_threads(threads)
        self._lock = threading.RLock()
        self.store = Store(path, busy_timeout=busy_timeout, create=create)
        self.path = self.store.path
        self.index_path = index_path(self.path)
        # face images of samples, deleted with them; the folder must be this database's (sample ids restart)
        self.thumbnails = Thumbnails(thumbnails_dir(self.path), owner=self.store.uuid)
        if not self.store.created:
            self.thumbnails.adopt()
        self._index: FaceIndex | None = None
        self._state: State | None = None  # the store state the in-memory data reflects
        self._max_sample_id = 0
        self._dirty = False  # index changed since it was last saved
        self._person_ids = np.zeros(0, np.int64)
        self._person_names: dict[int, str] = {}
        self._person_thresholds = np.zeros(0)
        self._effective_thresholds = np.zeros(0)
        self._negatives = SampleArrays(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
                                       np.zeros((0, 128), np.float32))  # fmt: skip
        if not lazy_index:
            try:
                self._load()
            except BaseException:
                self.store.close()
                raise

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> Gallery:
        """From the typed `gallery` section of the configuration (pipeline/config/ GalleryConfig, validated
        there); `overrides` replace its values (e.g. ``path=``) or add constructor options (``threads=``)."""
        settings = {**dataclasses.asdict(section), **overrides}
        return cls(settings.pop("path"), **settings)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Save the index if it changed (so the next open is fast), then close the store."""
        with self._lock:
            try:
                if self._dirty and self.save_index_on_close:
                    self.save_index()
            finally:
                self.store.close()

    # -- loading and keeping in step --------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The store revision the in-memory index reflects (-1 before it is loaded)."""
        return self._state.revision if self._state else -1

    @property
    def index(self) -> FaceIndex:
        with self._lock:
            if self._index is None:
                self._load()
            assert self._index is not None
            return self._index

    def _load(self) -> None:
        saved: FaceIndex | None = None
        stamp: dict[str, Any] = {}
        try:
            saved, stamp = FaceIndex.load(self.index_path, **self._index_params)
        except IndexFileError as error:
            log.info("building the gallery index: %s", error)
        with self.store.snapshot() as db:
            state = self.store.state()
            self._set_people(*self.store.people_table(db))
            self._negatives = self.store.samples(kind=NEGATIVE, db=db)
            self._max_sample_id = int(db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0])
            current = (
                saved is not None
                and stamp.get("uuid") == self.store.uuid
                and (stamp.get("revision"), stamp.get("token")) == (state.revision, state.token)
                and saved.kind == saved.kind_for(len(saved))
            )
            positives = None if current else self.store.samples(kind=POSITIVE, db=db)
        self._state = state
        if current:
            assert saved is not None
            self._index, self._dirty = saved, False
            return
        assert positives is not None
        if saved is not None and stamp.get("uuid") == self.store.uuid:
            if not saved.sync(positives.ids, positives.person_ids, positives.descriptors):
                log.info("saved gallery index disagrees with the store (another history): rebuilding")
            elif saved.kind != saved.kind_for(len(saved)):
                log.info(
                    "gallery index: %d rows call for a %s index: rebuilding", len(saved), saved.kind_for(len(saved))
                )
            else:
                log.info("gallery index brought from revision %s to %s", stamp.get("revision"), state.revision)
                self._index = saved
        elif saved is not None:
            log.info("saved gallery index belongs to another gallery: rebuilding")
        if self._index is None:
            self._index = FaceIndex(**self._index_params)
            self._index.build(positives.ids, positives.person_ids, positives.descriptors)
        self._dirty = True
        if self.save_index_on_close:
            self.save_index()

    def save_index(self) -> None:
        """Write `<db>.faiss` with the stamp of the revision it reflects (mode 0600, atomic)."""
        with self._lock:
            if self._index is None or self._state is None:
                return
            stamp = {"uuid": self.store.uuid, "revision": self._state.revision, "token": self._state.token}
            try:
                self._index.save(self.index_path, stamp)
            except OSError as error:
                log.warning("cannot save the gallery index to %s: %s", self.index_path, error)
                return
            self._dirty = False

    def _set_people(self, ids: np.ndarray, names: list[str], thresholds: np.ndarray) -> None:
        self._person_ids = ids
        self._person_names = dict(zip(ids.tolist(), names))
        self._person_thresholds = thresholds  # NaN: the gallery's default applies
        default = self.distance_threshold if self.distance_threshold is not None else np.nan
        self._effective_thresholds = np.where(np.isnan(thresholds), default, thresholds)

    def refresh(self) -> bool:
        """Catch up with changes made by anyone (this or another process); True when something changed.

        Cheap when nothing changed (one single-row read), so a pipeline can call it every frame or second.
        """
        with self._lock:
            if self._index is None:
                self._load()
                return True
            assert self._state is not None
            if self.store.state() == self._state:
                return False
            with self.store.snapshot() as db:
                state = self.store.state()
                if state.people_revision != self._state.people_revision:
                    self._set_people(*self.store.people_table(db))
                new = self.store.samples(after_id=self._max_sample_id, db=db)
                removed = self.store.removed_since(self._state.revision, db=db)
            self._index.remove(removed)
            negatives = self._negatives.select(~np.isin(self._negatives.ids, removed))
            fresh = new.select(new.negative)
            self._negatives = SampleArrays(
                *(np.concatenate([a, b]) for a, b in zip(
                    (negatives.ids, negatives.person_ids, negatives.negative, negatives.descriptors),
                    (fresh.ids, fresh.person_ids, fresh.negative, fresh.descriptors),
                ))
            )  # fmt: skip
            positives = new.select(~new.negative)
            self._index.add(positives.ids, positives.person_ids, positives.descriptors)
            if len(new):
                self._max_sample_id = int(new.ids[-1])
            self._state = state
            self._dirty = True
            return True

    # -- changes (each one transaction in the store, then refresh) -----------------------------------------

    def add_person(self, name: str, metadata: dict | None = None, threshold: float | None = None) -> None:
        with self._lock:
            self.store.add_person(name, metadata, threshold)
            self._after_change()

    def add_samples(
        self,
        names: str | Sequence[str],
        descriptors: np.ndarray,
        *,
        sources: str | Sequence[str | None] | None = None,
        image_sha256: str | Sequence[str | None] | None = None,
        boxes: np.ndarray | Sequence[Any] | None = None,
        quality: dict | Sequence[dict | None] | None = None,
        metadata: dict | None = None,
        create: bool = True,
    ) -> np.ndarray:
        """Enrol n faces (one transaction): `names` is one name or one per row; returns the sample ids.

        People are created as needed (with `metadata`) unless `create` is false.
        """
        with self._lock:
            ids = self.store.add_samples(
                names, descriptors, kind=POSITIVE, sources=sources, image_sha256=image_sha256, boxes=boxes,
                quality=quality, metadata=metadata, create=create,
            )  # fmt: skip
            self._after_change()
            return ids

    def add_negative(
        self,
        name: str,
        descriptors: np.ndarray,
        *,
        sources: str | Sequence[str | None] | None = None,
        image_sha256: str | Sequence[str | None] | None = None,
        boxes: np.ndarray | Sequence[Any] | None = None,
        quality: dict | Sequence[dict | None] | None = None,
    ) -> np.ndarray:
        """Record faces that are NOT `name` (an existing person), e.g. a false accept an operator corrected."""
        with self._lock:
            ids = self.store.add_samples(
                name, descriptors, kind=NEGATIVE, sources=sources, image_sha256=image_sha256, boxes=boxes,
                quality=quality, create=False,
            )  # fmt: skip
            self._after_change()
            return ids

    def remove_person(self, name: str) -> int:
        """Remove a person and all their samples; returns the number of samples removed."""
        with self._lock:
            sample_ids = self.store.sample_ids(name)
            removed = self.store.remove_person(name)
            self.thumbnails.remove(sample_ids.tolist())
            self._after_change()
            return removed

    def remove_samples(self, sample_ids: Sequence[int] | np.ndarray) -> int:
        with self._lock:
            removed = self.store.remove_samples(sample_ids)
            self.thumbnails.remove(np.asarray(sample_ids).reshape(-1).tolist())
            self._after_change()
            return removed

    def rename_person(self, old: str, new: str) -> None:
        with self._lock:
            self.store.rename_person(old, new)
            self._after_change()

    def set_threshold(self, name: str, threshold: float | None) -> None:
        """A person's own distance threshold (None: the gallery's default applies)."""
        with self._lock:
            self.store.set_threshold(name, threshold)
            self._after_change()

    def set_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        with self._lock:
            self.store.set_metadata(name, metadata)
            self._after_change()

    def _after_change(self) -> None:
        if self._index is not None:
            self.refresh()

    # -- reading --------------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        """Everyone, sorted by name: created, metadata, threshold, sample and negative counts."""
        return self.store.people()

    def find_image(self, image_sha256: str) -> list[tuple[str, int, str]]:
        """(person, sample id, kind) already taken from this image."""
        return self.store.find_image(image_sha256)

    def identify(self, descriptors: np.ndarray) -> Matches:
        """(N,128) descriptors -> Matches (identity, distance, runner-up person, reason per face)."""
        queries = check_descriptors(descriptors) if len(descriptors) else np.zeros((0, 128), np.float32)
        with self._lock:
            index = self.index
            if len(index) == 0:
                return Matches.empty(len(queries))
            candidates, distances, negative_distances = self._candidates(queries)
            return decide(
                candidates, distances, self._thresholds_of(candidates), self._person_names, margin=self.margin,
                negative_distances=negative_distances, negative_threshold=self.negative_threshold,
            )  # fmt: skip

    def _thresholds_of(self, candidates: np.ndarray) -> np.ndarray:
        if len(self._person_ids) == 0:
            return np.full(candidates.shape, np.nan)
        column = np.minimum(np.searchsorted(self._person_ids, candidates), len(self._person_ids) - 1)
        known = (candidates >= 0) & (self._person_ids[column] == candidates)
        return np.where(known, self._effective_thresholds[column], np.nan)

    def _candidates(
        self, queries: np.ndarray, exclude: np.ndarray | None = None, use_negatives: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate people (N,C), their distances (N,C) and their nearest-negative distances (N,C).

        Searches k samples, and again with 4k for the queries whose hits hold fewer than two eligible
        people (one person with many samples, tombstones, exclusions), until every query has two or
        the whole index was searched. `exclude` (N,) drops one person per query (calibration).
        """
        index = self._index
        assert index is not None
        n, total = len(queries), len(index)
        k = min(self.search_k, total)
        pending = np.arange(n)
        parts = []
        while len(pending):
            distances, _, persons = index.search(queries[pending], k)
            if exclude is not None:
                persons = np.where(persons == exclude[pending, None], -1, persons)
            cand, cand_d = best_per_person(distances, persons)
            if use_negatives and len(self._negatives):
                neg_d = nearest_negatives(queries[pending], cand, self._negatives.descriptors,
                                          self._negatives.person_ids)  # fmt: skip
                eligible = (cand >= 0) & ~excluded_by_negatives(cand_d, neg_d, self.negative_threshold)
            else:
                neg_d = np.full(cand.shape, np.inf)
                eligible = cand >= 0
            done = (eligible.sum(axis=1) >= 2) | (k >= total)
            parts.append((pending[done], cand[done], cand_d[done], neg_d[done]))
            pending = pending[~done]
            k = min(4 * k, total)
        width = max(part[1].shape[1] for part in parts)
        candidates = np.full((n, width), -1, np.int64)
        distances = np.full((n, width), np.inf)
        negative_distances = np.full((n, width), np.inf)
        for rows, cand, cand_d, neg_d in parts:
            candidates[rows, : cand.shape[1]] = cand
            distances[rows, : cand.shape[1]] = cand_d
            negative_distances[rows, : cand.shape[1]] = neg_d
        return candidates, distances, negative_distances

    # -- export / import -----------------------------------------------------------------------------------

    def export(self, path: str | Path) -> dict[str, int]:
        """Write every person and sample to a JSON file (mode 0600); descriptors round-trip exactly.

        Descriptors are base64 of their 512 little-endian float32 bytes, not decimal text.
        """
        people = self.store.dump()
        for person in people:
            for sample in person["samples"]:
                raw = np.asarray(sample["descriptor"], dtype=DESCRIPTOR_DTYPE).tobytes()
                sample["descriptor"] = base64.b64encode(raw).decode("ascii")
        document = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported": time.time(),
            "descriptor_encoding": "base64 of 128 little-endian float32",
            "people": people,
        }
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
                json.dump(document, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as error:
            raise GalleryError(f"{path}: cannot write the export: {error.strerror or error}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return {"people": len(people), "samples": sum(len(p["samples"]) for p in people)}

    def import_file(self, path: str | Path) -> dict[str, int]:
        """Merge an export into this gallery (one transaction); exact duplicates are skipped.

        Returns {"people_added", "samples_added", "duplicates_skipped"}. Existing people keep their
        metadata and threshold.
        """
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise GalleryError(f"{path}: cannot read: {error.strerror or error}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise GalleryError(f"{path}: not a JSON file ({error})") from None
        if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
            raise GalleryError(f"{path}: not a facestream gallery export (format {EXPORT_FORMAT!r} expected)")
        if document.get("version") != EXPORT_VERSION:
            raise GalleryError(
                f"{path}: export version {document.get('version')!r}; this facestream reads {EXPORT_VERSION}"
            )
        try:
            people = [_decoded(person) for person in document["people"]]
            with self._lock:
                summary = self.store.merge(people)
                self._after_change()
        except (KeyError, TypeError, ValueError) as error:
            raise GalleryError(f"{path}: malformed export ({error})") from None
        return summary

    # -- calibration -----------------------------------------------------------------------------------------

    def calibrate(
        self,
        target_far: float = 1e-3,
        impostor_descriptors: np.ndarray | None = None,
        *,
        max_pairs: int = 2_000_000,
        max_probes: int = 10_000,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Estimate false accepts from the gallery itself, and the threshold for `target_far`.

        Impostor pairs are samples of different enrolled people (plus, optionally, each given
        descriptor of a face known not to be enrolled against every sample): `far` is the share of
        those pairs within the current threshold, `threshold_for_target_far` the largest threshold
        whose share is at most the target. That is a per-comparison rate. What an operator sees is
        the open-set rate, in `identification`: each sample probed as if its person were not
        enrolled (its own person left out) — the share whose nearest other person is within the
        threshold. It grows with the number of people, which the pair rate does not show.
        """
        if not 0 < target_far < 1:
            raise ValueError(f"target_far must be between 0 and 1, got {target_far}")
        positives = self.store.samples(kind=POSITIVE)
        impostor, genuine, exhaustive = pair_distances(positives.descriptors, positives.person_ids, max_pairs, seed)
        external = np.zeros((0, 128), np.float32)
        if impostor_descriptors is not None and len(impostor_descriptors):
            external = check_descriptors(impostor_descriptors)
            cross, cross_exhaustive = _cross_distances(external, positives.descriptors, max_pairs, seed)
            impostor = np.concatenate([impostor, cross])
            exhaustive = exhaustive and cross_exhaustive
        threshold = float(self.distance_threshold)
        people = len(np.unique(positives.person_ids))

        # Open-set: every (or a sample of) enrolled face against everyone else; outsiders against everyone.
        rng = np.random.default_rng(seed)
        probes = np.arange(len(positives))
        if len(probes) > max_probes:
            probes = np.sort(rng.choice(len(positives), max_probes, replace=False))
        nearest = np.zeros(0)
        with self._lock:
            index = self.index
            if people >= 2 and len(index):
                _, dist, _ = self._candidates(
                    positives.descriptors[probes], exclude=positives.person_ids[probes], use_negatives=False
                )
                nearest = dist[:, 0]
            if len(external) and len(index):
                _, dist, _ = self._candidates(external, use_negatives=False)
                nearest = np.concatenate([nearest, dist[:, 0]])
        nearest = nearest[np.isfinite(nearest)]

        needed = int(np.ceil(10 / target_far))
        meaningful = len(impostor) >= needed and people >= 10
        notes = []
        if len(impostor) < needed:
            notes.append(
                f"only {len(impostor)} impostor pairs: a false-accept rate of {target_far:g} needs at least"
                f" {needed} (10 expected false accepts) to be estimated meaningfully"
            )
        if people < 10:
            notes.append(f"only {people} people: pairs from so few people are strongly correlated")
        if not notes:
            notes.append("ok")
        return {
            "threshold": threshold,
            "target_far": target_far,
            "people": people,
            "samples": len(positives),
            "impostor_pairs": len(impostor),
            "impostor_pairs_exhaustive": exhaustive,
            "outside_descriptors": len(external),
            "far": false_accept_rate(impostor, threshold),
            "threshold_for_target_far": threshold_for_far(impostor, target_far),
            "genuine_pairs": len(genuine),
            "frr": float(np.mean(genuine > threshold)) if len(genuine) else float("nan"),
            "identification": {
                "probes": len(nearest),
                "far": false_accept_rate(nearest, threshold),
                "threshold_for_target_far": threshold_for_far(nearest, target_far),
            },
            "meaningful": meaningful,
            "note": "; ".join(notes),
        }


def _decoded(person: dict[str, Any]) -> dict[str, Any]:
    """An exported person with its descriptors decoded back to float32 arrays (exact bytes)."""
    samples = []
    for sample in person.get("samples", []):
        raw = base64.b64decode(sample["descriptor"], validate=True)
        if len(raw) != DESCRIPTOR_BYTES:
            raise ValueError(
                f"person {person.get('name')!r}: a descriptor has {len(raw)} bytes, not {DESCRIPTOR_BYTES}"
            )
        samples.append({**sample, "descriptor": np.frombuffer(raw, dtype=DESCRIPTOR_DTYPE).astype(np.float32)})
    return {**person, "samples": samples}


def _cross_distances(a: np.ndarray, b: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, bool]:
    """Distances of pairs (one row of `a`, one of `b`): all when there are at most `max_pairs`, else a sample."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(b64) == 0:
        return np.zeros(0), True
    if len(a64) * len(b64) <= max_pairs:
        return np.concatenate([np.sqrt(((b64 - row) ** 2).sum(axis=1)) for row in a64]), True
    rng = np.random.default_rng(seed + 1)
    i, j = rng.integers(0, len(a64), max_pairs), rng.integers(0, len(b64), max_pairs)
    return np.sqrt(((a64[i] - b64[j]) ** 2).sum(axis=1)), False
