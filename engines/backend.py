"""Which inference backend runs the networks, and the sessions it makes.

`engine.backend` in config.yaml: ``onnxruntime`` (CPU, always available), ``tensorrt`` (NVIDIA GPU;
an error when it cannot run) or ``auto`` (TensorRT when tensorrt and pycuda import and a CUDA device
is present, else ONNX Runtime; the choice and the reason are logged). Everything here but the
TensorRT session itself runs without a GPU and is tested without one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendError
from .gpu_probe import GpuProbe, probe_gpu
from .runtime import InferenceSession, OnnxRuntimeSession

if TYPE_CHECKING:
    from ..pipeline.config import EngineConfig

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt" | "onnxruntime"
    reason: str
    probe: GpuProbe | None = None


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


_announced: set[str] = set()


def make_session(
    onnx_path: str | Path, kind: str, engine: EngineConfig | None, cache_dir: str | Path | None, threads: int = 0,
    max_batch: int | None = None, probe: Callable[[], GpuProbe] = probe_gpu,
) -> InferenceSession:  # fmt: skip
    """An inference session for one of the two networks ("detector" | "embedder") on the configured backend."""
    if engine is None:
        return OnnxRuntimeSession(onnx_path, threads=threads)
    choice = choose_backend(engine.backend, probe)
    if choice.reason not in _announced:  # once per process: workers log it at start
        _announced.add(choice.reason)
        # The CPU without TensorRT installed is the ordinary case: said only with -v. A GPU in use, or a
        # TensorRT install that cannot run, is worth a line.
        quiet = choice.name == "onnxruntime" and (choice.probe is None or "is not installed" in choice.reason)
        log.log(logging.DEBUG if quiet else logging.INFO, "%s: %s (%s)", kind, choice.name, choice.reason)
    if choice.name == "onnxruntime":
        return OnnxRuntimeSession(onnx_path, threads=threads)
    from .precision import resolve_precision
    from .tensorrt_backend import TensorRTSession, profile_for

    assert choice.probe is not None
    return TensorRTSession(
        onnx_path,
        kind,
        profile_for(kind, engine, max_batch),
        precision=resolve_precision(kind, engine.precision),
        cache_dir=cache_dir,
        workspace_mb=engine.workspace_mb,
        probe=choice.probe,
    )
