"""Running a `facestream` command: logging, the configuration, and the one place errors become exit codes.

Used by the full command line (pipeline/cli/main.py) and by the modules that can run their commands alone
(``python -m facestream.pipeline.cli.run ...``), so those need not import cli.py (which imports them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ...errors import FacestreamError, exit_code
from ..config import load_config
from ..runtime.logs import use_journal_logging

log = logging.getLogger("facestream")


def configure_logging(args: argparse.Namespace) -> None:
    """-q: errors only; default: info; -v: debug; journald lines when the command asks for them."""
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries(level)
    if getattr(args, "log_format", None) == "journal":  # `run --log-format journal`: from the very first line
        use_journal_logging()


def quiet_libraries(level: int) -> None:
    """faiss announces which CPU build it loads on every import (at INFO): shown with -vv only."""
    if level > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_command(args: argparse.Namespace) -> int:
    """Load the configuration and run the command's handler; the one place errors become exit codes."""
    try:
        return args.handler(args, load_config(args.config))
    except KeyboardInterrupt:
        return 130
    except SystemError as error:  # Ctrl-C inside a compiled (numba) call surfaces wrapped in a SystemError
        if isinstance(error.__cause__ or error.__context__, KeyboardInterrupt):
            return 130
        raise
    except BrokenPipeError:
        return 0
    except FacestreamError as error:  # one clear line, no traceback; anything else is a bug and shows one
        log.error("%s", error)
        return exit_code(error)
    finally:
        _release_gpu()


def _release_gpu() -> None:
    """Every command leaves with its TensorRT sessions closed (pycuda aborts a process holding a context)."""
    from ...engines.backend import close_gpu_sessions

    close_gpu_sessions()


def standalone_main(add_commands: Callable[[argparse._SubParsersAction], None], argv: list[str] | None = None) -> int:
    """`python -m facestream.pipeline.<x>_cli`: those commands alone, with `facestream`'s global options."""
    parser = argparse.ArgumentParser(prog="facestream")
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    configure_logging(args)
    return run_command(args)
