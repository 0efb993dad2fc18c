"""`facestream run` and `facestream stage`: the streaming pipeline's commands.

Wired into the `facestream` command by pipeline/cli/main.py (``add_run_commands(commands)``); every handler
is ``handler(args, config) -> exit code``. ``python -m facestream.pipeline.cli.run run ...`` runs the
same commands without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from pathlib import Path

from ..config import Config

log = logging.getLogger("facestream")

RUN_EPILOG = """\
examples:
  facestream enroll import tests/data/video/gallery
  facestream run --source tests/data/video/short_hamilton_clip.mp4 --events out/events.jsonl \\
      --output out/annotated.mp4 --detections out/detections.jsonl
  facestream run --source door=rtsp://camera.local/stream --source desk=0 --events events.jsonl
  facestream run --workers 2 --stats stats.json --source frames/
  facestream run --source door=rtsp://camera.local/stream --web        # then open http://127.0.0.1:8080/

sources: a video file or image folder (every frame, in order), a single image, a camera index
(0, 1, ...) or an rtsp:// / http(s):// / rtmp:// URL (live: the newest frames win, a lost stream
is reopened with back-off). Prefix ID= to name the stream; otherwise it is named after the file.

Events (JSON lines): track_started, track_identified (identity or "unknown", distance), track_ended,
each with stream_id, frame_index, timestamp, box and track_id, then one "summary" line per stream
with every identity's on-screen intervals. They are also published on the ZeroMQ PUB endpoint
pipeline.endpoints.events. Ctrl-C or SIGTERM stops every process within seconds, outputs flushed.
Exit code: 0 done, 1 a source failed or the pipeline broke, 2 bad arguments, 130/143 stopped by a signal.
Integrations: --mqtt URL (events, presence, Home Assistant discovery), outputs.webhooks, --metrics HOST:PORT.
"""

STAGE_EPILOG = """\
A detect worker connects to pipeline.endpoints.frames (PULL) and faces_in (PUSH); an embed worker to
faces_out (PULL) and descriptors (PUSH); both send their counters to stats. Set those endpoints to
tcp:// addresses of the machine running `facestream run` (the same config file on both machines), or
set pipeline.run_dir to a running pipeline's run directory to add a worker on the same machine.
Workers are stateless and keep serving until stopped (Ctrl-C / SIGTERM); frames a worker held when it
died are re-sent by the source after pipeline.resend_timeout_s.
"""


def display_problem() -> str | None:
    """Why `--show` cannot open a window here, or None."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "--show needs a display but DISPLAY is not set (no X11/Wayland session); use --output FILE instead"
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return "--show: this OpenCV build has no GUI support (opencv-python-headless?); use --output FILE instead"
    return None


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from ..runtime.supervisor import RunOptions, run_pipeline

    if not args.source:
        log.error("no source: give at least one --source (video file, image folder, camera index or URL)")
        return 2
    if args.show:
        problem = display_problem()
        if problem:
            log.error("%s", problem)
            return 2
    if args.workers is not None:
        config.set("pipeline.detect_workers", args.workers, "--workers")
    if args.detect_every is not None:
        config.set("pipeline.detect_every", args.detect_every, "--detect-every")
    if args.max_frames is not None:
        config.set("sources.max_frames", args.max_frames, "--max-frames")
    if args.kiosk:
        config.set("kiosk.enabled", True, "--kiosk")
    quiet = bool(getattr(args, "quiet", False))
    options = RunOptions(
        sources=args.source,
        events=args.events,
        detections=args.detections,
        output=args.output,
        gallery=args.gallery,
        workers=args.workers,
        show=args.show,
        stats=args.stats,
        unknowns=args.unknowns,
        web=args.web,
        preview=args.preview,
        mqtt=args.mqtt,
        metrics=args.metrics,
        progress=not quiet and not args.no_progress,
        report=not quiet,
        log_level=_log_level(),
    )
    return run_pipeline(config, options)


def cmd_stage(args: argparse.Namespace, config: Config) -> int:
    from ..runtime.stage_main import run_stage
    from ..runtime.stages import PipelineError, resolve_endpoints

    if args.threads is not None:
        config.set("pipeline.worker_threads", args.threads, "--threads")
    if args.server_key:
        config.set("security.server_public_key", args.server_key, "--server-key")
    if args.client_key:
        config.set("security.client_secret_key", args.client_key, "--client-key")
    run_dir = config.pipeline.run_dir
    try:
        if run_dir and not Path(run_dir).expanduser().is_dir():
            raise PipelineError(f"pipeline.run_dir {run_dir}: no such directory (is the pipeline running?)")
        endpoints = resolve_endpoints(config, Path(run_dir).expanduser() if run_dir else None)
    except PipelineError as error:
        log.error("%s", error)
        return 2
    name = args.name or f"{args.stage}@{socket.gethostname()}:{os.getpid()}"
    spec = {"config": config.to_dict(), "endpoints": endpoints, "sources": [], "outputs": {}, "stream_fps": {}}
    needs = ("frames", "faces_in") if args.stage == "detect" else ("faces_out", "descriptors")
    log.info("%s: connecting to %s and stats %s", name, ", ".join(endpoints[n] for n in needs), endpoints["stats"])
    return run_stage(args.stage, name, spec)


# Over 60 lines: a flat list of argparse options, one per line: split, a command's options would scatter.
def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """Add `run` and `stage` to the `facestream` sub-commands."""
    run = commands.add_parser(
        "run",
        help="run the streaming pipeline on videos, image folders, cameras or streams",
        description="Frames flow through detect+align, embed and match/track/output stages, each its own "
        "process, connected by ZeroMQ sockets. Identity events, per-frame detections and annotated video come out.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="configuration file")
    run.add_argument("--source", action="append", metavar="[ID=]URI", help="a source (repeat for several)")
    run.add_argument("--events", metavar="FILE", help="identity events as JSON lines (+ a summary line per stream)")
    run.add_argument("--detections", metavar="FILE", help="every face of every processed frame, one JSON line a frame")
    run.add_argument("--output", metavar="FILE", help="annotated video (mp4v); several streams: FILE-<stream>.mp4")
    run.add_argument("--gallery", metavar="PATH", help="gallery database (default: gallery.path in config.yaml)")
    run.add_argument("--workers", type=int, metavar="N", help="detect+align worker processes (pipeline.detect_workers)")
    run.add_argument("--detect-every", type=int, metavar="K", help="run the detector on every K-th frame only")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.add_argument("--stats", metavar="FILE", help="final statistics and summaries as one JSON object")
    run.add_argument(
        "--unknowns",
        metavar="FILE",
        help="each track that ends unknown: its best faces as a JSON line (for `facestream unknowns`)",
    )
    run.add_argument(
        "--kiosk",
        action="store_true",
        help="access_decision events (granted/denied with evidence) per track; see kiosk: in config.yaml",
    )
    run.add_argument("--show", action="store_true", help="show the annotated frames in a window (q quits)")
    run.add_argument(
        "--web",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="serve the web view (live streams, events, health, gallery) on HOST:PORT (default "
        "web.address, 127.0.0.1:8080); another host needs a token ($FACESTREAM_WEB_TOKEN)",
    )
    run.add_argument(
        "--preview",
        action="store_true",
        help="publish annotated frames and unknown faces on the preview endpoint for `facestream serve`",
    )
    run.add_argument("--mqtt", metavar="URL",
                     help="publish events, presence and availability on an MQTT broker: mqtt://host[:port] or "
                          "mqtts://... (outputs.mqtt; password from $FACESTREAM_MQTT_PASSWORD)")  # fmt: skip
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (metrics.address); with --web "
                          "they are also on the web view's /metrics")  # fmt: skip
    run.add_argument("--log-format", choices=("text", "journal"), default="text",
                     help="journal: no timestamps, a <priority> prefix journald reads (systemd services)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    stage = commands.add_parser(
        "stage",
        help="run one more detect or embed worker that joins a running pipeline",
        description="Start one stage alone, e.g. extra detect workers on another machine.",
        epilog=STAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage.add_argument("stage", choices=("detect", "embed"), metavar="NAME", help="detect or embed")
    stage.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="configuration file")
    stage.add_argument(
        "--threads", type=int, metavar="N", help="ONNX Runtime threads (default: pipeline.worker_threads)"
    )
    stage.add_argument("--name", help="name in logs and stats (default: NAME@host:pid)")
    stage.add_argument("--server-key", metavar="FILE",
                       help="tcp:// with CURVE: the server's public key file (security.server_public_key)")  # fmt: skip
    stage.add_argument("--client-key", metavar="FILE",
                       help="tcp:// with CURVE: this worker's .key_secret file (security.client_secret_key); its "
                            ".key must be in the server's security.allowed_clients_dir")  # fmt: skip
    stage.set_defaults(handler=cmd_stage)


def main(argv: list[str] | None = None) -> int:
    """The same commands without the rest of the CLI (global options as `facestream`'s)."""
    from .runner import standalone_main

    return standalone_main(add_run_commands, argv)


if __name__ == "__main__":
    sys.exit(main())
