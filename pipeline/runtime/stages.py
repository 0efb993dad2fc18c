"""Stage processes of `facestream run`: the shared process scaffolding (sockets, the run directory, stats,
control, the `StageProcess` base class) that the source, detect+align (`detect_worker.py`), embed
(`embed_worker.py`) and sink stages are built on.

Processes and sockets (every arrow a real ZeroMQ socket; ``B`` marks the side that binds)::

    source ─PUSH(B) frames──▶ PULL detect+align ×N ─PUSH──▶ PULL(B) faces_in ┐
                                                                           faces queue (supervisor thread)
    sink ◀─PULL(B) descriptors── PUSH embed ×M ◀──PULL── PUSH(B) faces_out ┘
    sink ◀─PULL(B) sink_in── PUSH source        display frames, skip notices, end of stream
    sink ─PUB(B) acks──▶ SUB source             completed frames (file sources: re-send what is missing)
    sink ─PUB(B) events──▶ anyone               identity events as JSON
    every process ─PUSH──▶ PULL(B) stats        supervisor: counters, latency, readiness, final summary
    supervisor ─PUB(B) control──▶ SUB source, sink, local workers   Control("stop"), Control("resend")
    sink ─PUB(B) preview──▶ web view   annotated JPEG frames, unknown faces (run --web / --preview only)

Detect and embed workers only connect and keep no state a run depends on (with ``detector.follow`` a
detect worker follows the faces of the frames it receives, see `pipeline.follow`), so more of them (on
this machine or another one) can join a running pipeline with ``facestream stage detect|embed --config
FILE``: a detect worker connects to ``frames`` and ``faces_in``, an embed worker to ``faces_out`` and
``descriptors``, both to ``stats``. Stage messages are `pipeline.messages` (versioned header + raw
arrays, no pickle); the control plane (acks, stats) is one JSON frame behind a 4-byte magic, see
`encode_json`. A message that does not decode is dropped, logged (rate-limited) and counted in the
stage's ``malformed`` counter, never fatal.

A process started by the supervisor gets the run's spec (a JSON file in the run directory) and its
role; it installs SIGTERM/SIGINT handlers first thing, asks the kernel to send it SIGTERM when the
supervisor dies (Linux), reports ``ready`` once its models are loaded and stops within a few hundred
milliseconds of SIGTERM or Control("stop").
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ...engines.face_batch import FaceBatch
from ...errors import PipelineError
from ..config import Config
from . import messages, security
from .messages import Control, FacesMessage, MessageError

log = logging.getLogger(__name__)

# name -> (what it carries, who binds). Order matters only for documentation and port numbering.
ENDPOINTS: dict[str, str] = {
    "frames": "source PUSH binds; detect workers PULL",
    "faces_in": "faces queue PULL binds (supervisor); detect workers PUSH",
    "faces_out": "faces queue PUSH binds (supervisor); embed workers PULL",
    "descriptors": "sink PULL binds; embed workers PUSH",
    "sink_in": "sink PULL binds; source PUSH (display frames, skip notices, end of stream)",
    "acks": "sink PUB binds; source SUB (completed frame indices)",
    "events": "sink PUB binds; anyone SUB (identity events, JSON)",
    "stats": "supervisor PULL binds; every process PUSH",
    "control": "supervisor PUB binds; source, sink, local workers SUB",
    "preview": "sink PUB binds (run --web/--preview only); web view SUB (annotated JPEGs, unknown faces)",
}
ROLES = ("source", "detect", "embed", "sink")
MAX_IPC_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS
JSON_MAGIC = b"FSJ1"  # control-plane JSON, version 1
MAX_JSON_BYTES = 1 << 20


# ------------------------------------------------------------------------------------------------
# endpoints and the run directory


def make_run_dir(path: str | Path | None) -> tuple[Path, bool]:
    """The private directory for ipc sockets and the run's files (mode 0700) and whether we created it.

    An empty `path` makes a fresh temporary one. A given directory must be ours and not readable by
    others, since anyone who can reach the sockets can inject frames or read faces.
    """
    if not path:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="facestream-")), True
    run_dir = Path(path).expanduser().absolute()
    created = not run_dir.exists()
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"pipeline.run_dir {run_dir}: cannot create: {error.strerror or error}") from None
    info = run_dir.stat()
    if not run_dir.is_dir():
        raise PipelineError(f"pipeline.run_dir {run_dir}: not a directory")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PipelineError(
            f"pipeline.run_dir {run_dir}: must be owned by you and private (mode 0700), "
            f"it is mode {info.st_mode & 0o777:o}; run `chmod 700 {run_dir}` or pick another directory"
        )
    return run_dir, created


def resolve_endpoints(config: Config, run_dir: Path | None) -> dict[str, str]:
    """Every endpoint: `pipeline.endpoints.NAME` when set (tcp://host:port or ipc://path), else ipc in run_dir."""
    configured = config.pipeline.endpoints
    endpoints = {}
    for name in ENDPOINTS:
        value = str(getattr(configured, name) or "")
        if not value:
            if run_dir is None:
                raise PipelineError(
                    f"pipeline.endpoints.{name} is not set and there is no run directory: set pipeline.run_dir "
                    "(same machine) or the tcp:// endpoints (other machines) in the config file"
                )
            value = f"ipc://{run_dir / name}"
        if not value.startswith(("ipc://", "tcp://", "inproc://")):
            raise PipelineError(f"pipeline.endpoints.{name}: {value!r} is not an ipc://, tcp:// or inproc:// address")
        if value.startswith("ipc://") and len(value) - len("ipc://") > MAX_IPC_PATH:
            raise PipelineError(
                f"pipeline.endpoints.{name}: the socket path {value[6:]!r} is longer than {MAX_IPC_PATH} characters "
                "(a Unix socket limit); use a shorter pipeline.run_dir"
            )
        endpoints[name] = value
    return endpoints


def open_socket(
    context: zmq.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    hwm: int | None = None,
    subscribe: bytes | None = None,
) -> zmq.Socket:
    """A socket bound or connected to `endpoint`, with LINGER 0 (a stopping stage never hangs on unsent data).

    tcp:// sockets get CURVE (server when binding, client when connecting) when the process's security settings
    (`security.configure`) say so; a bound ipc socket file is made owner-only.
    """
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        socket.setsockopt(zmq.SNDHWM, hwm)
        socket.setsockopt(zmq.RCVHWM, hwm)
    if subscribe is not None:
        socket.setsockopt(zmq.SUBSCRIBE, subscribe)
    try:
        security.apply(context, socket, endpoint, bind=bind)  # CURVE on tcp:// (pipeline/runtime/security.py)
        if bind:
            socket.bind(endpoint)
            security.restrict_ipc_file(endpoint)
        else:
            socket.connect(endpoint)
    except security.SecurityError as error:
        socket.close()
        raise PipelineError(str(error)) from None
    except zmq.ZMQError as error:
        socket.close()
        what = "bind" if bind else "connect"
        hint = " (another facestream run using the same endpoints?)" if error.errno == zmq.EADDRINUSE else ""
        raise PipelineError(f"cannot {what} {endpoint}: {error}{hint}") from None
    return socket


# ------------------------------------------------------------------------------------------------
# control-plane JSON: acks, stats


def encode_json(payload: dict[str, Any]) -> bytes:
    """One control-plane frame: JSON_MAGIC + compact JSON of an object with a string "type"."""
    return JSON_MAGIC + json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def decode_json(frame: Any) -> dict[str, Any]:
    """The object in one control-plane frame; MessageError when it is not one (so it is counted and dropped)."""
    data = bytes(frame)
    if not data.startswith(JSON_MAGIC):
        raise MessageError(f"control frame starts with {data[:4]!r}, expected {JSON_MAGIC!r}")
    if len(data) > MAX_JSON_BYTES:
        raise MessageError(f"control frame is {len(data)} bytes, more than {MAX_JSON_BYTES}")
    try:
        payload = json.loads(data[len(JSON_MAGIC) :])
    except (ValueError, RecursionError) as error:
        raise MessageError(f"control frame is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise MessageError("control frame is not a JSON object with a string 'type'")
    return payload


def empty_faces(stream_id: str, frame_index: int, timestamp: float, width: int, height: int) -> FacesMessage:
    """A FacesMessage with no face: a frame the detector found nothing in, or (from the source) did not run on."""
    return FacesMessage(stream_id, frame_index, timestamp, width, height, FaceBatch(), scanned=False)


# ------------------------------------------------------------------------------------------------
# statistics


# Latency histogram buckets (upper bounds, ms; a value equal to a bound falls in that bucket).
HISTOGRAM_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


class StageStats:
    """Counters and recent latencies of one process, sent to the supervisor as JSON.

    Latency figures cover the last `window` values of each name (a whole demo-length run).
    """

    def __init__(self, window: int = 4096) -> None:
        self.counters: dict[str, int] = {}
        self.latencies: dict[str, deque[float]] = {}
        self.window = window
        # Whole-life histograms (Prometheus, pipeline/integrations/metrics.py): per name, counts per bucket of
        # HISTOGRAM_BOUNDS_MS (the last one for larger values), and the sum in ms.
        self.histograms: dict[str, tuple[np.ndarray, list[float]]] = {}

    def count(self, name: str, amount: int = 1) -> None:
        """Add `amount` to the counter `name`."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def latency(self, name: str, seconds: float) -> None:
        """Record one latency of `name` (kept in milliseconds, the last `window` values)."""
        self.latencies.setdefault(name, deque(maxlen=self.window)).append(seconds * 1000.0)
        counts, total = self.histograms.setdefault(name, (np.zeros(len(HISTOGRAM_BOUNDS_MS) + 1, np.int64), [0.0]))
        counts[int(np.searchsorted(HISTOGRAM_BOUNDS_MS, seconds * 1000.0))] += 1
        total[0] += seconds * 1000.0

    def snapshot(self) -> dict[str, Any]:
        """Counters and latency percentiles (p50/p95/p99/max/mean in ms) as a JSON-able dict."""
        latency = {}
        for name, values in self.latencies.items():
            if values:
                array = np.fromiter(values, np.float64)
                latency[name] = {
                    "p50_ms": round(float(np.percentile(array, 50)), 2),
                    "p95_ms": round(float(np.percentile(array, 95)), 2),
                    "p99_ms": round(float(np.percentile(array, 99)), 2),
                    "max_ms": round(float(array.max()), 2),
                    "count": int(array.size),
                    "mean_ms": round(float(array.mean()), 2),
                }
        histograms = {name: {"counts": counts.tolist(), "sum_ms": round(total[0], 3)}
                      for name, (counts, total) in self.histograms.items()}  # fmt: skip
        return {"counters": dict(self.counters), "latency": latency, "histograms": histograms}


class RateLimitedLog:
    """Log the first few occurrences of a recurring problem, then one line every `every` occurrences."""

    def __init__(self, logger: logging.Logger, first: int = 5, every: int = 100) -> None:
        self.logger, self.first, self.every, self.seen = logger, first, every, 0

    def warning(self, text: str, *args: Any) -> None:
        """Log `text % args` with the running count, when this occurrence is one to log."""
        self.seen += 1
        if self.seen <= self.first or self.seen % self.every == 0:
            self.logger.warning(text + " (%d so far)", *args, self.seen)


# ------------------------------------------------------------------------------------------------
# the process scaffolding


def die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to SIGTERM us when the supervisor dies (so a kill -9 of it leaves no orphan)."""
    if not parent_pid:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # it died before prctl took effect
        raise SystemExit(0)


class StageProcess:
    """One stage process: sockets, stop flag, stats reporting, control messages. Subclasses implement `run`."""

    role = "stage"

    def __init__(self, name: str, spec: dict[str, Any], *, parent_pid: int | None = None) -> None:
        self.name = name
        self.spec = spec
        self.config = Config.from_dict(spec["config"], "spec.json")
        self.endpoints: dict[str, str] = spec["endpoints"]
        self.parent_pid = parent_pid
        self.instance = f"{name}:{os.getpid()}:{time.time():.3f}"
        self.stopping = False
        self.stop_reason = ""
        self.stats = StageStats()
        self.malformed_log = RateLimitedLog(log)
        self.context = zmq.Context.instance()
        try:
            security.configure(security.load_security(self.config, self.endpoints, binds=bool(spec.get("local"))))
        except security.SecurityError as error:
            raise PipelineError(str(error)) from None
        self._stats_socket = open_socket(self.context, zmq.PUSH, self.endpoints["stats"], bind=False, hwm=1000)
        self._control: zmq.Socket | None = None
        self.models: list[Any] = []  # detector / embedder: closed in close() (their GPU sessions hold a context)
        self._last_stats = 0.0
        self._stats_interval = float(self.config.pipeline.stats_interval_s)
        self._ready = False
        self.extra_stats: Callable[[], dict[str, Any]] = dict

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the stage to stop at its next check (the first reason is kept for the log)."""
        if not self.stopping:
            log.info("%s: stopping (%s)", self.name, reason)
        self.stopping, self.stop_reason = True, self.stop_reason or reason

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a stop instead of killing the process mid-message."""
        def handler(signum: int, _frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def subscribe_control(self) -> zmq.Socket:
        """Subscribe to the supervisor's control messages (stop, resend, workers_ready)."""
        self._control = open_socket(self.context, zmq.SUB, self.endpoints["control"], bind=False, subscribe=b"")
        return self._control

    def handle_control(self) -> list[Control]:
        """Drain the control socket; "stop" is handled here, other commands are returned."""
        commands = []
        while self._control is not None:
            try:
                message = messages.recv(self._control, zmq.NOBLOCK)
            except zmq.Again:
                break
            except MessageError as error:
                self.malformed(f"control: {error}")
                continue
            if not isinstance(message, Control):
                self.malformed(f"control: unexpected {type(message).__name__}")
            elif message.command == "stop":
                self.request_stop("stop requested by the supervisor")
            else:
                commands.append(message)
        return commands

    def orphaned(self) -> bool:
        """True when the supervisor that started this process is gone."""
        return bool(self.parent_pid) and os.getppid() != self.parent_pid

    def malformed(self, reason: str) -> None:
        """Count a dropped malformed message and log it (rate-limited); never fatal."""
        self.stats.count("malformed")
        self.malformed_log.warning("%s: dropped a malformed message: %s", self.name, reason)

    # -- stats ---------------------------------------------------------------------------------

    def ready(self) -> None:
        """Tell the supervisor this stage has loaded its models and opened its sockets."""
        self._ready = True
        self.send_stats(force=True)

    def send_stats(self, force: bool = False, final: bool = False, **extra: Any) -> None:
        """Send counters and latencies to the supervisor, at most every `pipeline.stats_interval_s` unless
        `force` or `final`; also notices an orphaned process. Best effort: never blocks."""
        now = time.monotonic()
        if not force and not final and now - self._last_stats < self._stats_interval:
            return
        self._last_stats = now
        if self.orphaned():
            self.request_stop("the supervisor is gone")
        payload = {
            "type": "stats",
            "name": self.name,
            "role": self.role,
            "pid": os.getpid(),
            "instance": self.instance,
            "ready": self._ready,
            "final": final,
            "time": time.time(),
            **self.stats.snapshot(),
            **self.extra_stats(),
            **extra,
        }
        try:
            self._stats_socket.send(encode_json(payload), zmq.NOBLOCK)
        except zmq.Again:
            pass  # nobody collecting (a stand-alone worker without a run): stats are best effort
        except (TypeError, ValueError) as error:
            log.error("%s: cannot encode stats: %s", self.name, error)

    def close(self) -> None:
        """Close the models (a TensorRT session holds GPU memory), then every socket (the stats socket lingers up
        to 1 s so the final stats arrive) and the context."""
        from ...engines.backend import close_gpu_sessions

        for model in self.models:
            try:
                model.close()
            except Exception as error:  # closing anyway: the sockets below must still close
                log.warning("%s: closing %s failed: %s", self.name, type(model).__name__, error)
        close_gpu_sessions()  # anything else still open (the atexit backstop would otherwise do it)
        # The final stats should reach the supervisor: give them a moment, never more.
        for socket in list(self._sockets()):
            socket.close(linger=1000 if socket is self._stats_socket else 0)
        security.stop(self.context)
        # Terminating the context lets ZeroMQ finish closing (bound ipc socket files are removed) before exit.
        self.context.destroy(linger=0)

    def _sockets(self) -> Iterator[zmq.Socket]:
        for value in vars(self).values():
            if isinstance(value, zmq.Socket) and not value.closed:
                yield value

    def send_until_stopped(self, socket: zmq.Socket, message: messages.Message) -> bool:
        """Send with back-pressure (wait while the peer is at its high-water mark) but stay stoppable."""
        frames = messages.encode(message)
        while not self.stopping:
            try:
                socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                socket.poll(100, zmq.POLLOUT)
                self.handle_control()
                self.send_stats()
                if self.orphaned():
                    self.request_stop("the supervisor is gone")
        return False

    def run(self) -> int:
        """The stage's main loop until it is done or stopped; the process exit code."""
        raise NotImplementedError


def worker_threads(config: Config, role: str) -> int:
    """ONNX Runtime threads for one worker: `pipeline.worker_threads`, else cores shared by the detect workers."""
    configured = int(config.pipeline.worker_threads)
    if configured > 0:
        return configured
    from ...engines.runtime import default_threads

    if role == "embed":
        return 1  # ~3 ms a face: one thread keeps up with several detect workers and leaves them the cores
    return max(1, default_threads() // max(1, int(config.pipeline.detect_workers)))


def model_cache_dir(config: Config) -> Path:
    """Where the workers' built model artefacts are cached: ``cache_dir``, else the default cache folder."""
    from ...engines.cachedir import default_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
