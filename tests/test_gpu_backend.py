"""The GPU path: backend choice, TensorRT profiles and engine cache, ONNX graphs TensorRT can parse, faiss-gpu.

Without a GPU, everything that needs no device runs for real. Where TensorRT or pycuda would be
asked a question this machine cannot answer (is there a device? build an engine), a stand-in module or
builder answers, and the test says so. The tests marked `gpu` compare TensorRT with ONNX Runtime on the
data pack and are skipped, with the reason, where TensorRT cannot run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import gpu_stand_ins
import numpy as np
import onnx
import pytest

from facestream.engines import backend as backend_module
from facestream.engines import tensorrt_backend as trt_backend
from facestream.engines.backend import BackendError, GpuProbe, choose_backend, make_session, probe_gpu
from facestream.engines.models import model_path
from facestream.engines.onnx_cache import cached_onnx
from facestream.engines.runtime import OnnxRuntimeSession
from facestream.engines.tensorrt_backend import (
    TENSORRT_MAX_OPSET,
    TENSORRT_ONNX_OPS,
    Profile,
    cached_engine,
    decode_engine_file,
    encode_engine_file,
    engine_key,
    engine_metadata,
    engine_path,
    profile_for,
)
from facestream.enroll.index import GPU_MAX_SELECTION_K, FaceIndex, faiss_gpu_status, gpu_mode
from facestream.pipeline.config import EmbedderConfig, EngineConfig, load_config

GPU = GpuProbe(True, "stand-in", "NVIDIA A10", (8, 6), "10.3.0")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("onnx")
    return {kind: cached_onnx(model_path(kind, ""), kind, cache) for kind in ("detector", "embedder")}


# ------------------------------------------------------------------------------------------------
# backend choice


def test_this_machine_falls_back_to_onnxruntime_and_says_why() -> None:
    found = probe_gpu()
    if found.available:  # pragma: no cover - a GPU machine runs the gpu tests below instead
        pytest.skip("this machine has TensorRT and a GPU")
    choice = choose_backend("auto")
    assert choice.name == "onnxruntime" and choice.reason.startswith("auto: ") and found.reason in choice.reason
    with pytest.raises(BackendError, match=r"engine\.backend is tensorrt but TensorRT cannot run here"):
        choose_backend("tensorrt")
    assert choose_backend("onnxruntime").name == "onnxruntime"
    with pytest.raises(BackendError, match="must be one of auto, tensorrt, onnxruntime"):
        choose_backend("cuda")


def stand_in_modules(*, trt: bool = True, pycuda: bool = True, init_error: bool = False, devices: int = 1):
    """An importer answering for `tensorrt` and `pycuda.driver` as an installed stack would (no GPU here)."""

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return devices

        def name(self) -> str:
            return "NVIDIA A10"

        def compute_capability(self) -> tuple[int, int]:
            return 8, 6

    def init() -> None:
        if init_error:
            raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    modules = {"tensorrt": types.SimpleNamespace(__version__="10.3.0"),
               "pycuda.driver": types.SimpleNamespace(init=init, Device=Device)}  # fmt: skip

    def importer(name: str) -> object:
        if (name == "tensorrt" and not trt) or (name == "pycuda.driver" and not pycuda):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return modules[name]

    return importer


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"trt": False}, "tensorrt is not installed"),
        ({"pycuda": False}, "pycuda is not installed"),
        ({"init_error": True}, "the CUDA driver cannot be used (RuntimeError: cuInit failed"),
        ({"devices": 0}, "no CUDA device is present"),
    ],
)
def test_auto_uses_onnxruntime_when_any_part_of_the_gpu_stack_is_missing(options: dict, reason: str) -> None:
    found = probe_gpu(stand_in_modules(**options))
    assert not found.available and found.reason.startswith(reason)
    choice = choose_backend("auto", lambda: found)
    assert choice.name == "onnxruntime" and reason in choice.reason
    with pytest.raises(BackendError, match=reason.split(" (")[0]):
        choose_backend("tensorrt", lambda: found)


def test_auto_uses_tensorrt_when_the_stack_and_a_device_are_there() -> None:
    found = probe_gpu(stand_in_modules())
    assert found == GpuProbe(True, "CUDA device 0: NVIDIA A10 (sm_86), TensorRT 10.3.0", "NVIDIA A10", (8, 6), "10.3.0")
    assert choose_backend("auto", lambda: found).name == "tensorrt"
    assert choose_backend("onnxruntime", lambda: found).name == "onnxruntime"  # asked for: never overridden


def test_sessions_follow_the_config(onnx_files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="facestream.engines.backend")
    backend_module._announced.clear()
    session = make_session(onnx_files["embedder"], "embedder", EngineConfig(), None, threads=1)
    assert isinstance(session, OnnxRuntimeSession)
    assert "embedder: onnxruntime (auto: " in caplog.text  # the choice and the reason
    assert [r.levelname for r in caplog.records] == ["DEBUG"]  # no TensorRT installed: the ordinary CPU case
    make_session(onnx_files["detector"], "detector", EngineConfig(), None, threads=1)
    assert len(caplog.records) == 1  # once per process, not once per network
    chips = np.zeros((2, 3, 150, 150), np.float32)
    assert session.run(chips).shape == (2, 128)


# ------------------------------------------------------------------------------------------------
# profiles, cache keys, engine files


def test_profiles_from_the_config() -> None:
    engine = EngineConfig()
    embedder = profile_for("embedder", engine, EmbedderConfig().max_batch)
    assert (embedder.input_name, embedder.min_shape, embedder.opt_shape, embedder.max_shape) == (
        "chips", (1, 3, 150, 150), (16, 3, 150, 150), (32, 3, 150, 150))  # fmt: skip
    detector = profile_for("detector", engine)
    assert detector.input_name == "pyramid"
    assert (detector.min_shape, detector.opt_shape, detector.max_shape) == (
        (1, 3, 32, 32), (1, 3, 2645, 1304), (1, 3, 5230, 2584))  # fmt: skip
    assert detector.accepts((1, 3, 2645, 1304)) and not detector.accepts((1, 3, 7814, 3864))  # 1080p at upsample 1
    assert not detector.accepts((2, 3, 64, 64)) and not embedder.accepts((1, 3, 150))
    assert profile_for("embedder", engine, 1).opt_shape == (1, 3, 150, 150)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_for("detector", dataclasses.replace(engine, detector_opt_hw=[6000, 1304]))
    with pytest.raises(ValueError, match="height, width"):
        profile_for("detector", dataclasses.replace(engine, detector_max_hw=[5230]))
    with pytest.raises(ValueError, match="unknown network"):
        profile_for("landmarks", engine)


def test_the_profile_covers_the_pyramids_of_the_frames_it_claims_to() -> None:
    """The opt and max shapes are the tiled pyramids of 640x360 at upsample 1 and 720p at upsample 1."""
    from facestream.engines import pyramid
    from facestream.engines.dlib_format import read_mmod_detector

    model = read_mmod_detector(model_path("detector", ""))
    padding, outer = model.input.padding, model.input.outer_padding

    def tensor_hw(height: int, width: int, upsample: int) -> tuple[int, int]:
        for _ in range(upsample):
            height, width = pyramid.pyramid_up_size(height, width)
        rows, cols, _ = pyramid.tiled_pyramid_layout(height, width, padding, outer)
        return rows, cols

    detector = profile_for("detector", EngineConfig())
    assert (1, 3, *tensor_hw(360, 640, 1)) == detector.opt_shape
    assert (1, 3, *tensor_hw(720, 1280, 1)) == detector.max_shape
    assert detector.accepts((1, 3, *tensor_hw(1080, 1920, 0)))
    assert not detector.accepts((1, 3, *tensor_hw(1080, 1920, 1)))  # runs on ONNX Runtime, with a warning


def test_the_cache_key_changes_with_everything_an_engine_depends_on() -> None:
    profile = profile_for("embedder", EngineConfig(), 32)
    base = engine_metadata("ab" * 32, GPU, "fp16", profile)
    variants = [
        engine_metadata("cd" * 32, GPU, "fp16", profile),  # another graph
        engine_metadata("ab" * 32, GpuProbe(True, "", "NVIDIA A10", (8, 6), "8.6.1"), "fp16", profile),
        engine_metadata("ab" * 32, GpuProbe(True, "", "NVIDIA T4", (7, 5), "10.3.0"), "fp16", profile),
        engine_metadata("ab" * 32, GpuProbe(True, "", "NVIDIA A10", (8, 9), "10.3.0"), "fp16", profile),
        engine_metadata("ab" * 32, GPU, "fp32", profile),
        engine_metadata("ab" * 32, GPU, "fp16", profile_for("embedder", EngineConfig(), 64)),
    ]
    keys = {engine_key(m) for m in [base, *variants]}
    assert len(keys) == 1 + len(variants)
    assert engine_key(copy.deepcopy(base)) == engine_key(base)  # stable
    path = engine_path("/cache", "embedder", base)
    assert path.parent == Path("/cache/tensorrt") and path.name.startswith("embedder-fp16-")
    with pytest.raises(ValueError, match="precision"):
        engine_metadata("ab" * 32, GPU, "int8", profile)


def test_a_stale_foreign_or_damaged_engine_file_is_never_loaded() -> None:
    profile = profile_for("embedder", EngineConfig(), 32)
    metadata = engine_metadata("ab" * 32, GPU, "fp16", profile)
    data = encode_engine_file(metadata, b"\x01serialized engine")
    assert decode_engine_file(data, metadata) == (b"\x01serialized engine", "")
    other_gpu = engine_metadata("ab" * 32, GpuProbe(True, "", "NVIDIA T4", (7, 5), "10.3.0"), "fp16", profile)
    engine, why = decode_engine_file(data, other_gpu)
    assert engine is None and why == "built for another compute_capability, gpu"
    newer_graph = engine_metadata("cd" * 32, GPU, "fp16", profile)
    assert decode_engine_file(data, newer_graph) == (None, "built for another onnx_sha256")
    assert decode_engine_file(b"plan bytes from trtexec", metadata) == (None, "not a facestream engine file")
    assert decode_engine_file(data[:12], metadata) == (None, "truncated header")
    assert decode_engine_file(data[: len(data) - len(b"\x01serialized engine")], metadata) == (
        None, "no engine after the header")  # fmt: skip
    corrupt = data[:12] + b"{" + data[13:]  # the JSON header broken after its opening brace
    assert decode_engine_file(corrupt, metadata)[1] == "corrupt header"


def test_the_engine_cache_loads_what_matches_and_rebuilds_the_rest(
    onnx_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT's builder cannot run here: a stand-in records each build. The cache logic around it is real."""
    builds: list[tuple[str, str]] = []

    def fake_build(onnx_path: Path, profile: Profile, precision: str, workspace_mb: int = 1024, keep=()) -> bytes:
        builds.append((Path(onnx_path).name, precision))
        return f"engine {len(builds)}".encode()

    monkeypatch.setattr(trt_backend, "build_engine", fake_build)
    profile = profile_for("embedder", EngineConfig(), 32)
    onnx_path = onnx_files["embedder"]
    engine, path, built = cached_engine(onnx_path, "embedder", profile, "fp16", GPU, tmp_path)
    assert (engine, built, len(builds)) == (b"engine 1", True, 1) and path.exists()
    engine, again, built = cached_engine(onnx_path, "embedder", profile, "fp16", GPU, tmp_path)
    assert (engine, again, built, len(builds)) == (b"engine 1", path, False, 1)  # loaded, not rebuilt
    # Another GPU model: its own file; FP32: its own file.
    t4 = GpuProbe(True, "", "NVIDIA T4", (7, 5), "10.3.0")
    assert cached_engine(onnx_path, "embedder", profile, "fp16", t4, tmp_path)[2]
    assert cached_engine(onnx_path, "embedder", profile, "fp32", GPU, tmp_path)[2]
    assert len(builds) == 3 and len(list((tmp_path / "tensorrt").glob("*.engine"))) == 3
    # A file someone copied over from another machine (same name, foreign header) is rebuilt, not loaded.
    foreign = engine_metadata(trt_backend.sha256_file(onnx_path), t4, "fp16", profile)
    path.write_bytes(encode_engine_file(foreign, b"foreign engine"))
    engine, _, built = cached_engine(onnx_path, "embedder", profile, "fp16", GPU, tmp_path)
    assert built and engine == b"engine 4"
    path.write_bytes(b"\x00" * 10)  # damaged
    assert cached_engine(onnx_path, "embedder", profile, "fp16", GPU, tmp_path)[2] and len(builds) == 5


_BUILDER = """
import json, os, sys, time
from pathlib import Path
from facestream.engines import tensorrt_backend as trt_backend
from facestream.engines.backend import GpuProbe

onnx_path, cache, log, me, other = sys.argv[1:6]

def slow_build(onnx_path, profile, precision, workspace_mb=1024, keep_fp32=()):  # TensorRT's builder: minutes, here 3 s
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(3)
    return f"engine built by {os.getpid()}".encode()

trt_backend.build_engine = slow_build
Path(me).touch()
deadline = time.monotonic() + 120
while not Path(other).exists() and time.monotonic() < deadline:  # both ask for the engine at the same moment
    time.sleep(0.01)
profile = trt_backend.profile_for("embedder", None, 8)
probe = GpuProbe(True, "stand-in", "NVIDIA A10", (8, 6), "10.3.0")
engine, path, built = trt_backend.cached_engine(onnx_path, "embedder", profile, "fp16", probe, cache)
print(json.dumps({"built": built, "engine": engine.decode(), "path": str(path)}))
"""


def test_two_processes_asking_for_one_engine_build_it_once(tmp_path: Path) -> None:
    """Two real processes, released together, with a slow stand-in for TensorRT's builder: one builds while
    the other waits on the lock, then loads the same engine (without the lock both build: checked once)."""
    onnx_path = tmp_path / "graph.onnx"
    onnx_path.write_bytes(b"a graph")
    builds = tmp_path / "builds.log"
    processes = [
        subprocess.Popen([sys.executable, "-c", _BUILDER, str(onnx_path), str(tmp_path / "cache"), str(builds),
                          str(tmp_path / f"ready-{i}"), str(tmp_path / f"ready-{1 - i}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    assert len(builds.read_text().split()) == 1  # one build
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["engine"] == results[1]["engine"] and results[0]["path"] == results[1]["path"]


# ------------------------------------------------------------------------------------------------
# the ONNX graphs TensorRT will parse


@pytest.mark.parametrize("kind", ["detector", "embedder"])
def test_onnx_graphs_pass_the_checker_and_use_only_operators_tensorrt_parses(
    onnx_files: dict[str, Path], kind: str
) -> None:
    model = onnx.load(str(onnx_files[kind]))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    output = inferred.graph.output[0].type.tensor_type
    assert output.elem_type == onnx.TensorProto.FLOAT and len(output.shape.dim) in (2, 4)
    assert all(o.domain in ("", "ai.onnx") and o.version <= TENSORRT_MAX_OPSET for o in model.opset_import)
    ops = {node.op_type for node in model.graph.node}
    assert ops <= TENSORRT_ONNX_OPS, ops - TENSORRT_ONNX_OPS
    initializers = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in initializers  # TensorRT: weights must be initializers
        if node.op_type == "MaxPool":
            assert len(node.output) == 1  # TensorRT: no Indices output
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            kernel = next(a for a in node.attribute if a.name == "kernel_shape")
            assert len(kernel.ints) == 2  # TensorRT: 2D or 3D only
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == profile_for(kind, EngineConfig(), 32).input_name
    assert dims[0].dim_param  # dynamic batch: the profile's range applies


# ------------------------------------------------------------------------------------------------
# faiss-gpu


def test_gallery_gpu_takes_false_true_and_auto_from_a_config_file(tmp_path: Path) -> None:
    from facestream.pipeline.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    for text, mode in (("false", "off"), ("true", "on"), ("auto", "auto"), ("off", "off")):
        path.write_text(f"gallery:\n  gpu: {text}\n")
        assert gpu_mode(load_config(path).gallery.gpu) == mode
    path.write_text("gallery:\n  gpu: sometimes\n")
    with pytest.raises(ConfigError, match=r"gallery\.gpu: 'sometimes' is not allowed; allowed: one of false, true"):
        load_config(path)


def test_the_gallery_index_stays_on_the_cpu_without_faiss_gpu(caplog: pytest.LogCaptureFixture) -> None:
    usable, why = faiss_gpu_status()
    if usable:  # pragma: no cover
        pytest.skip("faiss has GPU support and a device here")
    assert why in ("this faiss build has no GPU support (faiss-cpu)", "no CUDA device is present")
    assert FaceIndex().gpu_reason == "gallery.gpu is off"  # off unless asked for
    assert load_config(None).gallery.gpu is False
    index = FaceIndex(gpu="auto")
    assert not index.gpu_enabled and index.gpu_reason == why and "gallery.gpu" not in caplog.text
    assert not FaceIndex(gpu=True).gpu_enabled and f"gallery.gpu is on but the search stays on the CPU: {why}" in (
        caplog.text)  # fmt: skip
    assert [gpu_mode(v) for v in (False, True, "auto", "off", "on", "false", "True")] == [
        "off", "on", "auto", "off", "on", "off", "on"]  # fmt: skip
    with pytest.raises(ValueError, match="gpu must be one of"):
        FaceIndex(gpu="yes please")
    stand_in = types.SimpleNamespace(StandardGpuResources=object, index_cpu_to_gpu=None, get_num_gpus=lambda: 0)
    assert faiss_gpu_status(stand_in) == (False, "no CUDA device is present")
    stand_in.get_num_gpus = lambda: 2
    assert faiss_gpu_status(stand_in) == (True, "2 GPU(s)")


class _FaissGpuStandIn:
    """The real faiss, plus a "GPU" copy of an index that refuses k >= GPU_MAX_SELECTION_K as faiss-gpu does
    (validateKSelect: "GPU index only supports min/max-K selection up to 2048 (requested k)")."""

    def __init__(self) -> None:
        import faiss

        self.real, self.gpu_searches = faiss, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def get_num_gpus(self) -> int:
        return 1

    def StandardGpuResources(self) -> object:  # noqa: N802 - faiss's name
        return object()

    def index_cpu_to_gpu(self, resources: object, device: int, index: object) -> object:
        stand_in = self

        class GpuIndex:
            def search(self, queries: np.ndarray, k: int) -> tuple:
                if not 0 < k < GPU_MAX_SELECTION_K:
                    raise RuntimeError(f"Error in validateKSelect: GPU index only supports min/max-K selection "
                                       f"up to {GPU_MAX_SELECTION_K} (requested {k})")  # fmt: skip
                stand_in.gpu_searches.append(k)
                return index.search(queries, k)

        return GpuIndex()


def test_a_search_deeper_than_faiss_gpus_k_limit_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from facestream.enroll import index as index_module

    stand_in = _FaissGpuStandIn()
    monkeypatch.setattr(index_module, "faiss", stand_in)
    index = FaceIndex(gpu=True)
    assert index.gpu_enabled
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(GPU_MAX_SELECTION_K + 100, 128)).astype(np.float32)
    index.add(np.arange(1, len(vectors) + 1), np.arange(len(vectors)) % 7, vectors)
    queries = vectors[:2] + np.float32(1e-3)
    shallow = index.search(queries, 10)
    assert stand_in.gpu_searches == [10]  # on the "GPU"
    deep = index.search(queries, GPU_MAX_SELECTION_K + 50)  # would raise on the GPU copy: the CPU answers
    assert stand_in.gpu_searches == [10] and deep[1].shape == (2, GPU_MAX_SELECTION_K + 50)
    np.testing.assert_array_equal(deep[1][:, :10], shallow[1])
    np.testing.assert_array_equal(deep[1][:, 0], [1, 2])


def _installs(requirements: list, extras: frozenset[str]) -> set[str]:
    environment = [{"extra": extra} for extra in extras] or [{"extra": ""}]
    return {r.name.lower() for r in requirements if r.marker is None or any(r.marker.evaluate(e) for e in environment)}


def test_no_documented_install_puts_faiss_cpu_and_faiss_gpu_side_by_side() -> None:
    """Read from the installed facestream's metadata (what pip resolves), for every `.[extras]` the README and
    the Makefile use: exactly one faiss package each (both own the `faiss` module)."""
    import re
    from importlib import metadata

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parent.parent
    requirements = [Requirement(line) for line in metadata.requires("facestream") or []]
    documented = {frozenset(match.split(",")) for name in ("README.md", "Makefile")
                  for match in re.findall(r"\.\[([a-z0-9_,]+)\]", (root / name).read_text())}  # fmt: skip
    assert {frozenset({"cpu", "test"}), frozenset({"gpu"})} <= documented, documented
    assert not _installs(requirements, frozenset()) & {"faiss-cpu", "faiss-gpu"}  # not a hard dependency
    for extras in documented:
        faiss = _installs(requirements, extras) & {"faiss-cpu", "faiss-gpu"}
        assert len(faiss) == 1, (sorted(extras), faiss)
    assert "faiss-cpu" in _installs(requirements, frozenset({"cpu", "test"}))  # make install / make test
    assert {"tensorrt", "pycuda", "faiss-gpu"} <= _installs(requirements, frozenset({"gpu"}))


# ------------------------------------------------------------------------------------------------
# facestream engines


def test_engines_info_and_build_say_what_runs_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from facestream.pipeline.cli.main import main

    if probe_gpu().available:  # pragma: no cover
        pytest.skip("this machine has TensorRT and a GPU")
    assert main(["engines", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "onnxruntime" and info["configured"] == "auto" and "tensorrt" in info["reason"]
    assert info["gallery_search"] == "cpu" and info["profiles"]["embedder"]["max"] == [32, 3, 150, 150]
    assert main(["engines", "build"]) == 2
    assert "cannot build TensorRT engines here: tensorrt is not installed" in caplog.text
    forced = tmp_path / "gpu.yaml"
    forced.write_text("engine:\n  backend: tensorrt\n")
    assert main(["engines", "info", "--config", str(forced)]) == 2
    assert "engine.backend is tensorrt but TensorRT cannot run here" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# on a GPU: TensorRT against ONNX Runtime on the data pack


def _tensorrt_or_skip() -> GpuProbe:
    found = probe_gpu()
    if not found.available:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT and pycuda: {found.reason}")
    return found


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 0.02)])
def test_tensorrt_descriptors_match_onnxruntime(
    onnx_files: dict[str, Path], tmp_path: Path, precision: str, tolerance: float
) -> None:  # pragma: no cover - needs a GPU
    from facestream.engines.embedder import normalize_chips
    from facestream.engines.tensorrt_backend import TensorRTSession

    from conftest import GOLDEN

    probe = _tensorrt_or_skip()
    import cv2

    chips = np.stack([cv2.imread(str(path))[..., ::-1] for path in sorted((GOLDEN / "chips").glob("*.png"))])
    batch = normalize_chips(chips)
    cpu = OnnxRuntimeSession(onnx_files["embedder"]).run(batch)
    with TensorRTSession(onnx_files["embedder"], "embedder", profile_for("embedder", None, 32),
                         precision=precision, cache_dir=tmp_path, probe=probe) as session:  # fmt: skip
        gpu = session.run(batch)
    assert np.linalg.norm(gpu - cpu, axis=1).max() < tolerance
    # the same identities: every pair on the same side of 0.6
    same_cpu = np.linalg.norm(cpu[:, None] - cpu[None], axis=2) <= 0.6
    same_gpu = np.linalg.norm(gpu[:, None] - gpu[None], axis=2) <= 0.6
    assert (same_cpu == same_gpu).mean() > 0.999


@pytest.mark.gpu
def test_tensorrt_detector_boxes_match_onnxruntime(tmp_path: Path) -> None:  # pragma: no cover - needs a GPU
    from facestream.engines.detector import FaceDetector
    from facestream.pipeline.domain.tracker import box_iou

    from conftest import DATA, load_rgb_as_dlib

    _tensorrt_or_skip()
    engine = EngineConfig(backend="tensorrt", precision="fp16")
    cpu = FaceDetector.from_file(model_path("detector", ""), tmp_path)
    with FaceDetector.from_file(model_path("detector", ""), tmp_path, engine=engine) as gpu:
        for name in ("fr_examples/obama.jpg", "fr_examples/two_people.jpg", "dlib_faces/bald_guys.jpg"):
            image = load_rgb_as_dlib(DATA / name)
            (gpu_boxes, _), (cpu_boxes, _) = gpu.detect(image), cpu.detect(image)
            assert len(gpu_boxes) == len(cpu_boxes)
            assert box_iou(cpu_boxes.astype(float), gpu_boxes.astype(float)).max(axis=1).min() >= 0.99


# ------------------------------------------------------------------------------------------------
# TensorRTSession with stand-ins that are as strict as pycuda and TensorRT (tests/gpu_stand_ins.py)


@pytest.fixture
def stand_in_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[gpu_stand_ins.State]:
    """The stand-ins in sys.modules for one test; at its end pycuda's exit check: the test fails when a
    context is left on a stack, a retained context was never released, or a call broke the libraries' rules."""
    state = gpu_stand_ins.reset()
    for name, module in gpu_stand_ins.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    yield state
    gpu_stand_ins.assert_clean()


def test_tensorrt_session_slices_large_batches_reuses_its_buffers_and_leaves_the_stack_as_it_found_it(
    onnx_files: dict[str, Path], tmp_path: Path, stand_in_gpu: gpu_stand_ins.State
) -> None:
    session = trt_backend.TensorRTSession(onnx_files["embedder"], "embedder", profile_for("embedder", None, 8),
                                          precision="fp32", cache_dir=tmp_path, probe=GPU)  # fmt: skip
    assert not stand_in_gpu.unbalanced()  # loaded with the context pushed, popped after
    batch = np.random.default_rng(0).normal(size=(20, 3, 150, 150)).astype(np.float32)
    expected = OnnxRuntimeSession(onnx_files["embedder"]).run(batch)
    np.testing.assert_array_equal(session.run(batch), expected)  # the session's copies in and out are right
    assert stand_in_gpu.shapes == [(8, 3, 150, 150), (8, 3, 150, 150), (4, 3, 150, 150)]  # sliced to the profile
    allocations = list(stand_in_gpu.allocations)
    np.testing.assert_array_equal(session.run(batch[:3]), expected[:3])
    assert stand_in_gpu.allocations == allocations and len(allocations) == 2  # smaller batch: the same buffers
    assert session.engine_file.exists() and session.engine_file.parent == tmp_path / "tensorrt"
    assert not stand_in_gpu.unbalanced()
    # Another thread (a web request, a worker thread) runs it too: its own stack, balanced as well.
    results: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: results.append(session.run(batch[:2])))
    thread.start()
    thread.join(60)
    np.testing.assert_array_equal(results[0], expected[:2])
    session.close()
    session.close()  # twice is harmless
    assert stand_in_gpu.events[-3:] == ["push", "pop", "detach"]  # freed with the context current
    assert stand_in_gpu.events.count("push") == stand_in_gpu.events.count("pop")
    assert session.inputs.device is None and session.outputs.device is None
    with pytest.raises(trt_backend.EngineError, match="closed"):
        session.run(batch[:1])


def test_the_stand_in_is_as_strict_as_pycuda(stand_in_gpu: gpu_stand_ins.State) -> None:
    """What the stand-in refuses, the real libraries refuse: pop on an empty stack, allocating with no context;
    and a context left pushed is what pycuda aborts on at exit."""
    cuda = sys.modules["pycuda.driver"]
    with pytest.raises(cuda.LogicError, match="cannot pop"):
        cuda.Context.pop()
    with pytest.raises(cuda.LogicError, match="invalid device context"):
        cuda.mem_alloc(16)
    context = cuda.Device(0).retain_primary_context()
    context.push()
    assert stand_in_gpu.unbalanced()
    with pytest.raises(AssertionError, match="context stack was not empty"):
        gpu_stand_ins.assert_clean()
    cuda.Context.pop()
    context.detach()
    stand_in_gpu.violations.clear()  # the two refusals above were on purpose


def test_a_tensorrt_session_that_fails_to_load_releases_the_cuda_context(
    onnx_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_gpu: gpu_stand_ins.State
) -> None:
    monkeypatch.setattr(trt_backend, "build_engine", lambda *args, **kwargs: (_ for _ in ()).throw(
        trt_backend.EngineError("the builder failed")))  # fmt: skip
    with pytest.raises(trt_backend.EngineError, match="the builder failed"):
        trt_backend.TensorRTSession(onnx_files["embedder"], "embedder", profile_for("embedder", None, 8),
                                    precision="fp32", cache_dir=tmp_path, probe=GPU)  # fmt: skip
    assert stand_in_gpu.events == ["push", "pop", "push", "pop", "detach"]


def test_a_detector_input_outside_the_profile_runs_on_onnxruntime(
    onnx_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, stand_in_gpu: gpu_stand_ins.State
) -> None:
    engine = EngineConfig(detector_min_hw=[32, 32], detector_opt_hw=[48, 48], detector_max_hw=[64, 64])
    with trt_backend.TensorRTSession(onnx_files["detector"], "detector", profile_for("detector", engine),
                                     precision="fp32", cache_dir=tmp_path, probe=GPU) as session:  # fmt: skip
        reference = OnnxRuntimeSession(onnx_files["detector"])
        rng = np.random.default_rng(1)
        inside, outside = (rng.normal(size=(1, 3, n, n)).astype(np.float32) for n in (48, 80))
        np.testing.assert_array_equal(session.run(inside), reference.run(inside))
        assert stand_in_gpu.executions == 1
        caplog.set_level("WARNING", logger="facestream.engines.tensorrt_backend")
        np.testing.assert_array_equal(session.run(outside), reference.run(outside))
        assert stand_in_gpu.executions == 1 and "(1, 3, 80, 80) is outside the TensorRT profile" in caplog.text


def test_engine_precision_auto_gives_each_network_its_measured_default(
    onnx_files: dict[str, Path], tmp_path: Path, stand_in_gpu: gpu_stand_ins.State
) -> None:
    from facestream.engines.precision import DEFAULT_PRECISION, resolve_precision

    assert EngineConfig().precision == "auto"
    for kind in ("detector", "embedder"):
        engine = EngineConfig(backend="tensorrt", detector_max_hw=[64, 64], detector_opt_hw=[48, 48])
        with make_session(onnx_files[kind], kind, engine, tmp_path, probe=lambda: GPU) as session:
            assert session.precision == DEFAULT_PRECISION[kind] == resolve_precision(kind, "auto")
        assert resolve_precision(kind, "fp32") == "fp32"
    with pytest.raises(ValueError, match=r"engine\.precision must be one of auto, fp16, fp32"):
        resolve_precision("embedder", "int8")


def test_the_analyzer_on_tensorrt_closes_both_sessions(
    tmp_path: Path, stand_in_gpu: gpu_stand_ins.State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FaceAnalyzer (detector + embedder) on the stand-in TensorRT gives ONNX Runtime's faces, and `with` closes
    both sessions: pycuda's exit check (the fixture) passes."""
    from facestream.engines.faces import FaceAnalyzer
    from facestream.engines.imageio import read_image

    from conftest import DATA

    monkeypatch.setattr(backend_module, "probe_gpu", lambda: GPU)
    config = load_config(None)
    config.cache_dir = str(tmp_path)
    config.engine.backend, config.engine.precision = "tensorrt", "fp32"
    image = read_image(DATA / "fr_examples" / "obama.jpg")
    with FaceAnalyzer.from_config(config) as analyzer:
        assert analyzer.detector.session.backend == analyzer.embedder.session.backend == "tensorrt"
        faces = analyzer.analyze(image)
    cpu = copy.deepcopy(config)
    cpu.engine.backend = "onnxruntime"
    with FaceAnalyzer.from_config(cpu) as reference:
        expected = reference.analyze(image)
    assert len(faces) == len(expected) == 1
    np.testing.assert_array_equal(faces.boxes, expected.boxes)
    np.testing.assert_array_equal(faces.descriptors, expected.descriptors)
    assert stand_in_gpu.events.count("detach") == 2 and not trt_backend._live


def _stand_in_python(tmp_path: Path) -> dict[str, str]:
    """The environment of a process whose `tensorrt` and `pycuda` are the stand-ins (with pycuda's exit abort)."""
    site = gpu_stand_ins.write_sitecustomize(tmp_path / "site")
    config = tmp_path / "gpu.yaml"
    config.write_text(f"cache_dir: {tmp_path / 'cache'}\nengine:\n  backend: tensorrt\n  precision: fp32\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "FACESTREAM_TEST_CONFIG": str(config)}  # fmt: skip


def test_cli_commands_on_tensorrt_exit_cleanly_and_a_leaked_context_would_abort(tmp_path: Path) -> None:
    """Real processes with pycuda's exit check: `facestream analyze` on (stand-in) TensorRT exits 0; a script that
    never closes its analyzer exits 0 too (the stack is empty between calls; the atexit backstop releases
    the context, and even without it nothing is left pushed); a context left pushed, as a session that
    pushed once for its lifetime did, aborts the process as pycuda does (so the check can fail)."""
    from conftest import DATA

    env = _stand_in_python(tmp_path)
    image = str(DATA / "fr_examples" / "obama-240p.jpg")
    command = [sys.executable, "-m", "facestream.pipeline.cli.main", "--config", env["FACESTREAM_TEST_CONFIG"]]
    done = subprocess.run([*command, "analyze", "--json", image], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["faces"][0]["box"] and gpu_stand_ins.UNBALANCED not in done.stderr
    script = (
        "import atexit, sys\nfrom facestream.engines.faces import FaceAnalyzer\n"
        "from facestream.engines import tensorrt_backend\nfrom facestream.pipeline.config import load_config\n"
        f"analyzer = FaceAnalyzer.from_config(load_config({env['FACESTREAM_TEST_CONFIG']!r}))\n"
        "if sys.argv[1] != 'backstop':\n    atexit.unregister(tensorrt_backend.close_all_sessions)\n"
        "if sys.argv[1] == 'pushed':\n    analyzer.embedder.session.context_cuda.push()\n"
    )  # fmt: skip

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    for mode in ("backstop", "no-backstop"):
        finished = run(mode)
        assert finished.returncode == 0 and gpu_stand_ins.UNBALANCED not in finished.stderr, finished.stderr
    aborted = run("pushed")
    assert aborted.returncode == -signal.SIGABRT and gpu_stand_ins.UNBALANCED in aborted.stderr


@pytest.mark.parametrize(
    ("version", "precision", "strongly_typed", "flags"),
    [
        ("8.6.1", "fp32", False, []),
        ("8.6.1", "fp16", False, ["FP16"]),  # no strong typing before 9: the FP16 graph, weakly typed
        ("10.3.0", "fp32", False, []),
        ("10.3.0", "fp16", True, []),  # STRONGLY_TYPED and no BuilderFlag.FP16 (refused on a typed network)
        ("11.0.0", "fp32", True, []),  # 11: always strongly typed, no EXPLICIT_BATCH, no BuilderFlag.FP16
        ("11.0.0", "fp16", True, []),
    ],
)
def test_engine_builds_use_the_flags_each_tensorrt_version_has(
    onnx_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, version: str, precision: str,
    strongly_typed: bool, flags: list[str],
) -> None:  # fmt: skip
    """The stand-in builder of each version has only that version's flags and refuses what it refuses
    (an implicit-batch network before 10, BuilderFlag.FP16 on a strongly typed network); TF32 is cleared so
    FP32 engines multiply in FP32. The graph handed to the parser is the FP16-typed one for FP16, and runs
    within the bar of FP32."""
    from facestream.engines.embedder import normalize_chips
    from facestream.engines.precision import MAX_DESCRIPTOR_DRIFT

    from conftest import GOLDEN

    state = gpu_stand_ins.reset()
    for name, module in gpu_stand_ins.modules(version).items():
        monkeypatch.setitem(sys.modules, name, module)
    data = trt_backend.build_engine(onnx_files["embedder"], profile_for("embedder", None, 8), precision)
    (build,) = state.builds
    assert (build["version"], build["strongly_typed"], build["flags"]) == (version, strongly_typed, flags)
    assert build["fp16_weights"] == (precision == "fp16") and build["profiles"] == 1
    gpu_stand_ins.assert_clean()
    import cv2

    chips = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((GOLDEN / "chips").glob("*.png"))])
    batch = normalize_chips(chips)
    engine = sys.modules["tensorrt"].Runtime(None)  # needs a current context, as TensorRT's does
    cuda = sys.modules["pycuda.driver"]
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        built = engine.deserialize_cuda_engine(data).run(batch)
    finally:
        cuda.Context.pop()
        context.detach()
    drift = np.linalg.norm(built - OnnxRuntimeSession(onnx_files["embedder"]).run(batch), axis=1).max()
    assert drift < MAX_DESCRIPTOR_DRIFT and (drift > 0) == (precision == "fp16")


def test_a_changed_fp32_island_list_rebuilds_the_fp16_engine() -> None:
    profile = profile_for("embedder", EngineConfig(), 32)
    plain = engine_metadata("ab" * 32, GPU, "fp16", profile)
    island = engine_metadata("ab" * 32, GPU, "fp16", profile, ["conv_3"])
    assert engine_key(plain) != engine_key(island) and plain["keep_fp32"] == []
    assert "keep_fp32" not in engine_metadata("ab" * 32, GPU, "fp32", profile)


# ------------------------------------------------------------------------------------------------
# configuration errors: exit 2, one clear line, no restarts


def _run_demo(tmp_path: Path, config: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    from conftest import DATA

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "facestream.pipeline.cli.main", "--config", str(config), "run", "--source",
         str(DATA / "video" / "short_hamilton_clip.mp4"), "--events", str(tmp_path / "events.jsonl"),
         "--stats", str(tmp_path / "stats.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_run_with_tensorrt_absent_exits_2_before_starting_workers(tmp_path: Path) -> None:
    if probe_gpu().available:  # pragma: no cover
        pytest.skip("this machine has TensorRT and a GPU")
    config = tmp_path / "trt.yaml"
    config.write_text("engine:\n  backend: tensorrt\n")
    done, seconds = _run_demo(tmp_path, config, dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert "engine.backend is tensorrt but TensorRT cannot run here: tensorrt is not installed" in done.stderr
    assert "Traceback" not in done.stderr and "restarting" not in done.stderr
    assert seconds < 60  # no worker was started, no engine built


def test_an_engine_that_cannot_be_built_stops_the_run_with_exit_2_and_no_restarts(tmp_path: Path) -> None:
    """Real `facestream run`, every process with the stand-in TensorRT whose ONNX parser refuses the graph:
    each worker says so in one line and exits 2, the supervisor restarts none and the run exits 2."""
    env = _stand_in_python(tmp_path)
    env["STAND_IN_TENSORRT_PARSE_ERROR"] = "1"
    done, _ = _run_demo(tmp_path, Path(env["FACESTREAM_TEST_CONFIG"]), env)
    assert done.returncode == 2, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "TensorRT's ONNX parser refused the graph" in line]
    assert refusals and all("ERROR [detect-" in line or "ERROR [embed-" in line for line in refusals)
    assert "Traceback" not in done.stderr and "restarting" not in done.stderr
    assert "a configuration or model problem" in done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["exit_code"] == 2 and set(stats["restarts"].values()) == {0}
