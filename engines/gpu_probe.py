"""Can TensorRT run on this machine? (`probe_gpu`; shared by the backend choice and the TensorRT backend.)"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# pycuda ships as source only: without the CUDA toolkit it neither installs nor imports.
PYCUDA_HINT = (
    "pycuda builds from source against the CUDA toolkit (nvcc and cuda.h; a wheel-only TensorRT install "
    "lacks them): install the CUDA toolkit matching the driver, put its bin/ on PATH, then `pip install pycuda`"
)


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers TensorRT: `available` and, when not, why."""

    available: bool
    reason: str
    device_name: str = ""
    compute_capability: tuple[int, int] = (0, 0)
    tensorrt_version: str = ""


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
