"""Shared pieces of the benchmarks: timing, FLOP counting from ONNX graphs, the machine's peak."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


def best_time(function: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """The fastest of `repeats` runs (after one warm-up): the least noisy figure on a shared machine."""
    function()
    times = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def graph_flops(onnx_path: str, input_shape: tuple[int, ...]) -> float:
    """Floating-point operations (2 per multiply-add) of Conv and Gemm nodes for one input shape: the network's
    own work, so a conv's all-zero filters and input channels (the detector's channels widened to ONNX
    Runtime's blocks, its last conv's padded row sums) are not counted."""
    model = onnx.load(onnx_path)
    graph_input = model.graph.input[0]
    for dim, value in zip(graph_input.type.tensor_type.shape.dim, input_shape):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    }
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    arrays = {init.name: init for init in model.graph.initializer}
    total = 0.0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            _, _, kh, kw = weights[node.input[1]]
            nonzero = numpy_helper.to_array(arrays[node.input[1]]) != 0
            f, c = int(nonzero.any(axis=(1, 2, 3)).sum()), int(nonzero.any(axis=(0, 2, 3)).sum())
            total += 2.0 * f * c * kh * kw * out[2] * out[3] * out[0]
        elif node.op_type == "Gemm":
            k, n = weights[node.input[1]]
            total += 2.0 * k * n * input_shape[0]
    return total


def peak_gflops(seconds: float = 1.0) -> float:
    """A measured ceiling: float32 matrix product (2048^2) in numpy, all cores."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    run = best_time(lambda: a @ a, repeats=3, min_seconds=seconds)
    return 2 * 2048**3 / run / 1e9


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
    }


def emit(result: dict, as_json: bool, table: list[str]) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(table))
