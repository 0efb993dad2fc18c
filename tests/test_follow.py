"""pipeline/domain/follow.py: the detect worker's followers and scans, on real frames of the demo clip with the real
models (in process: the ZeroMQ side is tests/test_pipeline.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.engines.face_batch import BOX_REGION, BOX_SCAN
from facestream.pipeline.domain.follow import (
    Followed,
    Follower,
    FollowSettings,
    StreamState,
    grow_boxes,
    motion_image,
    motion_outside,
)
from facestream.pipeline.domain.tracker import QualityGate
from facestream.pipeline.runtime.messages import FrameMessage

DATA = Path(__file__).parent / "data"
CLIP = DATA / "video" / "short_hamilton_clip.mp4"
GOLDEN = DATA / "golden" / "dlib-20.0.1-video-up1-every-frame.jsonl"
FPS = 29.97


def clip_frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    for _ in range(count):
        ok, bgr = capture.read()
        assert ok
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    capture.release()
    return frames


@pytest.fixture(scope="module")
def models() -> tuple:
    from facestream.engines.detector import FaceDetector
    from facestream.engines.landmarks import ShapePredictor
    from facestream.engines.models import model_path

    detector = FaceDetector.from_file(model_path("detector", ""), None, 1)
    scan_detector = FaceDetector.from_file(model_path("detector", ""), None, 1)
    return detector, scan_detector, ShapePredictor.from_file(model_path("landmarks", ""), None)


def test_grow_boxes_adds_the_margin_per_side_and_clips_to_the_image() -> None:
    grown = grow_boxes(np.array([[100, 50, 139, 89], [0, 0, 9, 9]]), 0.25, 200, 120)
    assert grown.tolist() == [[90, 40, 149, 99], [0, 0, 11.5, 11.5]]


def test_motion_counts_only_pixels_outside_the_followed_regions() -> None:
    still = np.full((360, 640, 3), 90, np.uint8)
    inside = still.copy()
    inside[100:200, 300:400] = 250  # a followed face moves: not motion that needs a scan
    outside = inside.copy()
    outside[250:350, 20:120] = 250  # someone walks in elsewhere
    region = np.array([[280, 80, 420, 220]])
    before = motion_image(still)
    assert motion_outside(before, motion_image(inside), region, 640, 20.0) == 0.0
    share = motion_outside(before, motion_image(outside), region, 640, 20.0)
    assert 0.02 < share < 0.1  # ~100x100 of 640x360 minus the region: about 5%


def test_scans_in_the_background_never_stop_the_followers(models: tuple) -> None:
    """Live frames: even the first frame's scan runs in the background (its frames go out without faces),
    then scans keep falling due and run in their own thread while the followers find the face on each
    frame: frames with region boxes are counted while a scan is under way (no timing asserted)."""
    detector, scan_detector, predictor = models
    settings = FollowSettings(mode="live", scan_interval_s=0.05)
    follower = Follower(settings, detector, predictor, QualityGate(), scan_detector)
    frames = clip_frames(20)
    start = time.time()
    state = follower.streams.setdefault("cam", StreamState())
    followed_during_scan = index = 0
    deadline = time.monotonic() + 120
    while followed_during_scan < 3 and time.monotonic() < deadline:
        image = frames[index % len(frames)]
        faces = follower.process(FrameMessage("cam", index, start + index / FPS, True, image))
        assert not faces.scanned and set(faces.faces.box_source.tolist()) <= {BOX_REGION}
        if index == 0:
            assert len(faces) == 0 and state.scan is not None  # the first scan is under way
        if len(faces) and state.scan is not None and not state.scan.done():
            followed_during_scan += 1
        index += 1
    follower.close()
    assert followed_during_scan >= 3, follower.counters
    assert follower.counters["scan_first_frame"] == 1 and follower.counters["scans_finished"] >= 1


def test_the_scan_thread_runs_at_lower_priority(models: tuple) -> None:
    """detector.scan_nice: the scan thread's niceness is the worker's plus the setting (Linux sets it per
    thread), so a busy machine runs the per-frame work first; the worker's own thread is unchanged."""
    detector, scan_detector, predictor = models
    before = os.getpriority(os.PRIO_PROCESS, 0)
    for nice, expected in ((7, min(19, before + 7)), (0, before)):
        follower = Follower(FollowSettings(scan_nice=nice), detector, predictor, QualityGate(), scan_detector)
        assert follower.executor is not None
        assert follower.executor.submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=30) == expected
        follower.close()
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_cut_stops_the_background_scan_under_way_and_the_next_one_runs_on_the_new_picture(models: tuple) -> None:
    """Live: frame 0's background scan (tiles small enough for dozens of network calls) is still under way
    when the clip cuts at frame 20: the cut tells it to stop, it ends before its next network call
    (DetectionStoppedError, counted as stopped), and a new scan starts on the next frame after it has ended."""
    from facestream.engines.detector import DetectionStoppedError, FaceDetector
    from facestream.engines.pyramid_windows import MIN_TILE

    detector, scan_detector, predictor = models
    slow = FaceDetector(scan_detector.session, scan_detector.params, max_tile_pixels=MIN_TILE**2)
    follower = Follower(FollowSettings(mode="live", scan_interval_s=100.0), detector, predictor, QualityGate(), slow)
    frames = clip_frames(22)
    state = follower.streams.setdefault("cam", StreamState())
    start = time.time()
    assert not follower.process(FrameMessage("cam", 0, start, True, frames[0])).new_scene  # no earlier scene
    first = state.scan
    assert first is not None and not first.done()
    cut = follower.process(FrameMessage("cam", 20, start + 20 / FPS, True, frames[20]))
    assert follower.counters["scan_scene_cut"] == 1 and state.scan_stop.is_set()
    assert cut.new_scene and len(cut) == 0  # the sink ends the tracks here
    assert isinstance(first.exception(timeout=60), DetectionStoppedError)
    assert not follower.process(FrameMessage("cam", 21, start + 21 / FPS, True, frames[21])).new_scene
    assert follower.counters["scans_stopped"] == 1 and "scans_discarded" not in follower.counters
    assert state.scan is not None and state.scan is not first and state.scan_frame == 21
    assert not state.scan_stop.is_set()
    second = state.scan
    follower.close()  # stops the second scan too (or cancels it, if its thread has not taken it yet)
    assert second.cancelled() or isinstance(second.exception(timeout=60), DetectionStoppedError)


def test_a_new_size_or_scene_cut_is_scanned_on_the_frame_itself(models: tuple) -> None:
    detector, _scan, predictor = models
    follower = Follower(FollowSettings(mode="all", scan_interval_s=100.0), detector, predictor, QualityGate())
    frame = clip_frames(1)[0]
    big = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR)
    results = [follower.process(FrameMessage("f", i, i / FPS, False, image)) for i, image in
               enumerate([frame, frame, big])]  # fmt: skip
    assert [r.scanned for r in results] == [True, False, True]
    assert [r.new_scene for r in results] == [False, False, True]
    assert follower.counters["scan_size_change"] == 1
    assert results[1].faces.box_source.tolist() == [BOX_REGION]
    assert len(results[2]) and set(results[2].faces.box_source.tolist()) == {BOX_SCAN}
    # Embedding: a new follower's first faces are embedded (its identity is still being decided).
    assert all(set(r.faces.embed.tolist()) == {1} for r in results)


def test_followers_boxes_equal_full_frame_boxes_on_the_demo_clip(models: tuple) -> None:
    """Every frame of the first 30 where the followers ran: their boxes are dlib's full-frame boxes."""
    detector, _scan, predictor = models
    golden = {g["frame"]: g for g in map(json.loads, GOLDEN.read_text().splitlines())}
    follower = Follower(FollowSettings(mode="all", scan_interval_s=100.0), detector, predictor, QualityGate())
    compared = 0
    for index, image in enumerate(clip_frames(30)):
        faces = follower.process(FrameMessage("f", index, index / FPS, False, image))
        if faces.scanned:
            continue
        theirs = sorted(f["box"] for f in golden[index]["faces"])
        assert sorted(faces.faces.boxes.tolist()) == theirs, index
        compared += 1
    assert compared >= 20  # the other frames were scanned (first frame, the cut at 20, motion)


def test_embedding_schedule_first_faces_then_better_ones_or_after_the_interval() -> None:
    follower = Follower(FollowSettings(embed_first=2, improve_factor=1.5, reembed_interval_s=1.0), None, None,
                        QualityGate())  # fmt: skip
    item = Followed(np.zeros(4), 0.0)
    chosen = []
    for now, weight in [(0.0, 0.4), (0.1, 0.4), (0.2, 0.5), (0.3, 0.61), (0.4, 0.7), (1.2, 0.1), (1.3, 0.1)]:
        wanted = follower._wants_embedding(item, weight, now)
        if wanted:
            item.embedded, item.best_weight, item.last_embed = item.embedded + 1, max(item.best_weight, weight), now
        chosen.append(wanted)
    # two first faces; 0.5 < 1.5 x 0.4; 0.61 >= 0.6; 0.7 < 0.915; 1.2 s: 0.9 s after the last; 1.3: 1.0 s after
    assert chosen == [True, True, False, True, False, False, True]


def test_a_face_s_motion_is_extrapolated_at_most_follow_miss_s() -> None:
    """After a camera stall the last velocity says nothing: 2.2 s of it moved a slowly moving face out of its
    region (seen as a flaky run of test_pipeline's 2 s stall), so the prediction stops at the horizon."""
    face = Followed(np.array([100.0, 100.0, 180.0, 180.0]), seen_at=10.0, velocity=np.array([20.0, 0.0, 20.0, 0.0]))
    np.testing.assert_array_equal(face.predicted(10.1, 0.3), [102.0, 100.0, 182.0, 180.0])
    np.testing.assert_array_equal(face.predicted(12.2, 0.3), [106.0, 100.0, 186.0, 180.0])
    np.testing.assert_array_equal(face.predicted(9.0, 0.3), face.box)  # a timestamp before it was seen
