"""Ctrl-C as a terminal sends it: SIGINT to the command's whole process group, at start-up and mid-run.

What must hold: exit code 130 (README: 130/143 stopped by SIGINT/SIGTERM), nothing on stderr that looks
like a crash ("terminate called ...", "FATAL", a Python traceback, KeyboardInterrupt), no process left
behind, the events file complete JSON lines with its summary. And the root cause of "terminate called
without an active exception": a thread still inside an OpenCV (C++) call when Python finalises is ended
by unwinding through C++ frames, which aborts; a stage process must not exit that way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_until

ROOT = Path(__file__).parent.parent
FACESTREAM = str(Path(sys.executable).parent / "facestream")  # the console script, as a user starts it
CLIP = ROOT / "tests" / "data" / "video" / "short_hamilton_clip.mp4"
CRASH_SIGNS = ("terminate called", "FATAL", "Traceback", "KeyboardInterrupt", "Aborted", "core dumped")


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    """The command in its own session and process group (the group a terminal's Ctrl-C goes to)."""
    return subprocess.Popen([FACESTREAM, *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (stages run in their own process groups, so not found by group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ctrl_c(process: subprocess.Popen, when: Callable[[], object]) -> tuple[int, str]:
    """SIGINT to the process group once `when()` returns; the exit code and stderr (killed if it hangs)."""
    try:
        when()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, stderr


def assert_quiet(stderr: str) -> None:
    for sign in CRASH_SIGNS:
        assert sign not in stderr, stderr[-4000:]


def test_ctrl_c_mid_run_with_the_web_view_stops_everything_cleanly(tmp_path: Path) -> None:
    events, detections = tmp_path / "events.jsonl", tmp_path / "detections.jsonl"
    process = start(["run", "--source", f"demo=loop:{CLIP}", "--web", "127.0.0.1:0", "--no-progress",
                     "--events", str(events), "--detections", str(detections), "--gallery", str(tmp_path / "g.db")],
                    tmp_path)  # fmt: skip
    stages: set[int] = set()

    def working() -> None:
        wait_until(lambda: detections.exists() and detections.stat().st_size > 0, "frames processed", timeout=120)
        stages.update(descendants(process.pid))

    code, stderr = ctrl_c(process, working)
    assert len(stages) >= 4, stages  # source, detect, embed, sink
    assert code == 130, stderr[-4000:]
    assert_quiet(stderr)
    wait_until(lambda: not any(alive(pid) for pid in stages), "every stage process gone", timeout=10)
    lines = [json.loads(line) for line in events.read_text().splitlines()]  # complete lines, all JSON
    assert [line["stream_id"] for line in lines if line["event"] == "summary"] == ["demo"]
    assert lines[-1]["event"] == "summary"


@pytest.mark.parametrize(("command", "delay"), [("analyze", 0.6), ("analyze", 1.5), ("enroll", 3.0)])
def test_ctrl_c_during_start_up_and_model_loading_is_quiet(tmp_path: Path, command: str, delay: float) -> None:
    # While the commands' modules import (seconds on a loaded machine) this was a KeyboardInterrupt
    # traceback from wherever the import was, and death by SIGINT (-2) instead of exit code 130.
    images = sorted(str(p) for p in (ROOT / "tests" / "data" / "dlib_faces").glob("*.jpg"))
    argv = ["analyze", "--json", *images] if command == "analyze" else \
        ["enroll", "add", "someone", "--largest", "--gallery", str(tmp_path / "g.db"), *images]  # fmt: skip
    process = start(argv, tmp_path)
    code, stderr = ctrl_c(process, lambda: time.sleep(delay))  # the moment is the subject: no condition to wait on
    assert code == 130, stderr[-4000:]
    assert_quiet(stderr)


def test_ctrl_c_stops_serve_quietly_with_exit_code_0(tmp_path: Path) -> None:
    # `facestream serve --help`: exit code 0 when stopped by Ctrl-C or SIGTERM.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = start(["serve", "--address", f"127.0.0.1:{port}", "--gallery", str(tmp_path / "g.db")], tmp_path)

    def answering() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return process.poll() is not None  # it exited: stop waiting, the exit code tells
        return True

    def serving() -> None:
        wait_until(answering, "the web view answering", timeout=60)

    code, stderr = ctrl_c(process, serving)
    assert code == 0, stderr[-4000:]
    assert_quiet(stderr)


SPINNING_THREAD = """
import sys, threading, time
import cv2, numpy as np
image = np.zeros((720, 1280, 3), np.uint8)
def spin():  # like a capture thread: always inside an OpenCV call, which releases the GIL
    while True:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
threading.Thread(target=spin, daemon=True).start()
time.sleep(0.3)
if sys.argv[1] == "stage":
    from facestream.pipeline.runtime.stage_main import exit_past_stuck_threads
    exit_past_stuck_threads(0)
"""


def test_a_stage_exits_cleanly_past_a_thread_inside_opencv() -> None:
    # The mechanism first: a plain exit with such a thread aborts (this is the message users saw) ...
    plain = subprocess.run([sys.executable, "-c", SPINNING_THREAD, "plain"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert plain.returncode == -signal.SIGABRT and "terminate called" in plain.stderr, (plain.returncode, plain.stderr)
    # ... and the way stage_main ends a stage process does not.
    stage = subprocess.run([sys.executable, "-c", SPINNING_THREAD, "stage"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert (stage.returncode, stage.stderr) == (0, "")


def test_a_stopped_live_reader_has_no_thread_left() -> None:
    from facestream.pipeline.sources.live import LatestFrames, LiveCapture, LiveReader, PacedVideoCapture

    capture = LiveCapture("demo", lambda: PacedVideoCapture(str(CLIP), loop=True), initial=0.1, maximum=0.1)
    reader = LiveReader(capture, LatestFrames(2)).start()
    wait_until(lambda: reader.captured >= 3, "frames captured", timeout=60)
    reader.stop()
    assert reader.join(5.0)
    assert not reader.thread.is_alive() and reader.done.is_set()


def test_ctrl_c_inside_a_compiled_call_exits_130_without_a_traceback() -> None:
    """numba turns a KeyboardInterrupt raised while it loads or runs a kernel into a SystemError (seen when
    Ctrl-C reached `analyze` during its first pyramid resize); the command still ends as interrupted."""
    import argparse

    from facestream.pipeline.cli.runner import run_command

    def handler(_args: argparse.Namespace, _config: object) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemError("CPUDispatcher(<function resize_f32>) returned a result with an exception set") from (
                interrupt
            )

    def other(_args: argparse.Namespace, _config: object) -> int:
        raise SystemError("a real bug")

    assert run_command(argparse.Namespace(handler=handler, config=None)) == 130
    with pytest.raises(SystemError, match="a real bug"):
        run_command(argparse.Namespace(handler=other, config=None))
