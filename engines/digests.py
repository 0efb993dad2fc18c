"""sha256 of model files and cached artefacts, remembered across processes.

Caches are keyed by a model file's sha256, and cached graphs are checked against theirs: hashing the
embedder's 22 MB file and its 22 MB graph took ~45 ms of every process's start. A file's digest is kept in
``<cache>/digests/`` with the file's size, modification time (ns), inode and device, and used again only
while all four are unchanged; any change (a rewrite, a truncation, a replacement) means hashing again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["file_sha256", "hash_file"]


def hash_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, cache_dir: Path | None) -> str:
    """The hex sha256 of `path`, from the memo in `cache_dir` while the file is unchanged (None: always hash).
    Raises OSError if the file cannot be read."""
    if cache_dir is None:
        return hash_file(path)
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_dev}"
    memo = Path(cache_dir) / "digests" / hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    try:
        saved_stamp, saved_digest = memo.read_text(encoding="ascii").rsplit(" ", 1)
        if saved_stamp == stamp and len(saved_digest.strip()) == 64:
            return saved_digest.strip()
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    digest = hash_file(real)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=memo.parent, suffix=".tmp", delete=False, encoding="ascii") as out:
            out.write(f"{stamp} {digest}\n")
        os.replace(out.name, memo)
    except OSError:
        pass  # a read-only or full cache folder costs time, not correctness
    return digest
