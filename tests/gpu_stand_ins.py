"""Stand-ins for `pycuda.driver` and `tensorrt` that behave like the real libraries where it matters.

No GPU here: these answer for the libraries, and they are strict where the real ones are strict.

pycuda (its `src/cpp/cuda.hpp`): each thread has its own context stack; `Context.pop()` pops the current
context and fails on an empty stack; allocations, streams and page-locked memory need a current context;
and when the process ends with a context still on a stack, pycuda prints "PyCUDA ERROR: The context stack
was not empty upon module cleanup." and aborts. The stand-in does the same: `install()` registers the
check with `atexit` first, so it runs after every handler registered later (facestream's backstop), and it
calls `os.abort()`; `assert_clean()` is the same check for a test to call in-process.

TensorRT (the 8.6 / 10.x Python API): deserializing an engine and creating an execution context need a
current CUDA context; `execute_async_v3` fails (returns False) unless every input shape and every I/O
tensor address was set; an output's shape has -1 in its dynamic dimensions until the input shape is set.
The "engine" runs the ONNX graph on ONNX Runtime, reading and writing the stand-in device memory the session
hands it, so what the session copies where is really checked. The builder records the flags it was given
per TensorRT version (8.6, 10.x, 11.x differ in EXPLICIT_BATCH, STRONGLY_TYPED and BuilderFlag.FP16).

`python tests/gpu_stand_ins.py ARGS...` runs `facestream ARGS...` with the stand-ins installed; a
`sitecustomize.py` made by `write_sitecustomize` installs them in every process started with that
directory on PYTHONPATH (the stage processes of `facestream run`).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

UNBALANCED = "PyCUDA ERROR: The context stack was not empty upon module cleanup."


class LogicError(RuntimeError):
    """pycuda._driver.LogicError"""


class State:
    """Everything the stand-ins saw, for the tests to inspect."""

    def __init__(self) -> None:
        self.stacks: dict[int, list[Context]] = {}  # thread id -> that thread's context stack
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.violations: list[str] = []  # what the real libraries would have refused or crashed on
        self.allocations: list[int] = []
        self.executions = 0
        self.shapes: list[tuple] = []
        self.builds: list[dict[str, Any]] = []
        self.retained = 0

    def stack(self) -> list[Context]:
        with self.lock:
            return self.stacks.setdefault(threading.get_ident(), [])

    def current(self) -> Context | None:
        stack = self.stack()
        return stack[-1] if stack else None

    def require_context(self, what: str) -> None:
        if self.current() is None:
            self.violations.append(f"{what} without a current CUDA context")
            raise LogicError(f"{what} failed: invalid device context")

    def unbalanced(self) -> dict[int, int]:
        with self.lock:
            return {thread: len(stack) for thread, stack in self.stacks.items() if stack}


STATE = State()


def reset() -> State:
    global STATE
    STATE = State()
    return STATE


def assert_clean() -> None:
    """What pycuda checks at exit (every thread's stack empty), and nothing the libraries would refuse."""
    assert not STATE.unbalanced(), f"{UNBALANCED} stacks: {STATE.unbalanced()}"
    assert not STATE.violations, STATE.violations
    assert STATE.retained == 0, f"{STATE.retained} primary context retain(s) never released (detach)"


def _check_at_exit() -> None:
    if STATE.unbalanced():
        sys.stderr.write(f"{UNBALANCED}\nThe program will be aborted now.\n")
        sys.stderr.flush()
        os.abort()
    if STATE.violations:
        sys.stderr.write(f"stand-in GPU violations: {STATE.violations}\n")
        sys.stderr.flush()
        os._exit(70)


# ------------------------------------------------------------------------------------------------
# pycuda.driver


class Context:
    def __init__(self, device: int) -> None:
        self.device, self.detached = device, False

    def push(self) -> None:
        if self.detached:
            STATE.violations.append("push of a detached context")
            raise LogicError("cuCtxPushCurrent failed: invalid context")
        STATE.stack().append(self)
        STATE.events.append("push")

    @staticmethod
    def pop() -> None:
        stack = STATE.stack()
        if not stack:
            STATE.violations.append("pop with an empty context stack")
            raise LogicError("context::pop failed: cannot pop non-current context")
        stack.pop()
        STATE.events.append("pop")

    def detach(self) -> None:
        if self.detached:
            STATE.violations.append("detach twice")
            raise LogicError("context::detach failed: invalid context")
        self.detached = True
        STATE.retained -= 1
        STATE.events.append("detach")


class Device:
    def __init__(self, index: int) -> None:
        self.index = index

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "NVIDIA A10"

    def compute_capability(self) -> tuple[int, int]:
        return 8, 6

    def retain_primary_context(self) -> Context:  # retained, not pushed (cuDevicePrimaryCtxRetain)
        STATE.retained += 1
        return Context(self.index)


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes // 4, np.float32)
        self.freed = False
        MEMORY[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:  # pycuda activates the allocation's own context to free it
        self.freed = True


MEMORY: dict[int, DeviceAllocation] = {}


class Stream:
    def __init__(self) -> None:
        STATE.require_context("cuStreamCreate")
        self.handle = id(self)

    def synchronize(self) -> None:
        STATE.require_context("cuStreamSynchronize")


def mem_alloc(nbytes: int) -> DeviceAllocation:
    STATE.require_context("cuMemAlloc")
    STATE.allocations.append(nbytes)
    return DeviceAllocation(nbytes)


def pagelocked_empty(count: int, dtype: Any) -> np.ndarray:
    STATE.require_context("cuMemHostAlloc")
    return np.empty(count, dtype)


def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
    STATE.require_context("cuMemcpyHtoDAsync")
    device.data[: host.size] = host.reshape(-1)


def memcpy_dtoh_async(host: np.ndarray, device: DeviceAllocation, stream: Stream) -> None:
    STATE.require_context("cuMemcpyDtoHAsync")
    host[:] = device.data[: host.size]


def pycuda_driver() -> types.ModuleType:
    module = types.ModuleType("pycuda.driver")
    module.init = lambda flags=0: None
    module.Device, module.Context, module.Stream, module.LogicError = Device, Context, Stream, LogicError
    module.mem_alloc, module.pagelocked_empty = mem_alloc, pagelocked_empty
    module.memcpy_htod_async, module.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return module


# ------------------------------------------------------------------------------------------------
# tensorrt


def tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """The `tensorrt` module of one version: its flags are those that version has."""
    import onnxruntime as ort

    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    creation = {}
    if major < 11:
        creation["EXPLICIT_BATCH"] = 0  # TensorRT 10 keeps it (ignored); 11 removed it
    if major >= 9:
        creation["STRONGLY_TYPED"] = 1 if major < 11 else 0  # 11: accepted and ignored (always strongly typed)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    flags = {"TF32": 7}
    if major < 11:
        flags["FP16"] = 0  # weakly typed FP16: removed in TensorRT 11
    trt.BuilderFlag = types.SimpleNamespace(**flags)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.strongly_typed = "STRONGLY_TYPED" in creation and bool(flags & (1 << creation["STRONGLY_TYPED"]))
            if major >= 11:
                self.strongly_typed = True

    class Parser:
        def __init__(self, network: Network, logger: object) -> None:
            self.network, self.num_errors = network, 0

        def parse(self, data: bytes) -> bool:
            import onnx

            if os.environ.get("STAND_IN_TENSORRT_PARSE_ERROR"):  # a graph TensorRT refuses
                self.num_errors = 1
                return False
            model = onnx.load_from_string(data)
            self.network.model = model
            return True

        def get_error(self, index: int) -> str:
            return "In node 3 (parseGraph): UNSUPPORTED_NODE: stand-in refusal"

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = {"TF32"}  # TensorRT enables TF32 by default
            self.profiles: list = []

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            self.workspace = size

        def set_flag(self, flag: int) -> None:
            self.flags.add(next(k for k, v in flags.items() if v == flag))

        def clear_flag(self, flag: int) -> None:
            self.flags.discard(next(k for k, v in flags.items() if v == flag))

        def add_optimization_profile(self, profile: object) -> None:
            self.profiles.append(profile)

    class OptimizationProfile:
        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            self.shapes = (name, low, opt, high)

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            if major < 10 and not flags & (1 << creation["EXPLICIT_BATCH"]):
                STATE.violations.append("implicit-batch network (TensorRT < 10 needs EXPLICIT_BATCH)")
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if network.strongly_typed and "FP16" in config.flags:
                STATE.violations.append("BuilderFlag.FP16 on a strongly typed network")
                return None
            import onnx

            types_used = {init.data_type for init in network.model.graph.initializer}
            STATE.builds.append({"version": version, "strongly_typed": network.strongly_typed,
                                 "flags": sorted(config.flags), "fp16_weights": onnx.TensorProto.FLOAT16 in types_used,
                                 "profiles": len(config.profiles)})  # fmt: skip
            return network.model.SerializeToString()

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            self.shapes[name] = tuple(int(d) for d in shape)
            STATE.shapes.append(self.shapes[name])
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name == self.engine.input_name:
                return self.shapes.get(name, (-1, 3, -1, -1))
            if self.engine.input_name not in self.shapes:
                return (-1,) * self.engine.output_rank  # dynamic dimensions unknown until the input shape is set
            return self.engine.run(np.zeros(self.shapes[self.engine.input_name], np.float32)).shape

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            STATE.require_context("execute_async_v3")
            engine = self.engine
            if engine.input_name not in self.shapes or set(self.addresses) != {engine.input_name, engine.output_name}:
                STATE.violations.append("execute_async_v3 before every input shape and tensor address was set")
                return False
            shape = self.shapes[engine.input_name]
            source, target = MEMORY[self.addresses[engine.input_name]], MEMORY[self.addresses[engine.output_name]]
            if source.freed or target.freed:
                STATE.violations.append("execute_async_v3 on freed memory")
                return False
            out = engine.run(source.data[: int(np.prod(shape))].reshape(shape))
            target.data[: out.size] = out.reshape(-1)
            STATE.executions += 1
            return True

    class Engine:
        def __init__(self, data: bytes) -> None:
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self.session = session
            self.input_name = session.get_inputs()[0].name
            self.output_name = session.get_outputs()[0].name
            self.output_rank = len(session.get_outputs()[0].shape)
            self.num_io_tensors = 2

        def run(self, batch: np.ndarray) -> np.ndarray:
            return self.session.run([self.output_name], {self.input_name: batch})[0]

        def get_tensor_name(self, index: int) -> str:
            return (self.input_name, self.output_name)[index]

        def get_tensor_mode(self, name: str) -> str:
            return "input" if name == self.input_name else "output"

        def create_execution_context(self) -> ExecutionContext:
            STATE.require_context("create_execution_context")
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            STATE.require_context("deserialize_cuda_engine")
            try:
                return Engine(bytes(data))
            except Exception:  # not a graph: TensorRT returns None for an engine it cannot load
                return None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


def modules(version: str = "10.3.0") -> dict[str, types.ModuleType]:
    """`tensorrt`, `pycuda` and `pycuda.driver` stand-ins, for sys.modules."""
    driver = pycuda_driver()
    package = types.ModuleType("pycuda")
    package.driver = driver
    return {"tensorrt": tensorrt(version), "pycuda": package, "pycuda.driver": driver}


def install(version: str = "10.3.0") -> State:
    """For a whole process: the stand-ins in sys.modules and pycuda's abort at exit on an unbalanced stack."""
    state = reset()
    sys.modules.update(modules(version))
    atexit.register(_check_at_exit)
    return state


def write_sitecustomize(folder: Path, version: str = "10.3.0") -> Path:
    """A sitecustomize.py in `folder` that installs the stand-ins in every Python started with it on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"import gpu_stand_ins\ngpu_stand_ins.install({version!r})\n"
    )
    return folder


if __name__ == "__main__":
    install(os.environ.get("STAND_IN_TENSORRT", "10.3.0"))
    from facestream.pipeline.cli.main import main

    sys.exit(main(sys.argv[1:]))
