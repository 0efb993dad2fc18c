"""Which inference backend runs the networks, and the sessions it makes.

`engine.backend` in config.yaml: ``onnxruntime`` (CPU, always available), ``tensorrt`` (NVIDIA GPU;
an error when it cannot run) or ``auto`` (TensorRT when tensorrt and pycuda import and a CUDA device
is present, else ONNX Runtime; the choice and the reason are logged). Everything here but the
TensorRT session itself runs without a GPU and is tested in CI.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime import InferenceSession, OnnxRuntimeSession

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
# pycuda ships as source only: without the CUDA toolkit it neither installs nor imports.
PYCUDA_HINT = (
    "pycuda builds from source against the CUDA toolkit (nvcc and cuda.h; a wheel-only TensorRT install "
    "lacks them): install the CUDA toolkit matching the driver, put its bin/ on PATH, then `pip install pycuda`"
)


class BackendError(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers TensorRT: `available` and, when not, why."""

    available: bool
    reason: str
    device_name: str = ""
    compute_capability: tuple[int, int] = (0, 0)
    tensorrt_version: str = ""


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt" | "onnxruntime"
    reason: str
    probe: GpuProbe | None = None


def probe_gpu(importer: Callable[[str], Any] = importlib.import_module) -> GpuProbe:
    """Can TensorRT run here? Imports tensorrt and pycuda and asks the CUDA driver for device 0."""
    try:
        trt = importer("tensorrt")
    except Exception as error:  # ImportError, or a broken install raising anything at import
        return GpuProbe(False, f"tensorrt is not installed ({type(error).__name__}: {error})")
    try:
        cuda = importer("pycuda.driver")
    except Exception as error:
        return GpuProbe(False, f"pycuda is not installed ({type(error).__name__}: {error}); {PYCUDA_HINT}")
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as error:  # no driver, no device node, ...
        return GpuProbe(False, f"the CUDA driver cannot be used ({type(error).__name__}: {error})")
    if count < 1:
        return GpuProbe(False, "no CUDA device is present")
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    version = str(getattr(trt, "__version__", "unknown"))
    return GpuProbe(True, f"CUDA device 0: {device.name()} (sm_{major}{minor}), TensorRT {version}",
                    device.name(), (int(major), int(minor)), version)  # fmt: skip


def choose_backend(requested: str, probe: Callable[[], GpuProbe] = probe_gpu) -> BackendChoice:
    """The backend `engine.backend` resolves to on this machine. BackendError for "tensorrt" that cannot run."""
    if requested not in BACKENDS:
        raise BackendError(f"engine.backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "engine.backend is onnxruntime")
    found = probe()
    if found.available:
        return BackendChoice("tensorrt", found.reason, found)
    if requested == "tensorrt":
        raise BackendError(f"engine.backend is tensorrt but TensorRT cannot run here: {found.reason}")
    return BackendChoice("onnxruntime", f"auto: {found.reason}; using ONNX Runtime on the CPU", found)


def close_gpu_sessions() -> int:
    """Close every TensorRT session this process still holds (CLI commands and stages call it on the way
    out); how many there were. Nothing to do, and nothing imported, when TensorRT was never used."""
    module = sys.modules.get(f"{__package__}.tensorrt_backend")
    return module.close_all_sessions() if module is not None else 0


def is_configuration_error(error: BaseException) -> bool:
    """A backend that cannot run here or an engine that cannot be built: a setup problem, not a crash."""
    if isinstance(error, BackendError):
        return True
    module = sys.modules.get(f"{__package__}.tensorrt_backend")
    return module is not None and isinstance(error, module.EngineError)


_announced: set[tuple[str, str]] = set()


def make_session(
    onnx_path: str | Path, kind: str, engine: dict[str, Any] | None, cache_dir: str | Path | None, threads: int = 0,
    max_batch: int | None = None, probe: Callable[[], GpuProbe] = probe_gpu,
) -> InferenceSession:  # fmt: skip
    """An inference session for one of the two networks ("detector" | "embedder") on the configured backend."""
    engine = engine or {}
    choice = choose_backend(str(engine.get("backend", "onnxruntime")), probe)
    if (kind, choice.reason) not in _announced:  # once per process and network: workers log it at start
        _announced.add((kind, choice.reason))
        log.info("%s: %s (%s)", kind, choice.name, choice.reason)
    if choice.name == "onnxruntime":
        return OnnxRuntimeSession(onnx_path, threads=threads)
    from .precision import resolve_precision
    from .tensorrt_backend import TensorRTSession, profile_for

    assert choice.probe is not None
    return TensorRTSession(
        onnx_path,
        kind,
        profile_for(kind, engine, max_batch),
        precision=resolve_precision(kind, str(engine.get("precision", "auto"))),
        cache_dir=cache_dir,
        workspace_mb=int(engine.get("workspace_mb", 1024)),
        probe=choice.probe,
    )
