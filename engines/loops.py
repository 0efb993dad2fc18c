"""The compiled loops of the HOG detector, the CNN pyramid and face-chip sampling: C built once per machine
where a C compiler is found, else numba's (and, for chips, numpy's).

The C loops (``csrc/``) follow :mod:`facestream.engines.hog_kernels` and :mod:`facestream.engines.pyramid_kernels`
line for line, so both give dlib's results bit for bit (tests/test_loops.py checks them against each other;
the parity tests run whichever is in use). The point of C is first the start of a process: numba's
import and the loading of its cached machine code cost ~0.9 s before the first face, a shared library
1-2 ms. The library is compiled at first use (``cc``, or ``$CC``; ~2 s) into facestream's cache, keyed by
the sources, the flags and this CPU (``-march=native``), and loaded with ctypes, which releases the GIL
during each call, so pyramid levels still run on several threads at once.

``FACESTREAM_LOOPS`` chooses: ``auto`` (default: C, numba where C cannot be built, with one warning),
``c`` (C or an error) or ``numba``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from facestream.engines.cachedir import default_cache_dir
from facestream.errors import BackendError

__all__ = ["CHOICE_VARIABLE", "CLoops", "Loops", "LoopsBuildError", "build_c_loops", "c_library_path", "loops"]

log = logging.getLogger(__name__)

CHOICE_VARIABLE = "FACESTREAM_LOOPS"
SOURCES = Path(__file__).with_name("csrc")
# No FMA contraction, no fast-math: dlib's float32 operation order. -fno-math-errno only lets sqrtf be the
# instruction (the arguments are never negative). The approximate responses may contract (their docstring).
_COMMON = ("-O3", "-march=native", "-fPIC", "-fno-math-errno")
_STRICT, _CONTRACT = (*_COMMON, "-ffp-contract=off"), (*_COMMON, "-ffp-contract=fast")
_UNITS = (("hog_loops.c", _STRICT), ("hog_responses.c", _CONTRACT), ("pyramid_loops.c", _STRICT),
          ("chip_loops.c", _STRICT))


class LoopsBuildError(BackendError):
    """The C loops could not be compiled or loaded here."""


class Loops(Protocol):
    """The loops :mod:`.hog`, :mod:`.fhog` and :mod:`.pyramid` call, with numba's signatures. (The C library also
    samples face chips, :meth:`CLoops.chip_bilinear`; :mod:`.chips` uses numpy where it is not built.)"""

    kind: str  # "C" or "numba"

    def resize_u8(self, *args: Any) -> None: ...
    def fhog_features_u8(self, *args: Any) -> np.ndarray: ...
    def approximate_responses(self, *args: Any) -> np.ndarray: ...
    def exact_scores(self, *args: Any) -> np.ndarray: ...
    def resize_f32(self, *args: Any) -> np.ndarray: ...
    def normalize_into(self, *args: Any) -> np.ndarray: ...


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            lines = [line for line in info.read(1 << 16).splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(lines[:2])
    except OSError:
        return f"{platform.processor()} {platform.machine()}"


def c_library_path(cache_dir: Path | None = None) -> Path:
    """Where the library for these sources, flags, compiler command and CPU is (or will be) cached."""
    digest = hashlib.sha256()
    for name, flags in _UNITS:
        digest.update(name.encode() + b"\0" + " ".join(flags).encode())
    for source in sorted(SOURCES.glob("*.[ch]")):  # the units and the headers they include
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(" ".join(_compiler()).encode())
    digest.update(_cpu_fingerprint().encode())
    digest.update(platform.machine().encode())
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "loops" / f"loops-{digest.hexdigest()[:16]}.so"


def build_c_loops(target: Path) -> Path:
    """Compile the C loops into ``target`` (written whole by a rename: concurrent builds are harmless)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        objects = []
        for name, flags in _UNITS:
            obj = Path(tmp) / (Path(name).stem + ".o")
            _run([*_compiler(), *flags, "-c", str(SOURCES / name), "-o", str(obj)])
            objects.append(str(obj))
        built = Path(tmp) / target.name
        _run([*_compiler(), "-shared", *objects, "-o", str(built), "-lm"])
        os.replace(built, target)
    return target


def _run(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoopsBuildError(f"{command[0]}: {exc}") from exc
    if done.returncode != 0:
        raise LoopsBuildError(f"{shlex.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")


def _pointer(array: np.ndarray, dtype: type, name: str) -> int:
    """The address of a C-contiguous array of exactly `dtype` (C reads raw memory: nothing is converted)."""
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"{name}: a C-contiguous {np.dtype(dtype).name} array is needed, got {array.dtype} "
                        f"(contiguous: {array.flags.c_contiguous})")  # fmt: skip
    return array.ctypes.data


def _planes_view(array: np.ndarray, dtype: type, name: str) -> tuple[int, int]:
    """Plane and row strides (elements) of a (P, rows, cols) array of `dtype` whose columns are contiguous
    (a window of a larger tensor is fine)."""
    size = np.dtype(dtype).itemsize
    strides = array.strides
    if array.dtype != dtype or array.ndim != 3 or strides[2] != size or min(strides) < 0 or strides[0] % size \
            or strides[1] % size:  # fmt: skip
        raise TypeError(f"{name}: a (planes, rows, columns) {np.dtype(dtype).name} array with contiguous columns "
                        f"is needed, got {array.dtype} {array.shape} strides {strides}")  # fmt: skip
    return strides[0] // size, strides[1] // size


def _plan_fits(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray, n_simd: int, out_h: int,
               out_w: int, h: int, w: int, neighbour: int) -> bool:  # fmt: skip
    """Whether a resize plan reads only inside an (h, w) source (C checks nothing): `neighbour` = 1 where the
    SIMD columns also read the pixel right of `left`."""
    if out_h == 0 or out_w == 0:
        return len(top) >= out_h and len(left) >= out_w
    if len(top) < out_h or len(bottom) < out_h or len(left) < out_w or len(right) < out_w or not 0 <= n_simd <= out_w:
        return False
    rows, cols = np.concatenate([top[:out_h], bottom[:out_h]]), np.concatenate([left[:out_w], right[:out_w]])
    reach = int(left[:n_simd].max()) + neighbour if n_simd else 0
    return bool(rows.min() >= 0 and rows.max() < h and cols.min() >= 0 and cols.max() < w and reach < w)


def _check(status: int) -> None:
    if status == -2:
        raise MemoryError("compiled loops: out of memory")
    if status != 0:
        raise ValueError("resize_u8 takes 1 (grey) or 3 (RGB) channels")


class CLoops:
    """The C library behind numba's signatures."""

    kind = "C"

    def __init__(self, path: Path) -> None:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise LoopsBuildError(f"cannot load {path}: {exc}") from exc
        self.path = path
        p, i = ctypes.c_void_p, ctypes.c_int64
        self._resize = lib.fs_resize_u8
        self._resize.argtypes = [p, i, i, i, p, i, i, p, p, p, p, p, i, p, p, p, p, p]
        self._resize.restype = ctypes.c_int
        self._fhog = lib.fs_fhog_features_u8
        self._fhog.argtypes = [p, i, i, i, i, i, p, p, p, p, p, p, p, p, p]
        self._fhog.restype = ctypes.c_int
        self._approximate = lib.fs_approximate_responses
        self._approximate.argtypes = [p, i, i, p, p, p, p, i, p, i, i, i]
        self._approximate.restype = ctypes.c_int
        self._exact = lib.fs_exact_scores
        self._exact.argtypes = [p, i, i, p, p, p, i, i, i, p, p, i, p]
        self._exact.restype = None
        self._resize_f32 = lib.fs_resize_f32
        self._resize_f32.argtypes = [p, i, i, i, p, i, i, i, i, p, p, p, p, p, i, p, p, p, p]
        self._resize_f32.restype = ctypes.c_int
        self._normalize = lib.fs_normalize_into
        self._normalize.argtypes = [p, i, i, i, p, p, i, i]
        self._normalize.restype = None
        self._chip = lib.fs_chip_bilinear
        self._chip.argtypes = [p, i, i, i, p, p, i, p]
        self._chip.restype = None

    def resize_u8(self, src: np.ndarray, out: np.ndarray, top: np.ndarray, bottom: np.ndarray, tbf: np.ndarray,
                  itbf: np.ndarray, tbd: np.ndarray, n_simd: int, flat_ilr: np.ndarray, flat_lr: np.ndarray,
                  left: np.ndarray, right: np.ndarray, lrd: np.ndarray) -> None:  # fmt: skip
        H, W, C = src.shape
        out_h, out_w, out_c = out.shape
        if out_c != C or not _plan_fits(top, bottom, left, right, n_simd, out_h, out_w, H, W, 1):
            raise ValueError(f"resize_u8: out {out.shape} does not fit src {src.shape} and the row/column plans")
        _check(self._resize(
            _pointer(src, np.uint8, "src"), H, W, C, _pointer(out, np.uint8, "out"), out_h, out_w,
            _pointer(top, np.int64, "top"), _pointer(bottom, np.int64, "bottom"), _pointer(tbf, np.float32, "tbf"),
            _pointer(itbf, np.float32, "itbf"), _pointer(tbd, np.float64, "tbd"), int(n_simd),
            _pointer(flat_ilr, np.float32, "flat_ilr"), _pointer(flat_lr, np.float32, "flat_lr"),
            _pointer(left, np.int64, "left"), _pointer(right, np.int64, "right"), _pointer(lrd, np.float64, "lrd"),
        ))  # fmt: skip

    def fhog_features_u8(self, img: np.ndarray, cells_nr: int, cells_nc: int, bins_lut: np.ndarray,
                         fractions_y: tuple[np.ndarray, np.ndarray, np.ndarray],
                         fractions_x: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:  # fmt: skip
        H, W, C = img.shape
        iy, vy0, vy1 = fractions_y
        ix, vx0, vx1 = fractions_x
        if len(iy) < min(cells_nr * 8, H) or len(ix) < min(cells_nc * 8, W):
            raise ValueError("fhog_features_u8: vote positions shorter than the visible image")
        hist = np.zeros((cells_nr + 2, cells_nc + 2, 18), dtype=np.float32)
        out = np.zeros((31, cells_nr + 7, cells_nc + 7), dtype=np.float32)
        _check(self._fhog(
            _pointer(img, np.uint8, "img"), H, W, C, int(cells_nr), int(cells_nc),
            _pointer(bins_lut, np.uint8, "bins_lut"), _pointer(iy, np.int64, "iy"), _pointer(vy0, np.float32, "vy0"),
            _pointer(vy1, np.float32, "vy1"), _pointer(ix, np.int64, "ix"), _pointer(vx0, np.float32, "vx0"),
            _pointer(vx1, np.float32, "vx1"), hist.ctypes.data, out.ctypes.data,
        ))  # fmt: skip
        return out

    def approximate_responses(self, feats: np.ndarray, planes: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                              starts: np.ndarray, band: int, out: np.ndarray) -> np.ndarray:  # fmt: skip
        _, P, Q = feats.shape
        K, n_r, n_c = out.shape
        if n_r > P - 9 or n_c > Q - 9 or len(starts) < K + 1:
            raise ValueError(f"approximate_responses: out {out.shape} does not fit feats {feats.shape}")
        _check(self._approximate(
            _pointer(feats, np.float32, "feats"), P, Q, _pointer(planes, np.int64, "planes"),
            _pointer(rows, np.float32, "rows"), _pointer(cols, np.float32, "cols"),
            _pointer(starts, np.int64, "starts"), int(band), _pointer(out, np.float32, "out"), K, n_r, n_c,
        ))  # fmt: skip
        return out

    def exact_scores(self, feats: np.ndarray, planes: np.ndarray, rows: np.ndarray, cols: np.ndarray, start: int,
                     stop: int, n_simd: int, cells_r: np.ndarray, cells_c: np.ndarray) -> np.ndarray:  # fmt: skip
        _, P, Q = feats.shape
        n = len(cells_r)
        if len(cells_c) != n:
            raise ValueError("exact_scores: cells_r and cells_c differ in length")
        out = np.empty(n, dtype=np.float64)
        self._exact(
            _pointer(feats, np.float32, "feats"), P, Q, _pointer(planes, np.int64, "planes"),
            _pointer(rows, np.float32, "rows"), _pointer(cols, np.float32, "cols"), int(start), int(stop),
            int(n_simd), _pointer(cells_r, np.int64, "cells_r"), _pointer(cells_c, np.int64, "cells_c"), n,
            out.ctypes.data,
        )  # fmt: skip
        return out


    def resize_f32(self, src: np.ndarray, out: np.ndarray, top: np.ndarray, bottom: np.ndarray, tbf: np.ndarray,
                   itbf: np.ndarray, tbd: np.ndarray, n_simd: int, left: np.ndarray, right: np.ndarray,
                   ilr: np.ndarray, lr: np.ndarray) -> np.ndarray:  # fmt: skip
        P, h, w = src.shape
        p_out, out_h, out_w = out.shape
        if p_out != P or not _plan_fits(top, bottom, left, right, n_simd, out_h, out_w, h, w, 0):
            raise ValueError(f"resize_f32: out {out.shape} does not fit src {src.shape} and the row/column plans")
        src_plane, src_row = _planes_view(src, np.float32, "src")
        out_plane, out_row = _planes_view(out, np.float32, "out")
        _check(self._resize_f32(
            src.ctypes.data, P, src_plane, src_row, out.ctypes.data, out_h, out_w, out_plane, out_row,
            _pointer(top, np.int64, "top"), _pointer(bottom, np.int64, "bottom"), _pointer(tbf, np.float32, "tbf"),
            _pointer(itbf, np.float32, "itbf"), _pointer(tbd, np.float64, "tbd"), int(n_simd),
            _pointer(left, np.int64, "left"), _pointer(right, np.int64, "right"), _pointer(ilr, np.float32, "ilr"),
            _pointer(lr, np.float32, "lr"),
        ))  # fmt: skip
        return out

    def normalize_into(self, images: np.ndarray, means: np.ndarray, out: np.ndarray) -> np.ndarray:
        n, h, w, c = images.shape
        if c != 3 or out.shape != (3 * n, h, w) or len(means) != 3:
            raise ValueError(f"normalize_into: images {images.shape} do not fit out {out.shape}")
        out_plane, out_row = _planes_view(out, np.float32, "out")
        self._normalize(_pointer(images, np.uint8, "images"), n, h, w, _pointer(means, np.float32, "means"),
                        out.ctypes.data, out_plane, out_row)  # fmt: skip
        return out


    def chip_bilinear(self, src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """:func:`facestream.engines.chips._bilinear` (the reference): `src` (H, W, C) uint8 at float points
        `x`, `y` (same shape S) -> (*S, C) uint8."""
        if src.dtype != np.uint8 or src.ndim != 3:
            raise TypeError(f"chip_bilinear: an (H, W, C) uint8 image is needed, got {src.dtype} {src.shape}")
        src = np.ascontiguousarray(src)
        h, w, c = src.shape
        xs = np.ascontiguousarray(x, dtype=np.float64)
        ys = np.ascontiguousarray(y, dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"chip_bilinear: x {xs.shape} and y {ys.shape} differ")
        out = np.empty((*xs.shape, c), dtype=np.uint8)
        self._chip(src.ctypes.data, h, w, c, xs.ctypes.data, ys.ctypes.data, xs.size, out.ctypes.data)
        return out


def load_c_loops(cache_dir: Path | None = None) -> CLoops:
    """The C loops from the cache, compiled first if they are not there yet."""
    path = c_library_path(cache_dir)
    if not path.exists():
        log.info("compiling facestream's C loops into %s (once per machine)", path.parent)
        try:
            build_c_loops(path)
        except OSError as exc:  # an unwritable cache folder
            raise LoopsBuildError(f"cannot write {path.parent}: {exc}") from exc
    return CLoops(path)


def _numba_loops() -> Loops:
    from facestream.engines import hog_kernels, pyramid_kernels

    return SimpleNamespace(
        resize_u8=hog_kernels.resize_u8, fhog_features_u8=hog_kernels.fhog_features_u8,
        approximate_responses=hog_kernels.approximate_responses, exact_scores=hog_kernels.exact_scores,
        resize_f32=pyramid_kernels.resize_f32, normalize_into=pyramid_kernels.normalize_into, kind="numba",
    )  # type: ignore[return-value]


@cache
def loops() -> Loops:
    """The loops this process uses (chosen once; see the module's docstring)."""
    choice = os.environ.get(CHOICE_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in ("auto", "c", "numba"):
        raise ValueError(f"{CHOICE_VARIABLE}={choice!r}: use auto, c or numba")
    if choice == "numba":
        return _numba_loops()
    try:
        return load_c_loops()
    except LoopsBuildError as exc:
        if choice == "c":
            raise
        log.warning("compiled loops: no C build (%s); using numba's (~1 s more at start)", exc)
        return _numba_loops()
