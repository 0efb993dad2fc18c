"""Faults at the outputs: a full disk while writing events / detections gives a clear error and whole lines."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.pipeline.runtime.stages import PipelineError
from facestream.pipeline.sinks.writers import JsonLines, VideoOutput

RECORD = {"event": "track_identified", "stream_id": "door", "frame_index": 0, "box": [1, 2, 3, 4], "note": "x" * 300}


def small_disk(size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (needs root); skipped where mounting is not allowed."""
    mount_point = Path(tempfile.mkdtemp(prefix="fs-full-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()


@pytest.fixture()
def tiny_disk() -> Iterator[Path]:
    yield from small_disk("64k")


@pytest.fixture()
def video_disk() -> Iterator[Path]:
    yield from small_disk("3m")


def test_a_full_disk_is_a_clear_error_and_the_lines_written_stay_valid(tiny_disk: Path) -> None:
    events = JsonLines(tiny_disk / "events.jsonl")
    written = 0
    with pytest.raises(PipelineError, match=r"events.jsonl: cannot write \(the disk is full\)") as caught:
        for index in range(10_000):
            events.write({**RECORD, "frame_index": index})
            written += 1
    assert 0 < written < 10_000
    assert f"the {written} lines written so far are kept" in str(caught.value)
    text = (tiny_disk / "events.jsonl").read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == written  # the partial line was cut off again
    assert [json.loads(line)["frame_index"] for line in lines] == list(range(written))
    events.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_is_reported_as_a_full_disk() -> None:
    detections = JsonLines("/dev/full")
    with pytest.raises(PipelineError, match=r"/dev/full: cannot write \(the disk is full\); the 0 lines"):
        detections.write(RECORD)
    detections.close()


def test_a_full_disk_while_writing_video_stops_it_playable(video_disk: Path) -> None:
    video = VideoOutput(video_disk / "annotated.mp4", fps=25.0)
    rng = np.random.default_rng(0)
    with pytest.raises(PipelineError, match=r"annotated.mp4: cannot write \(the disk is full\)") as caught:
        for _ in range(1000):  # noise compresses badly: ~3 MB fill up within a few dozen frames
            video.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    written = video.frames
    assert 0 < written < 1000 and f"the {written} frames written so far are kept" in str(caught.value)
    capture = cv2.VideoCapture(str(video_disk / "annotated.mp4"))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    assert decoded == written  # the index was written: every frame plays


def test_stage_processes_get_a_fixed_mmap_threshold_unless_the_environment_has_one() -> None:
    from facestream.pipeline.config import load_config
    from facestream.pipeline.runtime.children import malloc_environment

    pipeline = load_config(None).pipeline
    assert malloc_environment(pipeline, {}) == {"MALLOC_MMAP_THRESHOLD_": str(512 << 20)}  # config.yaml's default
    quarter = dataclasses.replace(pipeline, malloc_mmap_threshold_mb=0.25)
    assert malloc_environment(quarter, {}) == {"MALLOC_MMAP_THRESHOLD_": "262144"}
    assert malloc_environment(dataclasses.replace(pipeline, malloc_mmap_threshold_mb=0), {}) == {}  # glibc's own
    assert malloc_environment(pipeline, {"MALLOC_MMAP_THRESHOLD_": "131072"}) == {}  # the user's value is kept


def test_a_full_disk_while_saving_a_thumbnail_leaves_no_partial_file(tiny_disk: Path) -> None:
    from facestream.enroll.thumbnails import Thumbnails

    thumbnails = Thumbnails(tiny_disk / "gallery.db.thumbs", owner="0123")
    thumbnails.save(1, b"small")
    free = os.statvfs(tiny_disk)
    (tiny_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 8192))  # 8 KiB left
    with pytest.raises(OSError):
        thumbnails.save(2, os.urandom(256 << 10))
    assert sorted(p.name for p in thumbnails.folder.iterdir()) == [".gallery", "1.png"]
    assert thumbnails.read(1) == b"small"


def test_kill_9_of_the_supervisor_leaves_no_run_directory(tmp_path: Path) -> None:
    """Its stages exit (they die with it) and remove the run directory it made: no stale spec.json or health.json."""
    import signal
    import sys
    import time

    import yaml

    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp")) / "run"  # ipc paths must stay short
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pipeline": {"run_dir": str(run_dir)}}))
    clip = Path(__file__).parent / "data" / "video" / "short_hamilton_clip.mp4"
    code = "import sys; from facestream.pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--config", str(tmp_path / "config.yaml"), "run", "--source",
            f"loop:{clip}", "--gallery", str(tmp_path / "g.db")]  # fmt: skip
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120

        def all_ready() -> bool:
            try:
                listed = json.loads((run_dir / "processes.json").read_text())["processes"]
            except (OSError, ValueError):
                return False
            return bool(listed) and all(p["ready"] for p in listed) and (run_dir / "health.json").exists()

        while not all_ready():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.2)
        pids = [p["pid"] for p in json.loads((run_dir / "processes.json").read_text())["processes"] if p["pid"]]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 60
        while run_dir.exists() or any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        run_dir.parent.rmdir() if run_dir.parent.exists() and not run_dir.exists() else None
