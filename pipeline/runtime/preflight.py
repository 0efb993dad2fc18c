"""Checks made before any stage process starts: an output that cannot be written, a run directory in use."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import PipelineError


def check_writable(path: Path) -> None:
    """Fail before starting anything when an output cannot be written (not after minutes of work)."""
    if path.is_dir():
        raise PipelineError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as error:
        raise PipelineError(f"{path}: cannot write: {error.strerror or error}") from None


def check_not_in_use(run_dir: Path) -> None:
    """Two runs in one run directory would silently take over each other's ipc sockets: refuse."""
    try:
        pid = int(json.loads((run_dir / "processes.json").read_text(encoding="utf-8"))["supervisor"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise PipelineError(f"pipeline.run_dir {run_dir} is in use by another facestream run (pid {pid})")
