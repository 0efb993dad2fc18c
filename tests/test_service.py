"""Running as a service: journald-friendly logs, the exit codes the systemd unit relies on, the unit itself."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from facestream.pipeline.runtime.logs import JournalFormatter
from facestream.pipeline.runtime.supervisor import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "docs" / "systemd" / "facestream.service"
FACESTREAM = [sys.executable, "-m", "facestream.pipeline.cli.main"]


def test_journal_lines_carry_the_syslog_priority_and_no_timestamp() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")

    def line(level: int, message: str) -> str:
        return formatter.format(logging.LogRecord("facestream.x", level, __file__, 1, message, None, None))

    assert line(logging.ERROR, "boom") == "<3>facestream.x: boom"
    assert line(logging.WARNING, "careful") == "<4>facestream.x: careful"
    assert line(logging.INFO, "two\nlines") == "<6>facestream.x: two\n<6>lines"  # every line keeps its priority


def test_a_run_logs_in_journal_format_in_every_process(tmp_path: Path) -> None:
    """A source that does not exist: the run fails (exit 1) and says so, from the source process, as <3>."""
    result = subprocess.run([*FACESTREAM, "run", "--log-format", "journal", "--source", str(tmp_path / "none.mp4"),
                             "--no-progress"], capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    logged = [line for line in result.stderr.splitlines() if not re.match(r"(\[ *[\d.]+ s\]|  )", line)]
    assert logged and all(re.match(r"<[0-7]>", line) for line in logged), result.stderr
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in logged)
    assert any(line.startswith("<3>[source] ") and "none.mp4" in line for line in logged), result.stderr


def test_bad_integration_settings_exit_2_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, message in ((["--metrics", f"127.0.0.1:{port}"], "Address already in use"),
                              (["--mqtt", "http://user:hunter2@broker"], "must start with mqtt://")):  # fmt: skip
            result = subprocess.run([*FACESTREAM, "run", "--source", str(tmp_path / "none.mp4"), *args],
                                    capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
            assert result.returncode == EXIT_USAGE and message in result.stderr, result.stderr
            assert "hunter2" not in result.stderr and "started sink" not in result.stderr


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", " ")):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_the_unit_matches_the_exit_codes_and_verifies() -> None:
    settings = unit_settings()
    assert settings["RestartPreventExitStatus"] == str(EXIT_USAGE)  # bad config: restarting would only loop
    assert set(settings["SuccessExitStatus"].split()) == {str(EXIT_SIGINT), str(EXIT_SIGTERM)}
    assert settings["Restart"] == "on-failure" and settings["KillMode"] == "mixed"
    assert "--log-format journal" in UNIT.read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was not checked")
    facestream = Path(sys.executable).parent / "facestream"
    unit = UNIT.read_text().replace("/opt/facestream/.venv/bin/facestream", str(facestream))
    copy = Path(f"/tmp/facestream-test-{socket.gethostname()}-{id(unit)}.service")
    copy.write_text(unit)
    try:
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    finally:
        copy.unlink()
    problems = [line for line in (result.stdout + result.stderr).splitlines() if copy.stem in line or "Unknown" in line]
    assert not problems, result.stdout + result.stderr
