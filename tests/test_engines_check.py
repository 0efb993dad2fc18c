"""FP16 before deploying it: the graph rewrites of engines/precision.py and `facestream engines check`.

No GPU here: `engines check` simulates FP16 with ONNX Runtime (input, weights and every node's output
rounded to float16). The rewrite is checked against numpy on a small graph; the FP16-typed graph that
TensorRT builds from is checked with ONNX's strict type inference and run on ONNX Runtime's own FP16
kernels; the command runs on a subset of the bundled data and must keep the bar.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from facestream.engines.embedder import normalize_chips
from facestream.engines.models import model_path
from facestream.engines.onnx_cache import cached_onnx
from facestream.engines.precision import KEEP_FP32, MAX_DESCRIPTOR_DRIFT, fp16_graph, simulate_fp16

from conftest import DATA, GOLDEN, golden_images


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    cache = tmp_path_factory.mktemp("onnx")
    return {kind: onnx.load(str(cached_onnx(model_path(kind, ""), kind, cache))) for kind in ("detector", "embedder")}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _half(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float32)


def _tiny_graph() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(1, 1, 1, 1)).astype(np.float32) * np.float32(1.000123)
    bias = np.array([0.1234567], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights, bias


def test_the_simulation_rounds_the_input_the_weights_and_every_nodes_output_to_float16() -> None:
    """The rule, in numpy: a 1x1 convolution of rounded input by rounded weights (float32 arithmetic), its
    output rounded, ReLU, rounded again. A node kept in FP32 keeps its weights and output unrounded."""
    model, weights, bias = _tiny_graph()
    x = (np.random.default_rng(1).normal(size=(1, 1, 4, 4)) * 3.3333).astype(np.float32)
    conv = _half(x) * _half(weights)[0, 0, 0, 0] + _half(bias)[0]
    expected = _half(np.maximum(_half(conv), 0))
    np.testing.assert_array_equal(_run(simulate_fp16(model), x), expected)
    assert not np.array_equal(expected, _run(model, x))  # the rounding shows
    kept = _half(x) * weights[0, 0, 0, 0] + bias[0]  # conv in FP32 on the rounded input, then ReLU rounded
    np.testing.assert_array_equal(_run(simulate_fp16(model, ["conv"]), x), _half(np.maximum(kept, 0)))
    with pytest.raises(ValueError, match="does not have"):
        simulate_fp16(model, ["no such node"])


@pytest.mark.parametrize("kind", ["detector", "embedder"])
def test_the_fp16_graph_for_tensorrt_is_typed_float16_throughout(graphs: dict, kind: str) -> None:
    model = graphs[kind]
    keep = [model.graph.node[0].name]  # also with an FP32 island
    for keep_fp32 in ([], keep):
        half = fp16_graph(model, keep_fp32)
        onnx.checker.check_model(half, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(half, check_type=True, strict_mode=True)
        assert inferred.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the engine's I/O stays FP32
        assert inferred.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        types = {init.name: init.data_type for init in half.graph.initializer}
        for node in half.graph.node:
            weights = [types[name] for name in node.input if types.get(name) in (TensorProto.FLOAT,
                                                                                 TensorProto.FLOAT16)]  # fmt: skip
            expected = TensorProto.FLOAT if node.name in keep_fp32 else TensorProto.FLOAT16
            assert all(t == expected for t in weights), node.name


def test_the_fp16_embedder_graph_runs_in_half_precision_within_the_bar(graphs: dict) -> None:
    """ONNX Runtime's own FP16 kernels on the graph TensorRT gets (not TensorRT's kernels): within the bar of
    FP32 and close to the simulation."""
    chips = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((GOLDEN / "chips").glob("*.png"))])
    x = normalize_chips(chips)
    model = graphs["embedder"]
    reference = _run(model, x)
    half = _run(fp16_graph(model, KEEP_FP32["embedder"]), x)
    simulated = _run(simulate_fp16(model, KEEP_FP32["embedder"]), x)
    assert half.dtype == np.float32
    assert 0 < np.linalg.norm(half - reference, axis=1).max() < MAX_DESCRIPTOR_DRIFT
    assert 0 < np.linalg.norm(simulated - reference, axis=1).max() < MAX_DESCRIPTOR_DRIFT
    assert np.linalg.norm(half - simulated, axis=1).max() < MAX_DESCRIPTOR_DRIFT


def test_engines_check_fp16_json_on_a_subset_keeps_the_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from facestream.engines.backend import probe_gpu
    from facestream.pipeline.cli.main import main

    if probe_gpu().available:  # pragma: no cover - a GPU machine runs the real engines (make gpu-check)
        pytest.skip("TensorRT runs here: the check would build engines")
    names = ["fr_examples/two_people.jpg", "fr_test_images/obama.jpg"]
    code = main(["engines", "check", "--precision", "fp16", "--json", *(str(DATA / n) for n in names)])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["bar"]["passed"]
    assert record["precision"] == "fp16" and record["mode"].startswith("simulated: ONNX Runtime")
    faces = sum(len(golden_images()[n]["cnn_faces"]) for n in names)  # dlib's count on these images
    detection, embedding = record["detection"], record["embedding"]
    assert detection["faces_fp32"] == detection["faces_candidate"] == detection["matched"] == faces
    assert detection["agree"] and detection["min_iou"] >= 0.99 and 0 < detection["max_score_drift"] < 0.02
    assert embedding["faces"] == faces and embedding["pairs"] == faces * (faces - 1) // 2
    assert 0 < embedding["median_drift"] <= embedding["max_drift"] < MAX_DESCRIPTOR_DRIFT  # moved, within the bar
    assert 0 <= embedding["max_pairwise_change"] < 2 * MAX_DESCRIPTOR_DRIFT and embedding["identities_changed"] == 0
    assert embedding["identities_changed_beyond_parity"] == 0 and embedding["changes"] == []
    assert record["keep_fp32"] == {k: list(v) for k, v in KEEP_FP32.items()} and record["images"] == len(names)


def test_engines_check_refuses_an_unreadable_image(tmp_path: Path) -> None:
    from facestream.pipeline.cli.main import main

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["engines", "check", "--json", str(broken)]) == 2


def test_gpu_check_on_a_machine_without_a_gpu_says_so_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from facestream.engines.backend import probe_gpu

    if probe_gpu().available:  # pragma: no cover
        pytest.skip("this machine has a GPU: make gpu-check runs everything")
    out = tmp_path / "gpu-check.json"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("gpu-check: no usable NVIDIA GPU here, nothing checked: tensorrt is not")
    report = json.loads(out.read_text())
    assert report["gpu"] is False and report["passed"] is False and "steps" not in report
    assert report["versions"]["onnxruntime"] == ort.__version__ and "not importable" in report["versions"]["tensorrt"]
