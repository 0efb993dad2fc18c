"""Log line formats: the default timestamped lines, and journald's ``<priority>`` lines for systemd services."""

from __future__ import annotations

import logging
import os
import sys
from typing import ClassVar

LOG_FORMAT_ENV = "FACESTREAM_LOG_FORMAT"  # "journal": set by `run --log-format journal`, inherited by the stages


class JournalFormatter(logging.Formatter):
    """Lines for journald: ``<priority>`` (sd-daemon's prefix, read as the syslog level) and no timestamp
    (the journal adds its own)."""

    PRIORITIES: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                                            logging.ERROR: 3, logging.CRITICAL: 2}  # fmt: skip

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines() or [""])


def use_journal_logging(prefix: str = "") -> None:
    """Every handler of the root logger in the journal format, now and in the stage processes started later."""
    os.environ[LOG_FORMAT_ENV] = "journal"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JournalFormatter(f"{prefix}%(name)s: %(message)s"))


def configure_stage_logging(level: str, name: str) -> None:
    """Log lines of a stage process, tagged with its name (journal lines when the supervisor asked for them)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(logging, level.upper(), logging.WARNING) > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-build lines on every import
    if os.environ.get(LOG_FORMAT_ENV) == "journal":
        use_journal_logging(f"[{name}] ")
