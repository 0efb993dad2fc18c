"""File digests remembered across processes (engines/digests.py): used only while the file is unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from facestream.engines.digests import file_sha256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_remembered_digest_is_used_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    cache, model = tmp_path / "cache", tmp_path / "model.dat"
    model.write_bytes(b"first version")
    assert file_sha256(model, cache) == sha(b"first version")
    (memo,) = (cache / "digests").iterdir()

    # The memo is what answers while size, mtime, inode and device match: a planted digest comes back ...
    stamp = memo.read_text().rsplit(" ", 1)[0]
    memo.write_text(f"{stamp} {'0' * 64}\n")
    assert file_sha256(model, cache) == "0" * 64
    # ... and any change to the file makes it hash again: same size, new bytes, new mtime
    model.write_bytes(b"other version")
    os.utime(model, ns=(os.stat(model).st_atime_ns, os.stat(model).st_mtime_ns + 1_000_000))
    assert file_sha256(model, cache) == sha(b"other version")
    # a truncation
    model.write_bytes(b"short")
    assert file_sha256(model, cache) == sha(b"short")


def test_an_unreadable_memo_or_cache_folder_costs_time_not_correctness(tmp_path: Path) -> None:
    model = tmp_path / "model.dat"
    model.write_bytes(b"bytes")
    assert file_sha256(model, None) == sha(b"bytes")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    assert file_sha256(model, blocked) == sha(b"bytes")
    cache = tmp_path / "cache"
    file_sha256(model, cache)
    (memo,) = (cache / "digests").iterdir()
    memo.write_bytes(b"\xff\xfe garbage")
    assert file_sha256(model, cache) == sha(b"bytes")
