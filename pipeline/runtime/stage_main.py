"""A stage process's entry point: ``python -m facestream.pipeline.runtime.stage_main ROLE --spec FILE --name NAME``.

The supervisor (pipeline/runtime/supervisor.py, the command in pipeline/runtime/children.py) starts each stage
this way; `facestream stage` calls `run_stage` in its own process. Kept apart from pipeline/runtime/stages.py
(the stage base class; the workers are in detect_worker.py and embed_worker.py) so that the base module does
not import the stages built on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ...errors import FacestreamError, PipelineError
from ..sinks.process import SinkStage
from ..sources.process import SourceStage
from .detect_worker import DetectWorker
from .embed_worker import EmbedWorker
from .logs import configure_stage_logging
from .stages import ROLES, StageProcess, die_with_parent

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# process entry point


def stage_class(role: str) -> type[StageProcess]:
    """The StageProcess subclass for a role: detect, embed, source or sink."""
    if role == "detect":
        return DetectWorker
    if role == "embed":
        return EmbedWorker
    if role == "source":
        return SourceStage
    if role == "sink":
        return SinkStage
    raise PipelineError(f"unknown stage {role!r}; stages: {', '.join(ROLES)}")


def run_stage(role: str, name: str, spec: dict[str, Any], parent_pid: int | None = None) -> int:
    """Run one stage process until it finishes or is stopped; the exit code."""
    try:
        stage = stage_class(role)(name, spec, parent_pid=parent_pid)
    except FacestreamError as error:  # e.g. a missing or unreadable CURVE key file, a bad spec.json
        log.error("%s: %s", name, error)
        return 2
    stage.install_signal_handlers()
    if _EARLY_STOP:
        stage.request_stop("SIGTERM during start-up")
    try:
        code = stage.run()
    except FacestreamError as error:  # configuration, model, endpoint...: a restart would fail the same way
        log.error("%s: %s", name, error)
        code = 2
    finally:
        stage.send_stats(final=True)
        stage.close()
    return code


_EARLY_STOP: list[int] = []  # signals that arrived before the stage installed its own handlers


def main(argv: list[str] | None = None) -> int:
    """`python -m facestream.pipeline.runtime.stage_main ROLE --spec FILE --name NAME`: how the supervisor starts
    a stage."""
    # A handler before anything slow: a SIGTERM during start-up must not leave a traceback or half-written files.
    signal.signal(signal.SIGTERM, lambda signum, _frame: _EARLY_STOP.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    parser = argparse.ArgumentParser(prog="facestream-stage")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--spec", required=True, help="the run's spec.json")
    parser.add_argument("--name", required=True)
    parser.add_argument("--parent", type=int, default=0, help="supervisor pid: exit when it dies")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    configure_stage_logging(args.log_level, args.name)
    die_with_parent(args.parent)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    spec["local"] = True
    code = run_stage(args.role, args.name, spec, parent_pid=args.parent or None)
    if args.parent and os.getppid() != args.parent:
        clean_up_after_supervisor(Path(args.spec).parent, bool(spec.get("run_dir_created")))
    exit_past_stuck_threads(code)
    return code


def exit_past_stuck_threads(code: int) -> None:
    """Exit now (outputs are closed and flushed) when a thread is still running, e.g. a camera read that hangs.

    At interpreter exit such a thread is ended by unwinding its stack; through OpenCV's or ONNX Runtime's
    C++ frames that aborts the process ("terminate called without an active exception"). `os._exit` ends it
    without unwinding. With no other thread left the normal exit runs."""
    import threading

    others = [t.name for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if not others:
        return
    log.debug("exiting past running threads: %s", ", ".join(others))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def clean_up_after_supervisor(run_dir: Path, created: bool) -> None:
    """The supervisor was killed (it cleans up itself otherwise): its stages, exiting, remove what it would
    have: the run directory it created, or its spec.json, health.json and processes.json in a given one.
    Every stage tries; whichever comes first does it."""
    import shutil

    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in ("spec.json", "health.json", "processes.json"):
        try:
            (run_dir / name).unlink()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
