"""pipeline/sources/: what a --source means, file readers, live capture (drop oldest, reopen with back-off)."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.pipeline.config import Config
from facestream.pipeline.domain.scenes import frame_thumbnail, scene_changed
from facestream.pipeline.sources.files import ImageFolderReader, VideoFileReader
from facestream.pipeline.sources.live import (
    LatestFrames,
    LiveCapture,
    LiveFrame,
    LiveReader,
    PacedVideoCapture,
    backoff_delay,
)
from facestream.pipeline.sources.spec import SourceError, SourceSpec, classify, natural_key, parse_sources, probe_source

from conftest import wait_until

DATA = Path(__file__).parent / "data"
CLIP = DATA / "video" / "short_hamilton_clip.mp4"


def config(**sources: object) -> Config:
    merged = Config()
    for key, value in sources.items():
        merged.set(f"sources.{key}", value)
    return merged


# ------------------------------------------------------------------------------------------------
# --source


def test_parse_sources_kinds_ids_and_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    specs = parse_sources([
        str(CLIP), f"other={CLIP}", str(tmp_path / "frames"), "0", "door=rtsp://user:secret@cam.local/live?x=1",
        "rtsp://user:secret@cam.local/live?x=1", str(DATA / "fr_examples/obama.jpg"), str(CLIP),
    ])  # fmt: skip
    assert [(s.stream_id, s.kind, s.live) for s in specs] == [
        ("short_hamilton_clip", "video", False),
        ("other", "video", False),
        ("frames", "images", False),
        ("camera0", "camera", True),
        ("door", "url", True),
        ("cam.local-live", "url", True),  # no credentials in a stream id
        ("obama", "image", False),
        ("short_hamilton_clip-2", "video", False),
    ]
    assert specs[4].uri == "rtsp://user:secret@cam.local/live?x=1"
    assert SourceSpec.from_json(specs[4].to_json()) == specs[4]
    with pytest.raises(SourceError, match="used twice"):
        parse_sources([f"a={CLIP}", f"a={CLIP}"])
    with pytest.raises(SourceError, match="unknown URL scheme 'ftp'"):
        parse_sources(["ftp://host/video.mp4"])
    with pytest.raises(SourceError, match="no source"):
        parse_sources([])
    assert classify("missing.mp4") == "video"  # opening (and its clear error) is the source process's job
    replays = parse_sources([f"replay:{CLIP}", f"hall=loop:{CLIP}"])
    assert [(s.stream_id, s.kind, s.live, s.uri) for s in replays] == [
        ("short_hamilton_clip", "replay", True, f"replay:{CLIP}"),
        ("hall", "loop", True, f"loop:{CLIP}"),
    ]
    with pytest.raises(SourceError, match="replay: needs a video file"):
        parse_sources(["replay:"])


def test_natural_order() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame1b.png"]
    assert sorted(names, key=natural_key) == ["Frame1.png", "frame1b.png", "frame2.png", "frame10.png"]


# ------------------------------------------------------------------------------------------------
# file sources


def test_video_file_frames_equal_opencv() -> None:
    reader = VideoFileReader(str(CLIP), max_frames=12)
    capture = cv2.VideoCapture(str(CLIP))
    timestamps = []
    for _ in range(12):
        item = reader.read()
        assert item is not None
        image, timestamp = item
        ok, expected = capture.read()
        assert ok
        assert image.dtype == np.uint8 and image.flags.c_contiguous
        np.testing.assert_array_equal(image, expected[:, :, ::-1])  # RGB of OpenCV's BGR, pixel for pixel
        timestamps.append(timestamp)
    assert reader.read() is None  # max_frames
    reader.close()
    capture.release()
    assert timestamps[0] == 0.0
    np.testing.assert_allclose(timestamps, np.arange(12) / 29.97, atol=1e-3)
    info = probe_source(SourceSpec("clip", str(CLIP), "video"), config(max_frames=12))
    assert info.frame_count == 12 and abs(info.fps - 29.97) < 0.01
    assert probe_source(SourceSpec("clip", str(CLIP), "video"), config()).frame_count == 275


def test_image_folder_natural_order_skips_unreadable_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = {}
    for n in (10, 2, 1):
        image = np.full((24, 32, 3), n * 10, np.uint8)
        cv2.imwrite(str(tmp_path / f"frame{n}.png"), image)
        images[n] = image
    (tmp_path / "frame3.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # sorted between 2 and 10
    (tmp_path / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / ".hidden.png"), images[1])
    reader = ImageFolderReader.open(SourceSpec("f", str(tmp_path), "images"), config(image_fps=10.0))
    with caplog.at_level(logging.ERROR):
        frames = []
        while (item := reader.read()) is not None:
            frames.append(item)
    assert [int(image[0, 0, 0]) for image, _ in frames] == [10, 20, 100]  # 1, 2, 10: natural order
    assert [timestamp for _, timestamp in frames] == [0.0, 0.1, 0.2]  # indices stay contiguous
    assert "frame3.jpg" in caplog.text and "truncated or corrupt JPEG" in caplog.text
    limited = ImageFolderReader.open(SourceSpec("f", str(tmp_path), "images"), config(max_frames=2))
    assert limited.read() is not None and limited.read() is not None and limited.read() is None


def test_unreadable_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.mp4: no such file"):
        VideoFileReader(str(tmp_path / "missing.mp4"))
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(SourceError, match=r"fake\.mp4: cannot open as a video"):
        VideoFileReader(str(fake))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        ImageFolderReader.open(SourceSpec("e", str(tmp_path / "empty"), "images"), config())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    reader = ImageFolderReader.open(SourceSpec("b", str(broken), "image"), config())
    with pytest.raises(SourceError, match=r"broken\.png"):
        reader.read()


def test_a_truncated_video_gives_its_frames_and_says_so_and_an_empty_one_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = cv2.VideoWriter(str(tmp_path / "t30.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(30):
        writer.write(np.full((48, 64, 3), i * 8, np.uint8))
    writer.release()
    data = (tmp_path / "t30.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])  # the tail, and the index, are gone
    reader = VideoFileReader(str(tmp_path / "cut.avi"))
    frames = []
    while (item := reader.read()) is not None:
        frames.append(item[0])
    assert 0 < len(frames) < 30 and reader.frame_count == 30
    assert all(int(frame[0, 0, 0]) == pytest.approx(i * 8, abs=3) for i, frame in enumerate(frames))  # in order
    assert f"cut.avi: decoding stopped at frame {len(frames)} of 30 (truncated or corrupt file)" in caplog.text
    empty = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    empty.release()  # a valid container with no frames
    with pytest.raises(SourceError, match=r"empty\.avi: no frame could be decoded"):
        VideoFileReader(str(tmp_path / "empty.avi")).read()


# ------------------------------------------------------------------------------------------------
# live sources


class FakeCapture:
    """An OpenCV-like capture over a script of read results (True: a frame, False: a failed read)."""

    def __init__(self, reads: list[bool], opened: bool = True, delay: float = 0.0) -> None:
        self.reads, self.opened, self.delay = list(reads), opened, delay
        self.released = False
        self.count = 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.delay:
            time.sleep(self.delay)
        if self.reads and not self.reads.pop(0):
            return False, None
        self.count += 1
        return True, np.full((4, 4, 3), self.count % 256, np.uint8)

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        self.released = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_delays() -> None:
    assert [backoff_delay(n, 0.5, 30.0) for n in range(0, 9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_camera_reopens_with_backoff_and_resets_after_a_good_frame() -> None:
    captures = [
        FakeCapture([], opened=False),  # first opening fails twice ...
        FakeCapture([], opened=False),
        FakeCapture([True, True, False]),  # ... then works for two frames and drops
        FakeCapture([], opened=False),  # the reopening fails once
        FakeCapture([True]),  # and then works again
    ]
    made = []

    def factory() -> FakeCapture:
        made.append(captures[len(made)])
        return made[-1]

    clock = FakeClock()
    live = LiveCapture("cam", factory, initial=0.5, maximum=30.0, open_attempts=3, clock=clock, sleep=clock.sleep)
    frames = [live.next_frame() for _ in range(3)]
    assert all(frame is not None for frame in frames)
    assert live.delays == [0.5, 1.0, 0.5, 1.0]  # doubling, and back to 0.5 after frames flowed again
    assert clock.now == pytest.approx(3.0)
    assert (live.reconnects, live.disconnects) == (1, 1)
    assert all(capture.released for capture in made[:4])  # every failed capture released


def test_live_capture_gives_up_with_a_clear_error() -> None:
    clock = FakeClock()
    never = LiveCapture("camera 7", lambda: FakeCapture([], opened=False), open_attempts=3, clock=clock,
                        sleep=clock.sleep)  # fmt: skip
    with pytest.raises(SourceError, match="camera 7: cannot be opened \\(tried 3 times\\)"):
        never.next_frame()
    assert never.delays == [0.5, 1.0]
    # Works once, is lost, and every reopening fails: it gives up after max_reconnects failures in a row.
    captures = iter([FakeCapture([True, False]), FakeCapture([True, False])] + [FakeCapture([], opened=False)] * 5)
    flaky = LiveCapture("stream", lambda: next(captures), max_reconnects=2, clock=clock, sleep=clock.sleep)
    assert flaky.next_frame() is not None
    assert flaky.next_frame() is not None  # lost, reopened, a frame: the failure count starts again
    with pytest.raises(SourceError, match="gave up after 2 reconnection attempts"):
        flaky.next_frame()
    assert flaky.reconnects == 1 and flaky.delays[-3:] == [0.5, 0.5, 1.0]
    stopped = LiveCapture("stopped", lambda: FakeCapture([], opened=False), clock=clock, sleep=clock.sleep)
    assert stopped.next_frame(lambda: True) is None


def test_live_queue_drops_oldest_frames_and_counts_them() -> None:
    queue = LatestFrames(3)
    image = np.zeros((2, 2, 3), np.uint8)
    dropped = [queue.put(LiveFrame(i, float(i), image)) for i in range(10)]
    assert dropped == [False] * 3 + [True] * 7
    assert queue.dropped == 7
    assert [queue.get().index for _ in range(3)] == [7, 8, 9]  # the newest survive, oldest first
    assert queue.get() is None


def test_waiting_for_a_free_detector_keeps_only_the_newest_frame() -> None:
    queue = LatestFrames(3)
    image = np.zeros((2, 2, 3), np.uint8)
    held = LiveFrame(0, 0.0, image)
    assert queue.newest(held) is held and queue.dropped == 0  # nothing newer: keep it
    for i in (1, 2, 3):
        queue.put(LiveFrame(i, float(i), image))
    newest = queue.newest(held)
    assert newest.index == 3 and queue.get() is None
    assert queue.dropped == 3  # the held frame 0 and frames 1, 2


def test_live_source_with_a_fast_producer_keeps_latency_bounded() -> None:
    """A camera delivering ~1000 frames/s into a consumer taking 1 frame every 20 ms: the consumer always gets
    recent frames, everything it did not take is counted as dropped."""
    capture = LiveCapture("fast", lambda: FakeCapture([], delay=0.001))
    reader = LiveReader(capture, LatestFrames(2)).start()
    taken = []
    try:
        deadline = time.monotonic() + 60  # generous: 15 frames take ~0.3 s unloaded
        while len(taken) < 15 and time.monotonic() < deadline:
            time.sleep(0.02)  # the slow consumer being simulated, not a wait
            frame = reader.queue.get()
            if frame is not None:
                lag = reader.captured - frame.index  # frames captured after this one
                taken.append((frame.index, lag, frame.timestamp))
    finally:
        reader.stop()
        assert reader.done.wait(5)
    assert len(taken) == 15
    indices = [index for index, _, _ in taken]
    assert indices == sorted(set(indices))
    assert max(lag for _, lag, _ in taken) <= 4  # queue of 2 (+ frames captured while we looked)
    assert indices[-1] - indices[0] > 2 * len(indices)  # many frames in between were dropped ...
    assert reader.queue.dropped == reader.captured - len(taken) - len(reader.queue)  # ... and every one counted
    assert all(abs(time.time() - timestamp) < 10 for _, _, timestamp in taken)  # wall-clock capture times
    assert reader.error is None and capture.capture is None  # released on stop


def test_live_reader_reports_a_source_that_never_opens() -> None:
    reader = LiveReader(LiveCapture("camera 9", lambda: FakeCapture([], opened=False), initial=0.01), LatestFrames(2))
    reader.start()
    assert reader.done.wait(5)
    assert reader.error is not None and "camera 9: cannot be opened" in reader.error


def test_live_reader_stops_promptly() -> None:
    reader = LiveReader(LiveCapture("idle", lambda: FakeCapture([], delay=0.01)), LatestFrames(1)).start()
    wait_until(lambda: reader.captured >= 1, "the reader capturing")
    started = time.monotonic()
    reader.stop()
    assert reader.done.wait(2) and time.monotonic() - started < 1
    assert not threading.Thread.is_alive(reader.thread) or reader.done.is_set()


# ------------------------------------------------------------------------------------------------
# replay: a video file delivered like a camera


def test_replay_is_paced_at_the_file_frame_rate_and_ends() -> None:
    clock = FakeClock()
    paced = PacedVideoCapture(str(CLIP), clock=clock, sleep=clock.sleep)
    reference = VideoFileReader(str(CLIP))
    fps = paced.fps
    assert fps == pytest.approx(reference.fps)
    count = 0
    while True:
        ok, frame = paced.read()
        if not ok:
            break
        expected = reference.read()
        assert expected is not None and np.array_equal(frame[..., ::-1], expected[0])  # same frames, BGR as OpenCV
        # frame i is delivered i / fps after the first (decoding takes no fake time)
        assert clock.now == pytest.approx(count / fps)
        count += 1
    assert reference.read() is None and count == 275 == paced.delivered
    assert paced.finished and paced.read() == (False, None)
    paced.release()
    reference.close()
    # A live capture ends (not a loss to reconnect from) when a replay finishes.
    clock = FakeClock()
    live = LiveCapture("replay", lambda: PacedVideoCapture(str(CLIP), clock=clock, sleep=clock.sleep), clock=clock,
                       sleep=clock.sleep)  # fmt: skip
    frames = 0
    while live.next_frame() is not None:
        frames += 1
    assert frames == 275 and (live.disconnects, live.reconnects, live.delays) == (0, 0, [])


def test_loop_replay_starts_over_and_keeps_pace() -> None:
    clock = FakeClock()
    looped = PacedVideoCapture(str(CLIP), loop=True, clock=clock, sleep=clock.sleep)
    first = looped.read()[1]
    for _ in range(274):
        assert looped.read()[0]
    ok, again = looped.read()  # frame 275 is frame 0 of the second pass
    assert ok and np.array_equal(again, first) and looped.passes == 1 and not looped.finished
    assert clock.now == pytest.approx(275 / looped.fps)
    looped.release()


def test_replay_of_a_file_that_cannot_be_opened_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    clock = FakeClock()
    live = LiveCapture("hall (replay:broken.mp4)", lambda: PacedVideoCapture(str(bad)), clock=clock, sleep=clock.sleep)
    with pytest.raises(SourceError, match="cannot be opened \\(tried 3 times\\)"):
        live.next_frame()


def test_scene_cuts_of_the_demo_clip_are_seen_and_motion_is_not() -> None:
    reader = VideoFileReader(str(CLIP))
    thumbnails = []
    while (item := reader.read()) is not None:
        thumbnails.append(frame_thumbnail(item[0]))
    reader.close()
    assert thumbnails[0].shape == (36, 64) and thumbnails[0].dtype == np.float32
    cuts = [i for i in range(1, len(thumbnails)) if scene_changed(thumbnails[i - 1], thumbnails[i], 20.0)]
    assert cuts == [20, 82, 211]  # the clip's three cuts (seen in its frames); the zoom is not one
    assert not scene_changed(None, thumbnails[0], 20.0)
    assert not scene_changed(thumbnails[19], thumbnails[20], 0.0)  # 0 = off


def test_a_camera_that_comes_up_30_s_late_is_picked_up_by_a_running_pipeline(tmp_path: Path) -> None:
    """A real `facestream run` on an MJPEG-over-HTTP camera whose server starts 30 s after the run: the run keeps
    retrying with back-off (logged) instead of giving up, then processes its frames and ends normally."""
    import http.server
    import json
    import socket
    import subprocess
    import sys
    import tempfile

    import yaml

    capture = cv2.VideoCapture(str(CLIP))
    jpegs = [cv2.imencode(".jpg", capture.read()[1])[1].tobytes() for _ in range(10)]
    capture.release()

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for index in range(100_000):
                    data = jpegs[index % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(data), data))  # fmt: skip
                    time.sleep(0.04)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with socket.socket() as probe:  # a free port, nobody listening on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {"pipeline": {"run_dir": str(run_dir)}, "sources": {"reconnect_initial_s": 0.5, "reconnect_max_s": 4.0}}
        )
    )
    code = "import sys; from facestream.pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--config", str(tmp_path / "config.yaml"), "run", "--source",
            f"door=http://127.0.0.1:{port}/stream.mjpg", "--max-frames", "20", "--stats", "stats.json",
            "--gallery", str(tmp_path / "gallery.db")]  # fmt: skip
    server = None
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(argv, stderr=stderr, stdout=subprocess.DEVNULL, cwd=tmp_path)
    try:
        time.sleep(30)  # the stated scenario: the camera is down for the first 30 s of the run
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        log = (tmp_path / "stderr.txt").read_text()
        assert "cannot be opened; trying again in" in log and "retrying for as long as the run lasts" in log, log
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Camera)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert process.wait(120) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if server is not None:
            server.shutdown()
            server.server_close()
    log = (tmp_path / "stderr.txt").read_text()
    assert re.search(r"door \(http://127\.0\.0\.1:\d+/stream\.mjpg\): opened after \d+ failed attempts", log), log
    stream = json.loads((tmp_path / "stats.json").read_text())["streams"]["door"]
    assert stream["processed"] > 0 and stream["state"] == "live" and not stream.get("error")


def test_a_folder_where_every_image_fails_is_a_failed_stream_and_the_run_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tempfile

    import yaml

    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "c.jpg"):
        (folder / name).write_bytes(b"not an image at all")
    reader = ImageFolderReader.open(SourceSpec("frames", str(folder), "images"), config())
    with pytest.raises(SourceError, match="none of its 3 image files could be read"):
        reader.read()
    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pipeline": {"run_dir": str(run_dir)}}))
    code = "import sys; from facestream.pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "--config", str(tmp_path / "config.yaml"), "run", "--source",
                             str(folder), "--gallery", str(tmp_path / "g.db")], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "none of its 3 image files could be read" in result.stderr
