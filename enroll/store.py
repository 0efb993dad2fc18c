"""The gallery's source of truth: people and face samples in one SQLite file.

Why SQLite: one file, transactions, and safe concurrent use by several processes (the enrolment
command and a running pipeline) without a server. Everything else — the FAISS index, in-memory
arrays — is derived from this file and can be rebuilt from it.

Guarantees, and how they are kept:

* every change that touches more than one row runs in one `BEGIN IMMEDIATE` transaction, so a
  process killed mid-enrolment leaves either all of a batch or none of it;
* WAL mode plus a busy timeout: readers never block writers, and two writers queue instead of
  failing ("database is locked" only after `busy_timeout` seconds, as a `GalleryError`);
* a new file is created with mode 0600 (face descriptors are biometric data); SQLite creates the
  -wal and -shm files with the database file's mode, so they are 0600 too;
* `gallery_state.revision` is bumped by triggers on every row change (whoever makes it, even the
  sqlite3 shell), so another process can poll one row to learn that something changed, and
  `removed_samples` logs deletions so it can catch up without re-reading everything;
* samples are immutable (a trigger refuses changes to their person, kind or descriptor): sample
  ids only ever grow (AUTOINCREMENT), so "everything with id > N" plus the removal log is the
  complete list of changes since a revision.

Descriptors are stored as 512-byte BLOBs: 128 float32, little-endian. What a gallery holds and the checks on
what goes in: enroll/records.py; the SQL schema and its migrations: enroll/schema.py.
"""


from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError
from .records import (
    KINDS,
    NEGATIVE,
    POSITIVE,
    DuplicatePersonError,
    GalleryBusyError,
    GalleryNotFoundError,
    Person,
    SampleArrays,
    State,
    UnknownPersonError,
    blobs_to_descriptors,
    check_descriptors,
    check_name,
    check_threshold,
    descriptors_to_blobs,
)
from .schema import SCHEMA_VERSION, migrate


def _per_row(value: Any, n: int, what: str) -> list:
    """A scalar for all rows, or a sequence with one value per row."""
    if value is None or isinstance(value, (str, bytes, dict)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: expected {n} values (one per descriptor), got {len(values)}")
    return values


def _box_json(box: Any) -> str | None:
    if box is None:
        return None
    values = [int(v) for v in np.asarray(box).reshape(-1)]
    if len(values) != 4:
        raise ValueError(f"a box is [left, top, right, bottom], got {box!r}")
    return json.dumps(values)


def _create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only, unless it exists (another process may race us)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Store:
    """One connection to a gallery file. Not shared between processes; each process opens its own."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0, synchronous: str = "FULL",
                 create: bool = True) -> None:  # fmt: skip
        """Open the gallery at `path`; with `create` (enrolment) a missing one is created (`self.created` says
        so), without it (reading commands) a missing one is GalleryNotFoundError and nothing is created. A
        gallery we cannot write (read-only file, folder or file system) is opened read-only: WAL mode needs
        a ``-shm`` file beside it that cannot be created there."""
        self.path = Path(path).expanduser()
        self.busy_timeout = float(busy_timeout)
        if self.path.is_dir():
            raise GalleryError(f"{self.path}: is a directory, not a gallery file")
        self.created = not self.path.exists()
        if self.created and not create:
            raise GalleryNotFoundError(
                f"{self.path}: no such gallery (nothing created; check the path, or enrol someone first: "
                "facestream enroll add|import ... --gallery PATH)"
            )
        if self.created:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _create_private_file(self.path)
            except OSError as error:
                raise GalleryError(f"{self.path}: cannot create the gallery file: {error.strerror or error}") from None
        self.read_only = not self.created and not (os.access(self.path, os.W_OK)
                                                   and os.access(self.path.parent, os.W_OK))  # fmt: skip
        try:
            self._db = self._connect(immutable=False)
        except sqlite3.Error as error:
            raise GalleryError(f"{self.path}: cannot open: {error}") from None
        # Several processes opening a new gallery at once race to switch it to WAL and create the schema;
        # there SQLite answers "locked" at once instead of waiting (its busy handler does not cover that
        # step), so opening is retried until the busy timeout is used up.
        deadline = time.monotonic() + self.busy_timeout
        try:
            while True:
                try:
                    with self._errors("open"):
                        try:
                            self._open(synchronous)
                        except sqlite3.OperationalError:
                            if not self.read_only:
                                raise
                            # no -shm beside it and none can be made: read the file as it is
                            self._db.close()
                            self._db = self._connect(immutable=True)
                            self._open(synchronous)
                    break
                except GalleryBusyError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01 + 0.04 * (os.getpid() % 5) / 5)  # apart, so one of them goes first
        except BaseException:
            self._db.close()
            raise

    def _connect(self, immutable: bool) -> sqlite3.Connection:
        target: str | Path = self.path
        if self.read_only:
            from urllib.parse import quote

            target = f"file:{quote(str(self.path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")
        return sqlite3.connect(target, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False,
                               uri=self.read_only)  # fmt: skip

    def _open(self, synchronous: str) -> None:
        self._db.execute("PRAGMA foreign_keys = ON")
        self._check_is_gallery()
        if not self.read_only:
            self._enable_wal()
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._migrate()
        self.uuid: str = self._db.execute("SELECT value FROM gallery_meta WHERE key = 'uuid'").fetchone()[0]

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """sqlite3 errors -> GalleryError naming the file and what is wrong in words."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as error:
            text = str(error)
            if "locked" in text or "busy" in text:
                raise GalleryBusyError(
                    f"{self.path}: the database is locked by another process (waited up to {self.busy_timeout:g} s"
                    f" to {doing})"
                ) from None
            elif "not a database" in text:
                what = "not a SQLite database (wrong file, or its header is corrupt)"
            elif "malformed" in text or "corrupt" in text:
                what = f"the database is corrupt ({text}); restore it from a backup or an export"
            elif "readonly" in text or "read-only" in text:
                what = f"cannot write ({text}): check the file's and its folder's permissions"
            else:
                what = f"{text} (while trying to {doing})"
            raise GalleryError(f"{self.path}: {what}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so waiting uses the busy timeout
        (a deferred transaction that reads first cannot upgrade and would fail at once)."""
        with self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state (WAL snapshot)."""
        with self._errors("read"):
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")

    def _check_is_gallery(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "schema_version" not in tables:
            raise GalleryError(
                f"{self.path}: a SQLite database, but not a facestream gallery (tables: {', '.join(sorted(tables))});"
                " refusing to change it"
            )

    def _enable_wal(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise GalleryError(f"{self.path}: cannot switch the database to WAL mode (got {mode!r})")

    def schema_version(self) -> int:
        row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in tables and self.schema_version() == SCHEMA_VERSION:
            return  # the common case: no write lock needed to open
        if self.read_only:
            raise GalleryError(f"{self.path}: read-only, and its schema needs an upgrade that would write it")
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise GalleryError(
                    f"{self.path}: written by a newer facestream (schema version {version}; this version knows"
                    f" up to {SCHEMA_VERSION}); upgrade facestream to use it"
                )
            migrate(db, version, SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    # -- reading ------------------------------------------------------------------------------------

    def state(self) -> State:
        with self._errors("read the revision"):
            revision, people_revision, token = self._db.execute(
                "SELECT revision, people_revision, token FROM gallery_state"
            ).fetchone()
        return State(int(revision), int(people_revision), bytes(token).hex())

    def revision(self) -> int:
        return self.state().revision

    def _person_id(self, db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownPersonError(f"{self.path}: no person named {name!r}")
        return int(row[0])

    def people(self) -> list[Person]:
        """Everyone, by name, with their sample and negative counts."""
        with self._errors("list people"):
            rows = self._db.execute(
                """SELECT p.id, p.name, p.created, p.metadata, p.threshold,
                          coalesce(sum(s.kind = 'positive'), 0), coalesce(sum(s.kind = 'negative'), 0)
                   FROM people p LEFT JOIN samples s ON s.person_id = p.id
                   GROUP BY p.id ORDER BY p.name"""
            ).fetchall()
        return [Person(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def person(self, name: str) -> Person:
        for person in self.people():
            if person.name == name:
                return person
        raise UnknownPersonError(f"{self.path}: no person named {name!r}")

    def people_table(self, db: sqlite3.Connection | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(ids (P,), names, thresholds (P,) with NaN where unset): what matching needs, nothing more."""
        db = db or self._db
        rows = db.execute("SELECT id, name, threshold FROM people ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        thresholds = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
        return ids, [r[1] for r in rows], thresholds

    def samples(self, after_id: int = 0, kind: str | None = None, db: sqlite3.Connection | None = None) -> SampleArrays:
        """Samples with id > `after_id` (all by default), optionally of one kind, as arrays."""
        db = db or self._db
        query = "SELECT id, person_id, kind, descriptor FROM samples WHERE id > ?"
        params: list[Any] = [int(after_id)]
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        with self._errors("read samples"):
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return SampleArrays(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] == NEGATIVE for r in rows], dtype=bool),
            blobs_to_descriptors([r[3] for r in rows]),
        )

    def sample_ids(self, name: str, kind: str | None = None) -> np.ndarray:
        """Ids of one person's samples (of one kind, or all), in order; UnknownPersonError if no such person."""
        with self.snapshot() as db:
            query, params = "SELECT id FROM samples WHERE person_id = ?", [self._person_id(db, name)]
            if kind is not None:
                query += " AND kind = ?"
                params.append(kind)
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def removed_since(self, revision: int, db: sqlite3.Connection | None = None) -> np.ndarray:
        """Ids of samples deleted after `revision` (the removal log)."""
        db = db or self._db
        rows = db.execute("SELECT sample_id FROM removed_samples WHERE revision > ?", (int(revision),)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def find_image(self, image_sha256: str) -> list[tuple[str, int, str]]:
        """(person name, sample id, kind) of samples already taken from this image: lets enrolment skip repeats."""
        with self._errors("look up an image"):
            rows = self._db.execute(
                "SELECT p.name, s.id, s.kind FROM samples s JOIN people p ON p.id = s.person_id"
                " WHERE s.image_sha256 = ? ORDER BY s.id",
                (image_sha256,),
            ).fetchall()
        return [(r[0], int(r[1]), r[2]) for r in rows]

    def dump(self) -> list[dict[str, Any]]:
        """Every person with every sample, all fields, for export (descriptors as float32 arrays)."""
        with self.snapshot() as db:
            people = db.execute("SELECT id, name, created, metadata, threshold FROM people ORDER BY id").fetchall()
            samples = db.execute(
                "SELECT person_id, kind, descriptor, source, image_sha256, box, quality, created"
                " FROM samples ORDER BY id"
            ).fetchall()
        by_person: dict[int, list[dict[str, Any]]] = {p[0]: [] for p in people}
        for s in samples:
            by_person[s[0]].append(
                {
                    "kind": s[1],
                    "descriptor": blobs_to_descriptors([s[2]])[0],
                    "source": s[3],
                    "image_sha256": s[4],
                    "box": None if s[5] is None else json.loads(s[5]),
                    "quality": json.loads(s[6]),
                    "created": s[7],
                }
            )
        return [
            {"name": p[1], "created": p[2], "metadata": json.loads(p[3]), "threshold": p[4], "samples": by_person[p[0]]}
            for p in people
        ]

    def integrity_check(self) -> list[str]:
        """Problems found by SQLite's own check and the foreign-key check; an empty list means healthy."""
        with self._errors("check the database"):
            problems = [r[0] for r in self._db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"foreign key: {tuple(r)}" for r in self._db.execute("PRAGMA foreign_key_check").fetchall()]
        return problems

    # -- writing --------------------------------------------------------------------------------------

    def _insert_person(
        self, db: sqlite3.Connection, name: str, metadata: dict | None, threshold: float | None, created: float
    ) -> int:
        try:
            cursor = db.execute(
                "INSERT INTO people (name, created, metadata, threshold) VALUES (?, ?, ?, ?)",
                (check_name(name), created, json.dumps(metadata or {}), check_threshold(threshold)),
            )
        except sqlite3.IntegrityError:
            raise DuplicatePersonError(f"{self.path}: a person named {name!r} already exists") from None
        return int(cursor.lastrowid)

    def add_person(self, name: str, metadata: dict | None = None, threshold: float | None = None) -> int:
        with self.transaction() as db:
            return self._insert_person(db, name, metadata, threshold, time.time())

    def add_samples(
        self,
        names: str | Sequence[str],
        descriptors: np.ndarray,
        *,
        kind: str = POSITIVE,
        sources: str | Sequence[str | None] | None = None,
        image_sha256: str | Sequence[str | None] | None = None,
        boxes: np.ndarray | Sequence[Any] | None = None,
        quality: dict | Sequence[dict | None] | None = None,
        created: float | Sequence[float] | None = None,
        create: bool = True,
        metadata: dict | None = None,
    ) -> np.ndarray:
        """Add n samples in one transaction; returns their ids (n,).

        `names` is one name for all rows or one per row; unknown people are created (with
        `metadata`) when `create` is true, else UnknownPersonError and nothing is written.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        array = check_descriptors(descriptors)
        n = len(array)
        names_list = [check_name(v) for v in _per_row(names, n, "names")]
        sources_list = _per_row(sources, n, "sources")
        sha_list = _per_row(image_sha256, n, "image_sha256")
        boxes_list = [_box_json(b) for b in (_per_row(None, n, "boxes") if boxes is None else list(boxes))]
        if len(boxes_list) != n:
            raise ValueError(f"boxes: expected {n} boxes, got {len(boxes_list)}")
        quality_list = [json.dumps(q or {}) for q in _per_row(quality, n, "quality")]
        now = time.time()
        created_list = [now] * n if created is None else [float(c) for c in _per_row(created, n, "created")]
        blobs = descriptors_to_blobs(array)
        with self.transaction() as db:
            person_ids: dict[str, int] = {}
            for name in dict.fromkeys(names_list):
                row = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    person_ids[name] = int(row[0])
                elif create:
                    person_ids[name] = self._insert_person(db, name, metadata, None, now)
                else:
                    raise UnknownPersonError(f"{self.path}: no person named {name!r}")
            first = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0]
            db.executemany(
                "INSERT INTO samples (person_id, kind, descriptor, source, image_sha256, box, quality, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                zip(
                    (person_ids[name] for name in names_list),
                    [kind] * n,
                    blobs,
                    sources_list,
                    sha_list,
                    boxes_list,
                    quality_list,
                    created_list,
                ),
            )
            ids = db.execute("SELECT id FROM samples WHERE id > ? ORDER BY id", (first,)).fetchall()
        return np.array([r[0] for r in ids], dtype=np.int64)

    def remove_person(self, name: str) -> int:
        """Delete a person and all their samples (one transaction); returns the number of samples removed."""
        with self.transaction() as db:
            person_id = self._person_id(db, name)
            removed = db.execute("DELETE FROM samples WHERE person_id = ?", (person_id,)).rowcount
            db.execute("DELETE FROM people WHERE id = ?", (person_id,))
        return int(removed)

    def remove_samples(self, sample_ids: Sequence[int] | np.ndarray) -> int:
        with self.transaction() as db:
            removed = db.executemany(
                "DELETE FROM samples WHERE id = ?", [(int(i),) for i in np.asarray(sample_ids).reshape(-1)]
            ).rowcount
        return int(removed)

    def rename_person(self, old: str, new: str) -> None:
        with self.transaction() as db:
            person_id = self._person_id(db, old)
            try:
                db.execute("UPDATE people SET name = ? WHERE id = ?", (check_name(new), person_id))
            except sqlite3.IntegrityError:
                raise DuplicatePersonError(f"{self.path}: a person named {new!r} already exists") from None

    def set_threshold(self, name: str, threshold: float | None) -> None:
        with self.transaction() as db:
            person_id = self._person_id(db, name)
            db.execute("UPDATE people SET threshold = ? WHERE id = ?", (check_threshold(threshold), person_id))

    def set_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        text = json.dumps(metadata)
        with self.transaction() as db:
            person_id = self._person_id(db, name)
            db.execute("UPDATE people SET metadata = ? WHERE id = ?", (text, person_id))

    def merge(self, people: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Add people and samples from an export, in one transaction, skipping exact duplicates.

        A person who already exists keeps their metadata and threshold; their samples are merged.
        A duplicate is a sample of the same person and kind with the same descriptor bytes.
        """
        summary = {"people_added": 0, "samples_added": 0, "duplicates_skipped": 0}
        with self.transaction() as db:
            for person in people:
                name = check_name(person["name"])
                row = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
                if row is None:
                    person_id = self._insert_person(
                        db, name, person.get("metadata"), person.get("threshold"), float(person.get("created") or 0)
                    )
                    summary["people_added"] += 1
                    seen: set[tuple[str, bytes]] = set()
                else:
                    person_id = int(row[0])
                    seen = {
                        (r[0], bytes(r[1]))
                        for r in db.execute("SELECT kind, descriptor FROM samples WHERE person_id = ?", (person_id,))
                    }
                for sample in person.get("samples", []):
                    kind = sample.get("kind", POSITIVE)
                    if kind not in KINDS:
                        raise ValueError(f"person {name!r}: unknown sample kind {kind!r}")
                    blob = descriptors_to_blobs(check_descriptors(sample["descriptor"]))[0]
                    if (kind, blob) in seen:
                        summary["duplicates_skipped"] += 1
                        continue
                    seen.add((kind, blob))
                    db.execute(
                        "INSERT INTO samples (person_id, kind, descriptor, source, image_sha256, box, quality, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            person_id,
                            kind,
                            blob,
                            sample.get("source"),
                            sample.get("image_sha256"),
                            _box_json(sample.get("box")),
                            json.dumps(sample.get("quality") or {}),
                            float(sample.get("created") or time.time()),
                        ),
                    )
                    summary["samples_added"] += 1
        return summary

