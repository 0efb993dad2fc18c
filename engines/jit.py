"""numba for the engines' compiled loops: one place that points numba's on-disk cache at facestream's cache folder.

Compiled code is cached (``cache=True``) under ``<cache>/numba`` (see
:func:`facestream.engines.cachedir.default_cache_dir`) unless ``NUMBA_CACHE_DIR`` is set, so a new process loads
machine code instead of compiling it. Loops are compiled without ``fastmath`` (no FMA contraction or
reassociation: results stay bit-identical to dlib's), serial and ``nogil``.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable
from typing import Any

from facestream.engines.cachedir import default_cache_dir

if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = str(default_cache_dir() / "numba")

import numba  # after the cache folder is set

if os.environ["NUMBA_CACHE_DIR"] != numba.config.CACHE_DIR:  # numba was imported earlier by someone else
    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

# At exit, Python's last garbage collections walk every object alive, and numba's compiler state is ~100k of
# them: ~0.5 s added to every process that ran a kernel. Freezing them when the interpreter starts shutting
# down (atexit runs before the module teardown) skips that walk; objects are still released by reference
# count as modules are cleared. What it forgoes, running __del__ of cyclic garbage left at exit, Python does
# not promise either (objects still existing at exit need not be finalised).
atexit.register(gc.freeze)


def compiled() -> Callable[[Callable[..., Any]], Any]:
    """The engines' ``numba.njit`` settings: cached on disk, GIL released, no bounds checks, numpy errors."""
    return numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
