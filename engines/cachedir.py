"""Where facestream caches built artefacts (ONNX graphs, engines, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$FACESTREAM_CACHE``, else ``$XDG_CACHE_HOME/facestream``, else ``~/.cache/facestream``."""
    root = os.environ.get("FACESTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facestream"
    )
    return Path(root)
