"""The `facestream` console script: a quiet Ctrl-C from the first instant, then pipeline/cli/main.py's `main`.

Importing the commands' modules takes seconds on a busy machine (numpy, OpenCV, ONNX Runtime, faiss).
Ctrl-C meanwhile would print a KeyboardInterrupt traceback, or, raised inside a C++ library's import,
some other error. Nothing has started then, so the process exits at once with 130; the handler is
installed before anything heavy is imported, and cli.main hands Ctrl-C to the command once parsed
(it recognises this handler by its `start_up_only` mark; main.py does not import this module).
"""

from __future__ import annotations

import os
import signal

EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports it


def interrupted_during_start_up(_signum: int, _frame: object) -> None:
    """SIGINT before the command runs: exit now (no output exists yet, nothing to flush)."""
    os._exit(EXIT_INTERRUPTED)


interrupted_during_start_up.start_up_only = True  # type: ignore[attr-defined]


def main() -> int:
    """The console script's entry point."""
    signal.signal(signal.SIGINT, interrupted_during_start_up)
    from .main import main as cli_main

    return cli_main()
