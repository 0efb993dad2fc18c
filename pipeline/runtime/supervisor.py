"""`facestream run`: start every stage process, watch them, restart crashed workers, report, stop cleanly.

The supervisor is the process the user started. It

* makes the private run directory (0700) for the ipc sockets, the run's ``spec.json`` (what every stage
  needs: config, endpoints, sources, outputs) and ``processes.json`` (name, role and pid of every
  process it started, rewritten at each start: for operators and tests);
* binds ``stats`` (PULL: counters from every process) and ``control`` (PUB: Control("stop"/"resend")),
  and runs the faces queue — a ZeroMQ streamer between ``faces_in`` and ``faces_out`` in a thread — so
  any number of detect and embed workers, local or remote, only ever connect;
* starts the sink, the embed workers, the detect workers and the source, each as
  ``facestream.pipeline.runtime.stage_main ROLE`` (STAGE_COMMAND) in its own process group (a Ctrl-C at the terminal
  reaches only the supervisor, which then stops the others in order);
* restarts a detect or embed worker that dies (up to ``pipeline.max_restarts`` per worker slot) and
  tells the source to re-send every frame still in flight, since it cannot know which ones the dead
  worker held: in file mode no frame goes missing (the sink drops the duplicates). A worker exiting
  with code 2 (bad model file, bad endpoint) is not restarted: the run stops with its error. The
  source and the sink hold the run's state; if one of them dies the run stops with an error;
* prints throughput, latency and queue depth per stage every ``pipeline.report_interval_s`` and at the
  end (``--stats FILE`` also gets them as JSON, with the per-identity summaries), and a progress bar
  for file sources when stderr is a terminal;
* on Ctrl-C or SIGTERM sends every process SIGTERM: the sink processes what is in order, ends the
  tracks, writes the summaries and closes its files; anything still running after
  ``pipeline.shutdown_grace_s`` is killed. A second Ctrl-C kills at once. Children also get SIGTERM from
  the kernel if the supervisor itself dies (Linux PR_SET_PDEATHSIG), so no process outlives a run.

Queue depth per stage is measured, not guessed: messages sent to the stage minus messages the
stage's processes received (ZeroMQ does not expose its queues); messages lost with a killed worker
count as queued until the run ends.

Its parts in this package: `children` (a stage process's slot, command and environment), `faces_queue`,
`reports` (the stats board and report lines) and `preflight` (checks before anything starts).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ..config import Config
from ..sources.spec import SourceError, SourceSpec, parse_sources, probe_source
from . import messages, security
from .children import STAGE_COMMAND, Child, malloc_environment
from .faces_queue import FacesQueue
from .messages import Control
from .preflight import check_not_in_use, check_writable
from .reports import StatsBoard, format_report
from .stages import (
    ENDPOINTS,
    MessageError,
    PipelineError,
    decode_json,
    make_run_dir,
    open_socket,
    resolve_endpoints,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143
POLL_MS = 100


@dataclass
class RunOptions:
    """What `facestream run` was asked for (beyond the config file)."""

    sources: list[str]
    events: str | None = None
    detections: str | None = None
    output: str | None = None
    gallery: str | None = None
    workers: int | None = None
    show: bool = False
    stats: str | None = None
    unknowns: str | None = None  # unknown tracks' best faces, JSON lines (pipeline/domain/unknowns.py)
    web: str | None = None  # serve the web view here (HOST:PORT; "" = web.address); pipeline/web/app.py
    web_token: str | None = None
    preview: bool = False  # publish annotated frames and unknown faces on `preview` (for `facestream serve`)
    progress: bool = True  # a tqdm bar on stderr when it is a terminal
    report: bool = True  # the periodic stats lines
    log_level: str = "warning"
    mqtt: str | None = None  # broker URL (outputs.mqtt.url); pipeline/integrations/mqtt.py
    metrics: str | None = None  # serve Prometheus metrics on HOST:PORT (metrics.address); integrations/metrics.py


class Supervisor:
    """Runs one `facestream run`: checks, run directory, spec.json, the processes, restarts, stats, shutdown."""

    def __init__(self, config: Config, options: RunOptions) -> None:
        self.config = config
        self.options = options
        self.pipeline = config.pipeline
        if options.workers is not None:
            self.pipeline.detect_workers = max(1, int(options.workers))
        self.children: list[Child] = []
        self.signal_received: int | None = None
        self.fatal: str | None = None
        self.configuration_error = False  # a worker exited with EXIT_USAGE: the run exits with it too
        self.board = StatsBoard()
        self.run_dir: Path | None = None
        self.created_run_dir = False
        self.started = time.monotonic()
        self.progress: Any = None
        self.ready_announced = 0.0  # when Control("workers_ready") was last sent
        self.web: Any = None  # pipeline.web.WebServer with --web
        self.health_board = StatsBoard()  # the same snapshots, its own "recent" rates (health.json, web view)
        self.health_board.snapshots, self.health_board.started = self.board.snapshots, self.board.started
        self.next_health = 0.0
        self.integrations: Any = None  # integrations.bridge.EventBridge (MQTT, webhooks, identification counts)
        self.metrics_server: Any = None  # integrations.metrics.MetricsServer with --metrics
        self.metrics_snapshot: dict[str, Any] | None = None  # what /metrics shows (refreshed every second)

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare(self) -> tuple[list[SourceSpec], dict[str, Any]]:
        from ...engines.models import model_path

        specs = parse_sources(self.options.sources)
        for kind in ("detector", "landmarks", "embedder"):  # a missing model file: say so before starting anything
            model_path(kind, getattr(self.config.models, kind))
        if self.config.engine.backend == "tensorrt":  # TensorRT asked for but absent: before any worker starts
            from ...engines.backend import BackendError, choose_backend

            try:
                choose_backend("tensorrt")
            except BackendError as error:
                raise PipelineError(str(error)) from None
        for path in (self.options.events, self.options.detections, self.options.output, self.options.stats):
            if path:
                check_writable(Path(path))
        if self.options.gallery is not None or self.config.gallery.path:
            from ..sinks.matcher import open_matcher

            open_matcher(self.config, self.options.gallery).close()  # a corrupt gallery fails here, clearly
        self.run_dir, self.created_run_dir = make_run_dir(self.pipeline.run_dir)
        check_not_in_use(self.run_dir)
        endpoints = resolve_endpoints(self.config, self.run_dir)
        try:  # keys are checked before anything starts; this process binds stats, control and the faces queue
            security.configure(security.load_security(self.config, endpoints, binds=True))
        except security.SecurityError as error:
            raise PipelineError(str(error)) from None
        fps = {}
        for spec in specs:
            if not spec.live or spec.kind in ("replay", "loop"):
                fps[spec.stream_id] = probe_source(spec, self.config).fps
        outputs = {
            "events": _absolute(self.options.events), "detections": _absolute(self.options.detections),
            "video": _absolute(self.options.output), "show": self.options.show,
            "gallery": _absolute(self.options.gallery), "web": self._web_feed,
            "images": bool(self.options.output or self.options.show or self._web_feed or self.options.unknowns),
            "unknowns": _absolute(self.options.unknowns),
        }  # fmt: skip
        spec = {"config": self.config.to_dict(), "endpoints": endpoints, "sources": [s.to_json() for s in specs],
                "outputs": outputs, "stream_fps": fps, "run_dir_created": self.created_run_dir}  # fmt: skip
        return specs, spec

    def _write_private(self, name: str, payload: Any) -> Path:
        assert self.run_dir is not None
        path = self.run_dir / name
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
        os.replace(temporary, path)
        return path

    def _write_processes(self) -> None:
        self._write_private("processes.json", {
            "supervisor": os.getpid(),
            "processes": [{"name": c.name, "role": c.role, "pid": c.process.pid if c.process else None,
                           "pids": c.pids, "restarts": c.restarts, "ready": c.ready} for c in self.children],
        })  # fmt: skip

    def _start(self, child: Child) -> None:
        threads = "1"
        if child.role in ("detect", "embed"):
            from .stages import worker_threads

            threads = str(worker_threads(self.config, child.role))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        env.update(malloc_environment(self.pipeline, os.environ))
        argv = [*STAGE_COMMAND, child.role, "--spec", str(self.spec_path),
                "--name", child.name, "--parent", str(os.getpid()), "--log-level", self.options.log_level]  # fmt: skip
        child.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         process_group=0)  # fmt: skip
        child.pids.append(child.process.pid)
        child.ready = False
        child.exit_code = None
        log.info("started %s (pid %d)", child.name, child.process.pid)

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Prepare, start every process, supervise until the sources are done or a signal; the exit code."""
        try:
            specs, spec = self._prepare()
        except BaseException as error:
            from ...errors import GalleryError

            if self.created_run_dir and self.run_dir is not None:  # refused before starting: leave nothing behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            # ModelNotFoundError is an OSError
            if not isinstance(error, SourceError | PipelineError | OSError | GalleryError):
                raise
            log.error("%s", error)
            return EXIT_USAGE
        self.spec_path = self._write_private("spec.json", spec)
        context = zmq.Context()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        faces_queue = None
        code = EXIT_FAILED
        try:
            endpoints = spec["endpoints"]
            self.stats = open_socket(context, zmq.PULL, endpoints["stats"], bind=True, hwm=100_000)
            self.control = open_socket(context, zmq.PUB, endpoints["control"], bind=True)
            faces_queue = FacesQueue(context, endpoints, int(self.pipeline.faces_hwm)).start()
            self.children = (
                [Child("sink", "sink")]
                + [Child(f"embed-{i + 1}", "embed") for i in range(max(1, int(self.pipeline.embed_workers)))]
                + [Child(f"detect-{i + 1}", "detect") for i in range(max(1, int(self.pipeline.detect_workers)))]
                + [Child("source", "source")]
            )
            self._start_web(endpoints)
            self._start_integrations(endpoints, [s.stream_id for s in specs])
            for child in self.children:
                self._start(child)
            self._write_processes()
            log.info("run directory %s; events published on %s", self.run_dir, endpoints["events"])
            self._open_progress(specs)
            reason = self._watch()
            code = self._stop(reason)
            if self.configuration_error:
                code = EXIT_USAGE
        except PipelineError as error:
            log.error("%s", error)
            self._stop("error")
            code = EXIT_USAGE
        finally:
            self._release(context, faces_queue, previous)
        code = self._finish(code)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.created_run_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return code

    def _release(self, context: zmq.Context, faces_queue: FacesQueue | None, previous: dict[int, Any]) -> None:
        """What this process started for the run, stopped in order; the signal handlers it replaced, back."""
        if self.integrations is not None:  # after the sink: its last events are delivered
            self.integrations.stop()
        if self.web is not None:
            self.web.stop()
        if faces_queue is not None:
            faces_queue.stop()
        self._drain_stats(0)
        security.stop(context)
        context.destroy(linger=0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if self.progress is not None:
            self.progress.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signal_received is not None:  # the second Ctrl-C: no more waiting
            for child in self.children:
                if child.alive:
                    child.process.kill()
            return
        self.signal_received = signum

    def _drain_stats(self, timeout_ms: int) -> None:
        socket = getattr(self, "stats", None)
        if socket is None or socket.closed:
            return
        if not socket.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                payload = decode_json(socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except MessageError as error:
                log.warning("stats: dropped a malformed message: %s", error)
                continue
            self.board.update(payload)
            for child in self.children:
                ours = child.process is not None and payload.get("pid") == child.process.pid
                if ours and payload.get("ready") and not child.ready:
                    child.ready = True
                    self._write_processes()

    def _watch(self) -> str:
        """Until the run ends: the reason ("finished", "SIGINT", "SIGTERM", "error", "quit")."""
        next_report = time.monotonic() + float(self.pipeline.report_interval_s)
        while True:
            self._drain_stats(POLL_MS)
            if self.signal_received is not None:
                return signal.Signals(self.signal_received).name
            for child in self.children:
                if child.process is None or child.exit_code is not None:
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                child.exit_code = code
                outcome = self._exited(child, code)
                if outcome:
                    return outcome
            self._announce_ready()
            self._write_health()
            self._update_progress()
            if self.options.report and time.monotonic() >= next_report:
                next_report = time.monotonic() + float(self.pipeline.report_interval_s)
                self._say(format_report(self.board.stages(), time.monotonic() - self.started))

    @property
    def _web_feed(self) -> bool:
        """Annotated frames on the preview socket: for the web view, and for MQTT snapshots."""
        mqtt = self.config.outputs.mqtt
        snapshots = bool((self.options.mqtt or mqtt.url) and mqtt.snapshots)
        return self.options.web is not None or self.options.preview or snapshots

    def _start_web(self, endpoints: dict[str, str]) -> None:
        """--web: the web view in threads of this process, fed by the sink's events and preview sockets."""
        if self.options.web is None:
            return
        from ..web.address import WebError
        from ..web.server import WebServer

        try:
            self.web = WebServer(self.config, endpoints, address=self.options.web or None, token=self.options.web_token,
                                 gallery=self.options.gallery or self.config.gallery.path,
                                 unknowns=[self.options.unknowns] if self.options.unknowns else None)  # fmt: skip
            self.web.metrics = lambda: self.metrics_snapshot
            url = self.web.start()
        except WebError as error:
            self.web = None
            raise PipelineError(str(error)) from None
        self._say(f"web view: {url}")

    def _start_integrations(self, endpoints: dict[str, str], streams: list[str]) -> None:
        """MQTT and webhooks (a thread reading the events PUB socket) and the Prometheus metrics server."""
        from ..integrations.bridge import start_integrations
        from ..integrations.metrics import MetricsServer

        address = self.options.metrics or self.config.metrics.address
        outputs = self.config.outputs
        wanted = (self.options.mqtt or outputs.mqtt.url or outputs.webhooks or address
                  or self.config.metrics.textfile or self.options.web is not None)  # fmt: skip
        if not wanted:  # nothing would read the bridge's events or counts
            return
        try:
            self.integrations = start_integrations(self.config, endpoints, streams,
                                                   self.options.gallery or self.config.gallery.path,
                                                   mqtt_url=self.options.mqtt)  # fmt: skip
        except ValueError as error:
            raise PipelineError(str(error)) from None
        if address:
            from ..web.address import WebError, parse_address

            try:
                host, port = parse_address(address, default_port=9108)
                self.metrics_server = MetricsServer(host, port, lambda: self.metrics_snapshot)
                self._say(f"metrics: {self.metrics_server.start()}")
            except (WebError, OSError) as error:
                self.metrics_server = None
                raise PipelineError(f"--metrics {address}: {getattr(error, 'strerror', None) or error}") from None

    def _metrics_extras(self) -> dict[str, Any]:
        """What /metrics adds to the stats: deliveries, identifications, gallery size."""
        people = [s.get("gallery_people") for s in self.board.of_role("sink") if s.get("gallery_people") is not None]
        extras: dict[str, Any] = {"gallery_people": people[-1] if people else None}
        if self.integrations is not None:
            extras["integrations"] = self.integrations.stats()
            extras["identifications"] = self.integrations.identifications.snapshot()
        return extras

    def _write_metrics_textfile(self) -> None:
        path = self.config.metrics.textfile
        if not path or self.metrics_snapshot is None:
            return
        from ..integrations.metrics import render

        target = Path(path).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(render(self.metrics_snapshot))
            os.replace(temporary, target)  # a collector never reads half a file
        except OSError as error:
            log.warning("metrics.textfile %s: %s", target, error.strerror or error)

    def _write_health(self) -> None:
        """Every second: every stage's rates, latencies, queues and drops into health.json in the run directory
        (what `facestream serve` shows) and to the web view."""
        now = time.monotonic()
        if now < self.next_health:
            return
        self.next_health = now + 1.0
        snapshot = {"time": time.time(), "elapsed_s": round(now - self.started, 3),
                    "stages": self.health_board.stages(), "streams": self.board.stream_stats(),
                    "processes": [{"name": c.name, "role": c.role, "ready": c.ready, "restarts": c.restarts,
                                   "alive": c.alive} for c in self.children]}  # fmt: skip
        try:
            self._write_private("health.json", snapshot)
        except OSError as error:
            log.debug("health.json: %s", error)
        if self.web is not None:
            self.web.set_health(snapshot)
        self.metrics_snapshot = {**snapshot, "restarts": {c.name: c.restarts for c in self.children},
                                 **self._metrics_extras()}  # fmt: skip
        self._write_metrics_textfile()

    def _announce_ready(self) -> None:
        """Once every worker and the sink have loaded their models, tell the source (live capture waits
        for this). Repeated once a second: a SUB socket that connected late still hears it."""
        now = time.monotonic()
        if now < self.ready_announced + 1.0:
            return
        if all(child.ready for child in self.children if child.role in ("detect", "embed", "sink")):
            if not self.ready_announced:
                log.info("workers ready after %.1f s", now - self.started)
            self.ready_announced = now
            messages.send(self.control, Control("workers_ready"), zmq.NOBLOCK)

    def _exited(self, child: Child, code: int) -> str | None:
        """React to a child's exit; a reason when the run is over."""
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if child.role == "sink":
            self._drain_stats(200)
            if code == 0:
                quit_ = any(s.get("quit") for s in self.board.of_role("sink"))
                return "quit" if quit_ else "finished"
            self.fatal = f"the sink {how}; the run cannot go on without it (see its log above)"
            return "error"
        if child.role == "source":
            if code == 0:
                log.info("the source has sent everything")
                return None
            self.fatal = f"the source {how} (see its log above)"
            return "error"
        if code == EXIT_USAGE:  # a configuration problem (model file, backend, engine): never restarted
            self.fatal = f"{child.name} {how}: a configuration or model problem (see its log above)"
            self.configuration_error = True
            return "error"
        if child.restarts >= int(self.pipeline.max_restarts):
            self.fatal = f"{child.name} {how} and was already restarted {child.restarts} times: giving up"
            return "error"
        child.restarts += 1
        log.warning("%s %s: restarting it (restart %d of at most %d) and re-sending its frames", child.name, how,
                    child.restarts, self.pipeline.max_restarts)  # fmt: skip
        self._start(child)
        self._write_processes()
        # Whatever the dead worker held is gone; the source cannot know which frames that was.
        messages.send(self.control, Control("resend"))
        return None

    def _stop(self, reason: str) -> int:
        """Stop every process: SIGTERM, wait up to the grace period, then SIGKILL. The exit code."""
        if reason in ("SIGINT", "SIGTERM"):
            log.warning("%s received: stopping every process (outputs are flushed)", reason)
        try:
            messages.send(self.control, Control("stop"), zmq.NOBLOCK)
        except (zmq.ZMQError, AttributeError):
            pass
        for child in self.children:
            if child.alive:
                try:
                    child.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + float(self.pipeline.shutdown_grace_s)
        while any(child.alive for child in self.children) and time.monotonic() < deadline:
            self._drain_stats(50)
        for child in self.children:
            if child.alive:
                log.warning("%s did not stop within %.1f s: killing it", child.name, self.pipeline.shutdown_grace_s)
                child.process.kill()
            if child.process is not None:
                child.process.wait()
                child.exit_code = child.process.returncode
        self._drain_stats(100)
        self.stop_reason = reason
        return {"SIGINT": EXIT_SIGINT, "SIGTERM": EXIT_SIGTERM, "error": EXIT_FAILED}.get(reason, EXIT_OK)

    # -- reporting -------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def _open_progress(self, specs: list[SourceSpec]) -> None:
        if not self.options.progress or not sys.stderr.isatty():
            return
        from tqdm import tqdm

        counts = [probe_source(s, self.config).frame_count for s in specs if not s.live]
        total = sum(c for c in counts if c) if counts and all(counts) and not any(s.live for s in specs) else None
        self.progress = tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)

    def _update_progress(self) -> None:
        if self.progress is not None:
            done = self.board.processed()
            if done > self.progress.n:
                self.progress.update(done - self.progress.n)

    def _finish(self, code: int) -> int:
        elapsed = time.monotonic() - self.started
        stages = self.board.stages()
        errors = self.board.errors()
        if self.fatal:
            log.error("%s", self.fatal)
        for error in errors:
            log.error("source %s", error)
        if code == EXIT_OK and errors:
            code = EXIT_FAILED
        streams = self.board.stream_stats()
        summaries = self.board.summaries()
        report = {
            "exit_code": code,
            "stopped_by": getattr(self, "stop_reason", "error"),
            "elapsed_s": round(elapsed, 3),
            "streams": streams,
            "stages": stages,
            "restarts": {c.name: c.restarts for c in self.children},
            "processes": {c.name: c.pids for c in self.children},
            "errors": errors + ([self.fatal] if self.fatal else []),
            "summaries": summaries,
            **self._metrics_extras(),
        }
        self.metrics_snapshot = report  # the final figures: /metrics and metrics.textfile agree with --stats
        self._write_metrics_textfile()
        if self.options.stats:
            path = Path(self.options.stats)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if self.options.report and self.children:
            self._say(format_report(stages, elapsed, final=True))
            restarts = sum(c.restarts for c in self.children)
            dropped = sum(info.get("dropped", 0) for info in streams.values())
            resent = sum(info.get("resent", 0) for info in streams.values())
            self._say(f"  {self.board.processed()} frames processed, {dropped} dropped (live), {resent} re-sent, "
                      f"{restarts} worker restarts")  # fmt: skip
        from ..sinks.records import describe_summary

        for record in summaries.values():
            print("\n".join(describe_summary(record)), flush=True)
        return code


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


def run_pipeline(config: Config, options: RunOptions) -> int:
    """Run the whole pipeline until the sources end, a signal, or a fatal error; the exit code."""
    return Supervisor(config, options).run()


__all__ = ["ENDPOINTS", "RunOptions", "Supervisor", "run_pipeline"]
