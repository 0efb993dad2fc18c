"""The on-disk cache of exported ONNX graphs, keyed by the dlib model file's sha256.

A hit costs two file digests (remembered while the files are unchanged: :mod:`.digests`) and no `onnx`
import (importing onnx and running its checker took seconds of every command's start-up): each cache file
has a ``.sha256`` beside it, written after the file itself, and a file whose bytes do not match it
(truncated, corrupt, an interrupted write) is rebuilt. Building imports `onnx_export`, which needs onnx.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .cachedir import default_cache_dir
from .digests import file_sha256

# Bump when a graph changes: old cache files are then ignored. 2: the detector's channels widened to NCHWc
# blocks, its last conv as row sums; 3: those nodes named (`onnx_export.score_node_names`).
EXPORT_VERSION = 3
KINDS = ("detector", "embedder")


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as handle:
        handle.write(data)
        temporary = handle.name
    os.replace(temporary, target)


def cached_onnx(
    model_path: str | Path, kind: str, cache_dir: str | Path | None = None, fold_affine: bool = True
) -> Path:
    """The ONNX file for a dlib model (`kind`: detector or embedder), built on first use and cached."""
    if kind not in KINDS:
        raise ValueError(f"unknown network {kind!r}; expected one of {', '.join(KINDS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = file_sha256(model_path, cache)
    suffix = "" if fold_affine else "-unfolded"
    target = cache / f"{kind}-{digest[:16]}-v{EXPORT_VERSION}{suffix}.onnx"
    stamp = target.with_name(target.name + ".sha256")
    try:
        if target.is_file() and stamp.read_text(encoding="ascii").strip() == file_sha256(target, cache):
            return target
    except (OSError, UnicodeDecodeError):
        pass  # no stamp, or unreadable: rebuild
    from .onnx_export import build_onnx  # imports onnx: only when a graph must be built

    data = build_onnx(model_path, kind, digest, fold_affine)
    cache.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, data)
    _write_atomically(stamp, (hashlib.sha256(data).hexdigest() + "\n").encode("ascii"))
    return target
