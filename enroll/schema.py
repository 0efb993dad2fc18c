"""The gallery file's SQL schema: the migrations that take a file from one schema version to the next, and
`migrate`, which runs them in order (triggers keep the revision counter and the removal log)."""

from __future__ import annotations

import sqlite3
import time

_BUMP = "UPDATE gallery_state SET revision = revision + 1, token = randomblob(8);"
_BUMP_PEOPLE = (
    "UPDATE gallery_state SET revision = revision + 1, people_revision = people_revision + 1, token = randomblob(8);"
)

# MIGRATIONS[i] takes a file from schema version i to version i + 1, as plain SQL run in one
# transaction. Never edit a released step: append a new one.
MIGRATIONS: list[list[str]] = [
    [  # 1: people, samples, the revision counter and its triggers
        "CREATE TABLE gallery_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO gallery_meta VALUES ('uuid', lower(hex(randomblob(16))))",
        "INSERT INTO gallery_meta VALUES ('created', strftime('%s', 'now'))",
        """CREATE TABLE gallery_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            revision INTEGER NOT NULL,         -- +1 on every row change anywhere
            people_revision INTEGER NOT NULL,  -- +1 on every change to people (names, thresholds)
            token BLOB NOT NULL                -- random, renewed with revision: tells apart two histories
        )""",
        "INSERT INTO gallery_state VALUES (1, 0, 0, randomblob(8))",
        """CREATE TABLE people (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
            created REAL NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            threshold REAL CHECK (threshold IS NULL OR threshold > 0)
        )""",
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('positive', 'negative')),
            descriptor BLOB NOT NULL CHECK (typeof(descriptor) = 'blob' AND length(descriptor) = 512),
            source TEXT,
            image_sha256 TEXT,
            box TEXT,                              -- JSON [left, top, right, bottom] or NULL
            quality TEXT NOT NULL DEFAULT '{}',    -- JSON object
            created REAL NOT NULL
        )""",
        "CREATE INDEX samples_by_person ON samples (person_id, kind)",
        "CREATE TABLE removed_samples (sample_id INTEGER NOT NULL, revision INTEGER NOT NULL)",
        "CREATE INDEX removed_samples_by_revision ON removed_samples (revision)",
        f"CREATE TRIGGER people_inserted AFTER INSERT ON people BEGIN {_BUMP_PEOPLE} END",
        f"CREATE TRIGGER people_updated AFTER UPDATE ON people BEGIN {_BUMP_PEOPLE} END",
        f"CREATE TRIGGER people_deleted AFTER DELETE ON people BEGIN {_BUMP_PEOPLE} END",
        f"CREATE TRIGGER samples_inserted AFTER INSERT ON samples BEGIN {_BUMP} END",
        f"CREATE TRIGGER samples_updated AFTER UPDATE ON samples BEGIN {_BUMP} END",
        f"""CREATE TRIGGER samples_deleted AFTER DELETE ON samples BEGIN {_BUMP}
            INSERT INTO removed_samples (sample_id, revision) SELECT OLD.id, revision FROM gallery_state;
        END""",
        """CREATE TRIGGER samples_immutable BEFORE UPDATE OF person_id, kind, descriptor ON samples BEGIN
            SELECT RAISE(ABORT, 'samples are immutable: remove the sample and add a new one');
        END""",
    ],
    [  # 2: find samples by image, so enrolment can skip images it has already seen
        "CREATE INDEX samples_by_image ON samples (image_sha256)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, from_version: int, to_version: int) -> None:
    """Run MIGRATIONS[from_version:to_version] inside the caller's transaction, recording each version."""
    for version in range(from_version, to_version):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version + 1, time.time()))
