"""The supervisor's child processes: one slot per stage process, and the command and environment that start one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import PipelineConfig


@dataclass
class Child:
    """One stage process slot; a restart gives the slot a new process."""

    name: str
    role: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    ready: bool = False
    exit_code: int | None = None

    @property
    def alive(self) -> bool:
        """Whether its process is running."""
        return self.process is not None and self.process.poll() is None


def malloc_environment(pipeline: PipelineConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """MALLOC_MMAP_THRESHOLD_ for a stage process from `pipeline.malloc_mmap_threshold_mb` (unless the
    environment sets it). A fixed threshold stops glibc's dynamic one from growing the heap with fragments
    (the detect worker's RSS crept 8% in a 10-minute soak without it); a large one keeps the detector's
    per-frame arrays (~40 MB: the tiled pyramid and its levels) on the reused heap: at 0.25 MB each one was
    mapped and page-faulted afresh every frame and detection took twice as long (bench/pipeline.py)."""
    megabytes = float(pipeline.malloc_mmap_threshold_mb)
    if "MALLOC_MMAP_THRESHOLD_" in environ or megabytes <= 0:
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(int(megabytes * (1 << 20)))}


# How a stage process starts: the installed facestream, whatever the working directory. `python -m` (and
# `-c`) would put the working directory first on sys.path, and inside a checkout its facestream/ folder
# (only the top-level __init__.py: the subpackages live elsewhere in the tree) would shadow the installed
# package. The bootstrap drops that entry before importing anything (works on 3.10, unlike `-P`).
STAGE_BOOTSTRAP = (
    "import sys; sys.path[:] = [p for p in sys.path[:1] if p != ''] + sys.path[1:]; "
    "from facestream.pipeline.runtime.stage_main import main; sys.exit(main(sys.argv[1:]))"
)
STAGE_COMMAND = (sys.executable, "-c", STAGE_BOOTSTRAP)
