"""One inference interface, two backends: ONNX Runtime on the CPU (default), TensorRT on NVIDIA GPUs.

A backend session takes one float32 NCHW array and returns the graph's single output. The
TensorRT backend lives in `engines/tensorrt_backend.py` and is only imported when asked for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class InferenceSession(Protocol):
    """One network on one backend; `close()` releases what it holds (device memory, the CUDA context)."""

    backend: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class OnnxRuntimeSession:
    """ONNX Runtime on the CPU. `threads` = 0 lets ONNX Runtime use every core."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.onnx_path = Path(onnx_path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        """Nothing outlives the process here; dropping the session frees its memory now."""
        self.session = None

    def __enter__(self) -> OnnxRuntimeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
