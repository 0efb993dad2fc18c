"""enroll/store.py (records.py, schema.py) and the Gallery's persistence: real SQLite files, real processes.

Concurrency and crash safety are tested with separate Python processes (subprocess), because
locks and WAL recovery only mean something across processes: two enrolling at once must both
succeed and lose nothing, and one killed by SIGKILL in the middle of enrolling must leave a
database that SQLite finds intact and that holds whole batches only.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facestream.enroll.gallery import Gallery
from facestream.enroll.records import DuplicatePersonError, UnknownPersonError
from facestream.enroll.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from facestream.enroll.store import Store
from facestream.errors import GalleryError


def descriptors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, (n, 128)).astype(np.float32)


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchone()[0]


# -- CRUD and constraints -------------------------------------------------------------------------------


def test_people_and_samples_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.add_person("Alice", {"team": "blue"}, threshold=0.5)
    d = descriptors(3)
    d[0, 0] = -0.0  # signs of zero and subnormals must survive the BLOB
    d[0, 1] = np.float32(1e-42)
    ids = store.add_samples(
        "Alice", d, sources=["a.jpg", "b.jpg", None], image_sha256="ab" * 32,
        boxes=[[1, 2, 3, 4], None, [5, 6, 7, 8]], quality={"sharpness": 0.9},
    )  # fmt: skip
    assert ids.tolist() == [1, 2, 3]
    store.add_samples("Bob", descriptors(2, 1))  # created on the way
    store.add_samples("Alice", descriptors(1, 2), kind="negative")

    people = {p.name: p for p in store.people()}
    assert (people["Alice"].samples, people["Alice"].negatives, people["Bob"].samples) == (3, 1, 2)
    assert people["Alice"].metadata == {"team": "blue"} and people["Alice"].threshold == 0.5
    assert people["Bob"].threshold is None
    samples = store.samples(kind="positive")
    assert np.array_equal(samples.descriptors[:3].view(np.uint32), d.view(np.uint32))  # bit-exact
    assert samples.person_ids.tolist() == [1, 1, 1, 2, 2]
    with sqlite3.connect(tmp_path / "g.db") as db:
        blob, box, quality, source = db.execute(
            "SELECT descriptor, box, quality, source FROM samples WHERE id = 1"
        ).fetchone()
    assert blob == d[0].astype("<f4").tobytes() and len(blob) == 512
    assert json.loads(box) == [1, 2, 3, 4] and json.loads(quality) == {"sharpness": 0.9} and source == "a.jpg"
    assert [(name, kind) for name, _, kind in store.find_image("ab" * 32)] == [("Alice", "positive")] * 3

    store.rename_person("Bob", "Robert")
    store.set_threshold("Robert", 0.45)
    store.set_threshold("Alice", None)
    people = {p.name: p for p in store.people()}
    assert (
        set(people) == {"Alice", "Robert"} and people["Robert"].threshold == 0.45 and people["Alice"].threshold is None
    )
    assert store.remove_person("Alice") == 4
    assert [p.name for p in store.people()] == ["Robert"]
    assert count(tmp_path / "g.db", "SELECT count(*) FROM samples") == 2
    assert store.integrity_check() == []


def test_constraints_and_atomic_batches(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.add_person("Alice")
    with pytest.raises(DuplicatePersonError, match="Alice"):
        store.add_person("Alice")
    for bad in ["", "  ", " Alice", "unknown", "Unknown", "a\nb"]:
        with pytest.raises(ValueError):
            store.add_person(bad)
    with pytest.raises(ValueError, match="threshold"):
        store.add_person("Carol", threshold=0)
    with pytest.raises(ValueError, match=r"\(n,128\)"):
        store.add_samples("Alice", np.zeros((2, 127), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        store.add_samples("Alice", np.full((1, 128), np.nan, np.float32))
    with pytest.raises(UnknownPersonError, match="Nobody"):
        store.add_samples("Nobody", descriptors(1), kind="negative", create=False)
    # A batch naming one unknown person writes nothing at all, not even the rows before it.
    with pytest.raises(UnknownPersonError):
        store.add_samples(["Alice", "Alice", "Ghost"], descriptors(3), create=False)
    assert store.person("Alice").samples == 0
    store.add_person("Bob")
    with pytest.raises(DuplicatePersonError):
        store.rename_person("Bob", "Alice")
    with pytest.raises(UnknownPersonError):
        store.remove_person("Ghost")
    # Samples are immutable (sample ids only grow, which is what refresh relies on).
    store.add_samples("Alice", descriptors(1))
    with sqlite3.connect(tmp_path / "g.db") as db, pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("UPDATE samples SET person_id = 2")
    # No sample without its person, even when deleted behind the store's back.
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("DELETE FROM people WHERE name = 'Alice'")
    assert count(tmp_path / "g.db", "SELECT count(*) FROM samples") == 0


# -- schema, WAL, permissions, revision ---------------------------------------------------------------------


def test_migration_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as db:  # a file as version 1 wrote it
        db.execute("BEGIN")
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        migrate(db, 0, 1)
        db.execute("INSERT INTO people (name, created) VALUES ('Alice', 0)")
        db.execute(
            "INSERT INTO samples (person_id, kind, descriptor, created) VALUES (1, 'positive', ?, 0)",
            (descriptors(1)[0].tobytes(),),
        )
        db.execute("COMMIT")
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 2

    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(path) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "samples_by_image" in indexes  # version 2's step ran
    assert store.person("Alice").samples == 1 and np.array_equal(store.samples().descriptors, descriptors(1))
    store.close()
    Store(path).close()  # opening again migrates nothing
    assert count(path, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "g.db").close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(GalleryError, match=r"g\.db: written by a newer facestream \(schema version 99"):
        Store(tmp_path / "g.db")


def test_files_are_private_and_wal(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a usual umask, which would give 0644
    try:
        gallery = Gallery(tmp_path / "sub" / "g.db")
        gallery.add_samples("Alice", descriptors(3))
        gallery.save_index()
        gallery.export(tmp_path / "export.json")
        names = ["sub/g.db", "sub/g.db-wal", "sub/g.db-shm", "sub/g.db.faiss", "export.json"]
        modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in names}
        gallery.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(names, 0o600)
    with sqlite3.connect(tmp_path / "sub" / "g.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_revision_changes_on_every_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    states = [store.state()]

    def changed(people: bool) -> None:
        state = store.state()
        assert state.revision > states[-1].revision and state.token != states[-1].token
        assert (state.people_revision > states[-1].people_revision) == people
        states.append(state)

    store.add_person("Alice")
    changed(people=True)
    ids = store.add_samples("Alice", descriptors(3))
    changed(people=False)
    store.set_threshold("Alice", 0.5)
    changed(people=True)
    store.remove_samples(ids[:1])
    changed(people=False)
    assert store.removed_since(states[-2].revision).tolist() == [ids[0]]
    # A change made by anyone (here the sqlite3 shell's equivalent) moves the revision too.
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("UPDATE samples SET source = 'x.jpg'")
    changed(people=False)
    store.remove_person("Alice")
    changed(people=True)
    assert sorted(store.removed_since(states[-2].revision).tolist()) == ids[1:].tolist()


# -- processes ------------------------------------------------------------------------------------------------

ENROL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facestream.enroll.gallery import Gallery
    path, tag, batches, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    with Gallery(path, save_index=False, busy_timeout=60) as gallery:
        print("ready", flush=True)
        i = 0
        while batches < 0 or i < batches:
            gallery.add_samples(f"{tag}-{i}", rng.normal(0, 0.1, (size, 128)).astype(np.float32))
            i += 1
            print(i, flush=True)
    """
)


def enrol_process(path: Path, tag: str, batches: int, size: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ENROL_SCRIPT, str(path), tag, str(batches), str(size)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _open_at_once(path: str, barrier: Any, failures: Any) -> None:
    barrier.wait()
    try:
        Store(path, busy_timeout=10).close()
    except GalleryError as error:
        failures.put(str(error))


def test_processes_opening_a_new_gallery_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    """SQLite answers "locked" at once (without waiting) to some of several connections racing to switch a new
    file to WAL and create the schema: without the retry about 1 open in 20 failed. 40 rounds of 3 processes
    would all succeed with that bug only ~2% of the time."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for round_ in range(40):
        barrier = context.Barrier(3)
        path = str(tmp_path / f"new-{round_}.db")
        processes = [context.Process(target=_open_at_once, args=(path, barrier, failures)) for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == []


def test_two_processes_enrol_at_once_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.db"  # both processes race to create it, too
    batches, size = 150, 4
    procs = [enrol_process(path, tag, batches, size) for tag in ("a", "b")]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.split()[-1] == str(batches)
    store = Store(path)
    people = store.people()
    assert len(people) == 2 * batches and all(p.samples == size for p in people)
    assert count(path, "SELECT count(*) FROM samples") == 2 * batches * size
    # Every row change bumped the revision exactly once: nothing was lost or applied twice.
    assert store.revision() == 2 * batches * (1 + size)
    assert store.integrity_check() == []


def test_sigkill_mid_enrolment_leaves_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    size = 300  # big transactions: most of the time is spent inside one
    for delay in (0.0, 0.05, 0.13):
        proc = enrol_process(path, f"k{delay}", -1, size)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        proc.stdout.readline()  # one batch committed
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    store = Store(path)
    assert store.integrity_check() == []
    people = store.people()
    assert len(people) >= 3
    assert all(p.samples == size for p in people), [p.samples for p in people]
    total = count(path, "SELECT count(*) FROM samples")
    assert total == size * len(people)
    assert count(path, "SELECT count(*) FROM samples WHERE person_id NOT IN (SELECT id FROM people)") == 0
    assert store.revision() == len(people) * (1 + size)
    store.close()
    with Gallery(path) as gallery:  # and it opens and answers
        assert len(gallery.index) == total


def test_refresh_sees_another_process(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    gallery = Gallery(path)
    assert gallery.refresh() is False
    proc = enrol_process(path, "other", 3, 5)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert gallery.refresh() is True
    assert len(gallery.index) == 15 and gallery.refresh() is False
    probe = Store(path).samples().descriptors[7:8]
    assert gallery.identify(probe).identities == ["other-1"]
    script = "import sys; from facestream.enroll.store import Store; Store(sys.argv[1]).remove_person('other-1')"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert gallery.refresh() is True
    assert len(gallery.index) == 10
    assert gallery.identify(probe).identities != ["other-1"]
    gallery.close()


# -- bad files -----------------------------------------------------------------------------------------------------


def test_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(GalleryError, match=r"notes\.db: not a SQLite database"):
        Gallery(path)
    assert path.read_bytes() == content

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    before = other.read_bytes()
    with pytest.raises(GalleryError, match=r"other\.db: a SQLite database, but not a facestream gallery"):
        Store(other)
    assert other.read_bytes() == before


def test_corrupt_gallery_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Gallery(path, save_index=False) as gallery:
        gallery.add_samples("Alice", descriptors(200))
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):  # damage every page but the first (the schema)
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match=r"g\.db: the database is corrupt"):
        Gallery(path)


def test_locked_database_gives_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = Store(path, busy_timeout=0.2)
    store.add_person("Alice")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("INSERT INTO people (name, created) VALUES ('Bob', 0)")
    with pytest.raises(GalleryError, match=r"g\.db: the database is locked by another process \(waited up to 0.2 s"):
        store.add_samples("Alice", descriptors(2))
    blocker.execute("COMMIT")
    blocker.close()
    store.add_samples("Alice", descriptors(2))  # the same connection works once the lock is gone
    assert {p.name: p.samples for p in store.people()} == {"Alice": 2, "Bob": 0}


# -- export / import ------------------------------------------------------------------------------------------------


def test_export_import_round_trip_is_exact(tmp_path: Path) -> None:
    source = Gallery(tmp_path / "a.db")
    d = descriptors(5)
    d[0, :4] = [np.float32(1e-45), -0.0, np.float32(np.finfo(np.float32).max), np.float32(0.1)]
    source.add_samples("Alice", d[:3], boxes=[[1, 2, 3, 4]] * 3, quality=[{"q": i} for i in range(3)], sources="x.jpg",
                       metadata={"id": 7})  # fmt: skip
    source.add_samples("Bob", d[3:])
    source.set_threshold("Bob", 0.55)
    source.add_negative("Alice", descriptors(1, 9))
    assert source.export(tmp_path / "out.json") == {"people": 2, "samples": 6}
    document = json.loads((tmp_path / "out.json").read_text())
    assert (document["format"], document["version"]) == ("facestream-gallery", 1)

    target = Gallery(tmp_path / "b.db")
    target.add_samples("Alice", d[:1])  # already there: skipped as an exact duplicate
    assert target.import_file(tmp_path / "out.json") == {"people_added": 1, "samples_added": 5, "duplicates_skipped": 1}

    def content(gallery: Gallery) -> list:
        dumped = gallery.store.dump()
        for person in dumped:
            for sample in person["samples"]:
                sample["descriptor"] = sample["descriptor"].tobytes()
                sample.pop("created")
        return sorted((p["name"], p["threshold"], sorted(s["descriptor"] + s["kind"].encode() for s in p["samples"]))
                      for p in dumped)  # fmt: skip

    assert content(target) == content(source)
    bob = target.store.dump()[1]
    assert bob["name"] == "Bob" and bob["threshold"] == 0.55
    assert target.import_file(tmp_path / "out.json")["duplicates_skipped"] == 6  # idempotent
    assert target.identify(d[3:4]).identities == ["Bob"]
    source.close()

    (tmp_path / "bad.json").write_text('{"format": "facestream-gallery", "version": 1, "people": [{"name": "X",'
                                       ' "samples": [{"descriptor": "AAAA"}]}]}')  # fmt: skip
    with pytest.raises(GalleryError, match=r"bad\.json: malformed export .*3 bytes, not 512"):
        target.import_file(tmp_path / "bad.json")
    good = document["people"][1]
    (tmp_path / "half.json").write_text(json.dumps({**document, "people": [
        {**good, "name": "Carol"}, {**good, "name": "Dave", "samples": [{**good["samples"][0], "kind": "weird"}]}
    ]}))  # fmt: skip
    with pytest.raises(GalleryError, match=r"half\.json: malformed export .*'weird'"):
        target.import_file(tmp_path / "half.json")
    assert "Carol" not in [p.name for p in target.people()]  # one transaction: Carol rolled back with Dave
    (tmp_path / "wrong.json").write_text("[1, 2]")
    with pytest.raises(GalleryError, match="not a facestream gallery export"):
        target.import_file(tmp_path / "wrong.json")
    assert target.people()[0].samples == 3  # nothing half-imported
    target.close()


def test_a_recreated_gallery_never_shows_the_thumbnails_of_the_gallery_it_replaced(tmp_path: Path) -> None:
    """Sample ids restart at 1 in a new database: the old `<gallery>.thumbs/` must not pass for the new one's."""
    path = tmp_path / "gallery.db"
    with Gallery(path) as old:
        (old_id,) = old.add_samples("Old Person", descriptors(1)).tolist()
        old.thumbnails.save(old_id, b"old face")
        assert old.thumbnails.read(old_id) == b"old face"
    with Gallery(path) as reopened:  # the same database: its thumbnails are still shown
        assert reopened.thumbnails.read(old_id) == b"old face"
    for leftover in tmp_path.glob("gallery.db*"):
        if leftover.is_file():
            leftover.unlink()  # the database deleted, its thumbnail folder forgotten
    with Gallery(path) as new:
        (new_id,) = new.add_samples("New Person", descriptors(1, seed=1)).tolist()
        assert new_id == old_id  # the case that matters: the same sample id
        assert new.thumbnails.read(new_id) is None and new.thumbnails.available([new_id]) == []
        new.thumbnails.save(new_id, b"new face")
        (second,) = new.add_samples("New Person", descriptors(1, seed=2)).tolist()
        assert new.thumbnails.read(new_id) == b"new face"
        assert new.thumbnails.read(second) is None  # the old gallery's files were deleted, not adopted
    assert sorted(p.name for p in (tmp_path / "gallery.db.thumbs").iterdir()) == [".gallery", f"{new_id}.png"]


def test_reading_a_missing_gallery_creates_nothing(tmp_path: Path) -> None:
    from facestream.enroll.records import GalleryNotFoundError

    path = tmp_path / "typo" / "gallery.db"
    with pytest.raises(GalleryNotFoundError, match="no such gallery"):
        Gallery(path, create=False)
    assert not (tmp_path / "typo").exists()
    with Gallery(path) as made:  # enrolling creates it
        assert made.store.created
    with Gallery(path, create=False) as opened:
        assert not opened.store.created


def test_a_gallery_on_a_read_only_file_system_can_be_read(tmp_path: Path) -> None:
    """WAL needs a -shm file beside the database; on a read-only mount none can be made (a real bind mount)."""
    source, mount = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    with Gallery(source / "gallery.db") as gallery:
        gallery.add_samples("Alice", descriptors(2))
        gallery.thumbnails.save(1, b"face")
    assert not (source / "gallery.db-shm").exists()
    made = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True)
        with pytest.raises(OSError):
            (mount / "probe").write_text("x")
        with Gallery(mount / "gallery.db", create=False) as gallery:
            assert gallery.store.read_only
            assert [(p.name, p.samples) for p in gallery.people()] == [("Alice", 2)]
            assert list(gallery.identify(descriptors(2)).identities) == ["Alice", "Alice"]
            assert gallery.thumbnails.read(1) == b"face"
            with pytest.raises(GalleryError, match=r"readonly|read-only|cannot write"):
                gallery.add_samples("Bob", descriptors(1, seed=5))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
