"""TensorRT on NVIDIA GPUs: engines built from the same ONNX files ONNX Runtime runs, executed with pycuda.

Engines are built once per (ONNX file, TensorRT version, GPU, precision, optimisation profile) and cached
on disk; the cache key hashes exactly those, and every engine file starts with a header repeating them,
so a stale or foreign file (another GPU, another TensorRT, an older graph) is rebuilt, never loaded.

Profiles (``engine:`` in config.yaml): the embedder takes batches of 1..``embedder.max_batch`` chips of
3x150x150; the detector one tiled-pyramid image whose height and width lie in
``engine.detector_min_hw``..``engine.detector_max_hw`` (optimised for ``engine.detector_opt_hw``, the
demo clip's 640x360 at upsample 1). A detector input outside the profile (a bigger frame) is run on
ONNX Runtime instead, with a warning once: one large frame never stops a stream.

Everything above the `TensorRTSession` class is pure and tested without a GPU;
`TensorRTSession` and `build_engine` need tensorrt, pycuda and a device (tests marked ``gpu``).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError
from .digests import hash_file as sha256_file
from .gpu_probe import PYCUDA_HINT, GpuProbe

if TYPE_CHECKING:
    from ..pipeline.config import EngineConfig

log = logging.getLogger(__name__)

FP16_GRAPH_VERSION = 1  # of precision.fp16_graph's rewrite: a change rebuilds the FP16 engines
ENGINE_MAGIC = b"FSTRT1\n"  # facestream TensorRT engine file, header version 1
PRECISIONS = ("fp16", "fp32")
EMBEDDER_CHIP = (3, 150, 150)


# The operators TensorRT's ONNX parser supports ("Y" in onnx-tensorrt's docs/operators.md as of TensorRT 8.5,
# opsets up to 17; later releases add operators, so a graph within this list also parses on 8.6-10.x), as
# data for the check that both exported graphs use nothing else (tests/test_gpu_backend.py).
_SUPPORTED_OPS = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization
IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear Range ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Unsqueeze Upsample Where Xor
"""
TENSORRT_ONNX_OPS = frozenset(_SUPPORTED_OPS.split())
TENSORRT_MAX_OPSET = 17


class EngineError(BackendError):
    """A TensorRT engine that cannot be built or run; the message says why."""


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: the input tensor's min / opt / max shapes (NCHW)."""

    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shapes = (self.min_shape, self.opt_shape, self.max_shape)
        if len({len(s) for s in shapes}) != 1 or any(d < 1 for s in shapes for d in s):
            raise ValueError(f"profile shapes must have one rank and positive sizes, got {shapes}")
        if any(not (lo <= mid <= hi) for lo, mid, hi in zip(*shapes)):
            raise ValueError(f"profile needs min <= opt <= max in every dimension, got {shapes}")

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.max_shape) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min_shape, shape, self.max_shape)
        )


def profile_for(kind: str, engine: EngineConfig | None, embedder_max_batch: int | None = None) -> Profile:
    """The optimisation profile of "detector" or "embedder" from the ``engine:`` config section (the embedder's
    needs only its max batch, 32 unless given; the detector's needs the section)."""
    if kind == "embedder":
        top = int(embedder_max_batch or 32)
        if top < 1:
            raise ValueError(f"embedder max batch must be >= 1, got {top}")
        return Profile("chips", (1, *EMBEDDER_CHIP), (max(1, top // 2), *EMBEDDER_CHIP), (top, *EMBEDDER_CHIP))
    if kind == "detector":
        if engine is None:
            raise ValueError("the detector's TensorRT profile needs the engine section (detector_min_hw ...)")
        low, opt, high = (tuple(int(v) for v in hw)
                          for hw in (engine.detector_min_hw, engine.detector_opt_hw, engine.detector_max_hw))
        if any(len(hw) != 2 for hw in (low, opt, high)):
            raise ValueError("engine.detector_min_hw / opt_hw / max_hw must each be [height, width]")
        return Profile("pyramid", (1, 3, *low), (1, 3, *opt), (1, 3, *high))
    raise ValueError(f"unknown network {kind!r}: detector or embedder")


def engine_metadata(onnx_sha256: str, probe: GpuProbe, precision: str, profile: Profile,
                    keep_fp32: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Everything an engine depends on; the cache key is its hash and the engine file's header repeats it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    fp16 = {"fp16_graph": FP16_GRAPH_VERSION, "keep_fp32": sorted(keep_fp32)} if precision == "fp16" else {}
    return {**fp16,
        "onnx_sha256": onnx_sha256,
        "tensorrt": probe.tensorrt_version,
        "gpu": probe.device_name,
        "compute_capability": list(probe.compute_capability),
        "precision": precision,
        "profile": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(profile).items()},
    }


def engine_key(metadata: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_path(cache_dir: str | Path, kind: str, metadata: dict[str, Any]) -> Path:
    return Path(cache_dir) / "tensorrt" / f"{kind}-{metadata['precision']}-{engine_key(metadata)[:20]}.engine"


def encode_engine_file(metadata: dict[str, Any], engine: bytes) -> bytes:
    header = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    return ENGINE_MAGIC + len(header).to_bytes(4, "little") + header + engine


def decode_engine_file(data: bytes, expected: dict[str, Any]) -> tuple[bytes | None, str]:
    """(serialized engine, "") when `data` is an engine file built for exactly `expected`, else (None, why)."""
    if not data.startswith(ENGINE_MAGIC):
        return None, "not a facestream engine file"
    start = len(ENGINE_MAGIC) + 4
    if len(data) < start:
        return None, "truncated header"
    length = int.from_bytes(data[len(ENGINE_MAGIC) : start], "little")
    if length > len(data) - start:
        return None, "truncated header"
    try:
        found = json.loads(data[start : start + length])
    except ValueError:
        return None, "corrupt header"
    if found != expected:
        changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        return None, f"built for another {', '.join(changed)}"
    engine = data[start + length :]
    if not engine:
        return None, "no engine after the header"
    return engine, ""


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(data)
        temporary = handle.name
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------
# needs tensorrt (building) and pycuda + a device (running)


def tensorrt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def network_flags(trt: Any, precision: str) -> tuple[int, bool]:
    """(create_network flags, whether the network is strongly typed) for this TensorRT and precision.

    EXPLICIT_BATCH: required before TensorRT 10, deprecated and ignored in 10, gone in 11: set before 10 only.
    FP16: a strongly typed network (STRONGLY_TYPED, TensorRT 9 on) parsed from the FP16-typed graph, where
    the graph's types decide each layer's precision (FP32 islands included); 11 has only strong typing and
    dropped BuilderFlag.FP16, so this is the FP16 path that works on 10 and 11. TensorRT 8.6 has no strong
    typing: it gets the same FP16 graph with the weakly typed BuilderFlag.FP16. FP32: as before."""
    creation, major = trt.NetworkDefinitionCreationFlag, tensorrt_major(trt)
    flags = 0
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    strongly = precision == "fp16" and (hasattr(creation, "STRONGLY_TYPED") or major >= 11)
    if strongly and major < 11:  # 11: always strongly typed, the flag deprecated
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags, strongly or major >= 11


def build_engine(onnx_path: str | Path, profile: Profile, precision: str, workspace_mb: int = 1024,
                 keep_fp32: Sequence[str] = ()) -> bytes:  # fmt: skip
    """A serialized TensorRT engine for the ONNX file (explicit batch, one optimisation profile). FP16 is
    built from the graph rewritten to float16 (`precision.fp16_graph`, nodes in `keep_fp32` in FP32)."""
    import onnx
    import tensorrt as trt

    from .precision import fp16_graph

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt, precision)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    graph = Path(onnx_path).read_bytes()
    if precision == "fp16":
        graph = fp16_graph(onnx.load_from_string(graph), keep_fp32).SerializeToString()
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: FP32 engines would multiply in TF32 (10-bit mantissa)
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16: the FP16 engine may be slower than FP32")
        if not strongly_typed:  # TensorRT 8.6: the FP16 graph, weakly typed
            config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(profile.input_name, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    return bytes(serialized)


def cached_engine(
    onnx_path: str | Path, kind: str, profile: Profile, precision: str, probe: GpuProbe,
    cache_dir: str | Path, workspace_mb: int = 1024,
) -> tuple[bytes, Path, bool]:  # fmt: skip
    """(serialized engine, its file, whether it was built now): loaded when the cache holds one built for
    exactly this graph, TensorRT, GPU, precision and profile; else built and saved.

    Several processes starting together (N workers on a first run) build it once: the builder holds an
    exclusive lock on `<engine>.lock` while the others wait on it, then load what it saved."""
    from .precision import KEEP_FP32

    keep = KEEP_FP32.get(kind, ())
    metadata = engine_metadata(sha256_file(onnx_path), probe, precision, profile, keep)
    path = engine_path(cache_dir, kind, metadata)
    engine = _load_cached(path, metadata)
    if engine is not None:
        return engine, path, False
    with build_lock(path, kind):
        engine = _load_cached(path, metadata)  # built by the process we waited for
        if engine is not None:
            return engine, path, False
        started = time.perf_counter()
        log.info("building the %s TensorRT engine (%s) from %s; this takes a while once", kind, precision, onnx_path)
        engine = build_engine(onnx_path, profile, precision, workspace_mb, keep)
        write_atomically(path, encode_engine_file(metadata, engine))
        log.info("%s engine built in %.0f s: %s", kind, time.perf_counter() - started, path)
    return engine, path, True


def _load_cached(path: Path, metadata: dict[str, Any]) -> bytes | None:
    if not path.exists():
        return None
    engine, why = decode_engine_file(path.read_bytes(), metadata)
    if engine is None:
        log.warning("%s: %s; rebuilding", path, why)
    return engine


@contextmanager
def build_lock(path: Path, kind: str) -> Iterator[None]:
    """An exclusive `fcntl.flock` on `<engine>.lock` for the block; waits (and says so) while another process
    holds it. The kernel drops the lock when its holder dies, so a crashed build never blocks the next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building the %s engine %s: waiting for it", kind, path.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _DeviceBuffer:
    """A device allocation with its page-locked host twin, grown on demand and reused across calls."""

    def __init__(self, cuda: Any) -> None:
        self.cuda, self.capacity = cuda, 0
        self.host: np.ndarray | None = None
        self.device: Any = None

    def ensure(self, elements: int) -> None:
        if elements <= self.capacity:
            return
        if self.device is not None:
            self.device.free()
        self.host = self.cuda.pagelocked_empty(elements, np.float32)
        self.device = self.cuda.mem_alloc(elements * 4)
        self.capacity = elements


class TensorRTSession:
    """The `InferenceSession` of one network as a TensorRT engine: float32 NCHW in, the graph's output out.

    CUDA context discipline: the device's primary context is retained once and pushed only around each
    piece of work (loading, every `run`, `close`), so between calls this thread's pycuda context stack is
    as the session found it. pycuda aborts the process when that stack is not empty at exit, and a
    context pushed in one thread cannot be popped in another. `close()` (or the context manager) frees the
    device buffers and releases the context; an `atexit` backstop closes sessions nobody closed.

    Host->device and device->host copies are asynchronous on one CUDA stream from page-locked buffers that
    are kept between calls (grown when a larger input comes). A batch larger than the profile's is run in
    slices; an input the profile does not cover goes to ONNX Runtime (warned once).
    """

    backend = "tensorrt"

    def __init__(
        self, onnx_path: str | Path, kind: str, profile: Profile, *, precision: str = "fp16",
        cache_dir: str | Path | None = None, workspace_mb: int = 1024, probe: GpuProbe, device: int = 0,
    ) -> None:  # fmt: skip
        cuda, trt = import_gpu_stack()
        self.cuda, self.onnx_path, self.kind, self.profile = cuda, Path(onnx_path), kind, profile
        self.precision = precision
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self._fallback: Any = None
        self.inputs, self.outputs = _DeviceBuffer(cuda), _DeviceBuffer(cuda)
        cuda.init()
        self.context_cuda: Any = cuda.Device(device).retain_primary_context()  # retained, not pushed
        try:
            with self._current():
                self._load(onnx_path, kind, profile, precision, probe, cache_dir, workspace_mb, trt)
        except BaseException:
            self.close()
            raise
        _track(self)

    @contextmanager
    def _current(self) -> Iterator[None]:
        """This session's context current in this thread for the block; the stack as it was afterwards."""
        self.context_cuda.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def _load(self, onnx_path: str | Path, kind: str, profile: Profile, precision: str, probe: Any,
              cache_dir: str | Path | None, workspace_mb: int, trt: Any) -> None:  # fmt: skip
        from .cachedir import default_cache_dir

        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        data, self.engine_file, _ = cached_engine(onnx_path, kind, profile, precision, probe, cache, workspace_mb)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:  # e.g. a file from a TensorRT whose version string matched but format did not
            self.engine_file.unlink(missing_ok=True)
            raise EngineError(f"{self.engine_file}: TensorRT could not load the engine; it was removed, run again")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{onnx_path}: expected one input and one output, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.stream = self.cuda.Stream()

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.context_cuda is None:
            raise EngineError(f"{self.kind}: the TensorRT session is closed")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        shape = tuple(batch.shape)
        top = self.profile.max_shape[0]
        if len(shape) == 4 and shape[0] > top and self.profile.accepts((top, *shape[1:])):
            return np.concatenate([self.run(batch[i : i + top]) for i in range(0, shape[0], top)])
        if not self.profile.accepts(shape):
            return self._run_on_cpu(batch)
        with self._current():
            return self._execute(batch, shape)

    def _execute(self, batch: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        self.context.set_input_shape(self.input_name, shape)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        count = int(np.prod(out_shape))
        self.inputs.ensure(batch.size)
        self.outputs.ensure(count)
        assert self.inputs.host is not None and self.outputs.host is not None
        host_in = self.inputs.host[: batch.size]
        host_in[:] = batch.reshape(-1)
        self.cuda.memcpy_htod_async(self.inputs.device, host_in, self.stream)
        self.context.set_tensor_address(self.input_name, int(self.inputs.device))
        self.context.set_tensor_address(self.output_name, int(self.outputs.device))
        if not self.context.execute_async_v3(stream_handle=self.stream.handle):
            raise EngineError(f"{self.kind}: TensorRT execution failed for input {shape}")
        host_out = self.outputs.host[:count]
        self.cuda.memcpy_dtoh_async(host_out, self.outputs.device, self.stream)
        self.stream.synchronize()
        return host_out.reshape(out_shape).copy()

    def _run_on_cpu(self, batch: np.ndarray) -> np.ndarray:
        if self._fallback is None:
            from .runtime import OnnxRuntimeSession

            log.warning("%s: input %s is outside the TensorRT profile %s..%s: running it on ONNX Runtime "
                        "(widen engine.detector_max_hw and run `facestream engines build`)", self.kind,
                        tuple(batch.shape), self.profile.min_shape, self.profile.max_shape)  # fmt: skip
            self._fallback = OnnxRuntimeSession(self.onnx_path)
        return self._fallback.run(batch)

    def close(self) -> None:
        """Free the device buffers and TensorRT objects with the context current, pop it, then release this
        session's hold on the device's primary context. Safe to call twice."""
        if self.context_cuda is None:
            return
        try:
            with self._current():
                for buffer in (self.inputs, self.outputs):
                    if buffer.device is not None:
                        buffer.device.free()
                        buffer.device = None
                # TensorRT objects and the stream are destroyed here, while the context is current.
                self.context = self.engine = self.stream = None
        finally:
            self.context_cuda.detach()
            self.context_cuda = None
            _live.discard(self)

    def __enter__(self) -> TensorRTSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Sessions nobody closed are closed at exit: pycuda would otherwise abort on a context it still holds.
_live: weakref.WeakSet[TensorRTSession] = weakref.WeakSet()
_backstop_registered = False


def _track(session: TensorRTSession) -> None:
    global _backstop_registered
    _live.add(session)
    if not _backstop_registered:  # registered after pycuda was imported: atexit runs it before pycuda's own
        atexit.register(close_all_sessions)
        _backstop_registered = True


def close_all_sessions() -> int:
    """Close every TensorRT session still open in this process; how many there were."""
    sessions = list(_live)
    for session in sessions:
        try:
            session.close()
        except Exception as error:  # exiting anyway: say so, close the others
            log.warning("closing a %s TensorRT session at exit failed: %s", session.kind, error)
    return len(sessions)


def import_gpu_stack() -> tuple[Any, Any]:
    """(pycuda.driver, tensorrt), or BackendError saying which is missing and what to do."""
    try:
        import tensorrt as trt
    except Exception as error:
        raise BackendError(f"tensorrt cannot be imported ({type(error).__name__}: {error}): "
                           "pip install 'facestream[gpu]' on a machine with an NVIDIA driver") from error  # fmt: skip
    try:
        import pycuda.driver as cuda
    except Exception as error:
        raise BackendError(f"pycuda cannot be imported ({type(error).__name__}: {error}): {PYCUDA_HINT}") from error
    return cuda, trt
