"""`facestream serve`: the web view of a running pipeline (`run --web` serves the same page from the run itself).

Wired into the `facestream` command by pipeline/cli/main.py (``add_web_commands(commands)``). ``python -m
facestream.pipeline.cli.serve serve ...`` runs the same command without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config import Config

log = logging.getLogger("facestream")

EPILOG = """\
examples:
  facestream run --source door=rtsp://camera/door --preview --unknowns unknowns.jsonl \\
      --config shared.yaml                          # shared.yaml: pipeline.run_dir: /run/user/1000/fs
  facestream serve --run-dir /run/user/1000/fs --unknowns unknowns.jsonl     # http://127.0.0.1:8080/
  FACESTREAM_WEB_TOKEN=$(openssl rand -hex 16) facestream serve --address 0.0.0.0:8080 --run-dir DIR
  facestream serve --gallery gallery.db            # gallery management only (no pipeline running)

The page shows the live annotated streams, the events as they happen, every stage's rate, latency,
queue and drops, the gallery (people with thumbnails of samples enrolled from the page; enrol from a
photo, rename, delete) and the unknown faces grouped into "unknown person 1, 2, ..." (enrol one in
one click). A run started with --web serves it itself; `serve` attaches to a run's endpoints: events,
and (when the run was started with --preview or --web) annotated frames and unknown faces on the
private preview endpoint; health comes from health.json in the run directory.

Security: 127.0.0.1 by default. Any other address needs a token ($FACESTREAM_WEB_TOKEN, web.token or
--token; at least 16 characters): the page asks for it once (a cookie), scripts send
"Authorization: Bearer TOKEN". Plain HTTP: put it behind a TLS reverse proxy or use an SSH tunnel
(ssh -L 8080:127.0.0.1:8080 host) when the network is not trusted.

Exit code: 0 when stopped by Ctrl-C or SIGTERM once serving (open pages are disconnected, the gallery
closed; 130 when interrupted while starting), 2 when the address or the run directory cannot be used.
"""


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from ..runtime.stages import PipelineError, resolve_endpoints
    from ..web.address import WebError
    from ..web.server import WebServer

    run_dir = args.run_dir or config.pipeline.run_dir
    endpoints: dict[str, str] = {}
    health_file = None
    if run_dir or any(value for _, value in config.pipeline.endpoints.items()):
        path = Path(run_dir).expanduser() if run_dir else None
        if path is not None and not path.is_dir():
            log.error("--run-dir %s: no such directory (is the pipeline running?)", path)
            return 2
        try:
            resolved = resolve_endpoints(config, path)
        except PipelineError as error:
            log.error("%s", error)
            return 2
        endpoints = {name: resolved[name] for name in ("events", "preview")}
        health_file = path / "health.json" if path is not None else None
        if path is not None and not (path / "processes.json").is_file():
            log.warning("%s does not look like a running pipeline's run directory (no processes.json)", path)
    else:
        log.warning("no --run-dir: gallery management only (no live streams, events or health)")
    if args.gallery:
        config.set("gallery.path", args.gallery, "--gallery")
    try:
        server = WebServer(config, endpoints, address=args.address, token=args.token, gallery=args.gallery,
                           unknowns=args.unknowns, health_file=health_file)  # fmt: skip
        server.serve_forever(lambda url: print(f"web view: {url}", file=sys.stderr, flush=True))
    except WebError as error:
        log.error("%s", error)
        return 2
    return 0


def add_web_commands(commands: argparse._SubParsersAction) -> None:
    """Add `serve` to the `facestream` sub-commands."""
    serve = commands.add_parser(
        "serve",
        help="the web view: live streams, events, health and gallery management in a browser",
        description="Serve the web view of a running pipeline (its run directory) and a gallery.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="configuration file")
    serve.add_argument("--run-dir", metavar="DIR", help="the running pipeline's run directory (pipeline.run_dir)")
    serve.add_argument("--gallery", metavar="PATH", help="gallery database (default: gallery.path in config.yaml)")
    serve.add_argument("--address", metavar="HOST:PORT", help="where to serve (default: web.address, 127.0.0.1:8080)")
    serve.add_argument("--token", help="required on every request (better: $FACESTREAM_WEB_TOKEN, not in `ps`)")
    serve.add_argument("--unknowns", metavar="FILE", action="append", default=[],
                       help="unknowns files (`run --unknowns`) whose faces can be enrolled too")  # fmt: skip
    serve.set_defaults(handler=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    """The same commands without the rest of the CLI (global options as `facestream`'s)."""
    from .runner import standalone_main

    return standalone_main(add_web_commands, argv)


if __name__ == "__main__":
    sys.exit(main())
