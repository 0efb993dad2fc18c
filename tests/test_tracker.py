"""pipeline/domain/tracker.py: scripted scenes for the tracking, the identity vote, the embedding schedule,
the summary."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.engines.quality import QUALITY_COLUMNS, face_quality
from facestream.pipeline.domain.tracker import (
    QUALITY_FACE_SIZE,
    QUALITY_SHARPNESS,
    FaceTracker,
    OnScreenInterval,
    QualityGate,
    TrackEnded,
    TrackIdentified,
    TrackStarted,
    box_iou,
    greedy_assignment,
)

DATA = Path(__file__).parent / "data"
FPS = 25.0
SHARP = 200.0  # a sharpness every default gate accepts with full weight
BLURRY = 5.0  # the out-of-focus background faces of the demo clip score 2-11


def square(x: float, y: float, size: int = 80) -> list[int]:
    return [round(x), round(y), round(x) + size - 1, round(y) + size - 1]


def quality_of(boxes: np.ndarray, sharpness: float = SHARP) -> np.ndarray:
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    return np.stack([boxes[:, 2] - boxes[:, 0] + 1, np.full(len(boxes), sharpness)], axis=1).astype(np.float32)


def step(tracker: FaceTracker, frame: int, boxes: list[list[int]], sharpness: float = SHARP) -> list[int]:
    """One detection frame: scripted boxes, score 1, quality from the box width and `sharpness`."""
    boxes_array = np.array(boxes, np.int64).reshape(-1, 4)
    ids = tracker.update(frame, frame / FPS, boxes_array, np.ones(len(boxes_array)), quality_of(boxes_array, sharpness))
    assert ids.dtype == np.int64 and ids.shape == (len(boxes_array),)
    return ids.tolist()


def observe(tracker: FaceTracker, track_id: int, identity: str, distance: float = 0.4, **quality) -> bool:
    size, sharpness, score = quality.get("size", 100.0), quality.get("sharpness", SHARP), quality.get("score", 1.0)
    return tracker.add_observation(track_id, identity, distance, np.array([size, sharpness], np.float32), score)


def kinds(events: list) -> list[tuple[str, int, int]]:
    return [(event.kind, event.track_id, event.frame_index) for event in events]


# ------------------------------------------------------------------------------------------------
# quality


def golden_chips() -> np.ndarray:
    paths = sorted((DATA / "golden" / "chips").glob("*.png"))
    return np.stack([cv2.imread(str(path))[:, :, ::-1] for path in paths])


def test_face_quality_is_width_and_the_variance_of_the_laplacian() -> None:
    chips = np.concatenate([golden_chips(), np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), np.uint8)])
    boxes = np.array([[10, 20, 10 + w - 1, 20 + w] for w in (48, 60, 200, 95, 40, 41)], np.int64)
    quality = face_quality(chips, boxes, np.ones(6))
    assert quality.shape == (6, len(QUALITY_COLUMNS)) and quality.dtype == np.float32
    np.testing.assert_array_equal(quality[:, QUALITY_FACE_SIZE], [48, 60, 200, 95, 40, 41])
    for chip, sharpness in zip(chips, quality[:, QUALITY_SHARPNESS]):
        grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
        expected = cv2.Laplacian(grey, cv2.CV_64F)[1:-1, 1:-1].var()
        assert sharpness == pytest.approx(expected, rel=1e-6)
    assert face_quality(np.zeros((0, 150, 150, 3), np.uint8), np.zeros((0, 4), np.int64), []).shape == (0, 3)


def test_blur_lowers_sharpness_below_the_default_gate() -> None:
    chips = golden_chips()
    boxes = np.tile([0, 0, 99, 99], (len(chips), 1))
    blurred = [np.stack([cv2.GaussianBlur(chip, (0, 0), sigma) for chip in chips]) for sigma in (1.0, 2.0, 3.0)]
    sharpness = [face_quality(batch, boxes, np.ones(len(boxes)))[:, QUALITY_SHARPNESS] for batch in [chips, *blurred]]
    assert all((a > b).all() for a, b in itertools.pairwise(sharpness))
    gate = QualityGate()
    blurred_quality = face_quality(blurred[1], boxes, np.ones(len(boxes)))
    assert not gate.accepts(blurred_quality, np.ones(len(chips))).any()  # sigma 2: every chip out


def test_face_quality_refuses_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="chips must be"):
        face_quality(np.zeros((1, 112, 112, 3), np.uint8), np.zeros((1, 4)), [1])
    with pytest.raises(ValueError, match="2 chips but 1 boxes"):
        face_quality(np.zeros((2, 150, 150, 3), np.uint8), np.zeros((1, 4)), [1])


def test_quality_gate_and_weights() -> None:
    gate = QualityGate(min_face_size=32, min_sharpness=15, min_score=0.3, good_face_size=80, good_sharpness=100)
    quality = np.array([[80, 100], [40, 100], [40, 50], [31, 500], [200, 14], [200, 500]], np.float32)
    scores = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.2])
    np.testing.assert_array_equal(gate.accepts(quality, scores), [True, True, True, False, False, False])
    np.testing.assert_allclose(gate.weights(quality, scores), [1.0, 0.5, 0.25, 0, 0, 0])


# ------------------------------------------------------------------------------------------------
# geometry


def test_box_iou_of_inclusive_rectangles() -> None:
    a = np.array([[0, 0, 9, 9], [100, 100, 109, 109]])
    b = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [50, 50, 40, 60]])  # the last one is empty
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_greedy_assignment_takes_the_best_pairs_first() -> None:
    similarity = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.0, 0.5, 0.4]])
    rows, columns = greedy_assignment(similarity, 0.3)
    assert sorted(zip(rows.tolist(), columns.tolist())) == [(0, 0), (2, 1)]  # (1,0) lost to (0,0); 0.1 < 0.3
    rows, columns = greedy_assignment(np.zeros((0, 2)), 0.3)
    assert rows.shape == columns.shape == (0,)


# ------------------------------------------------------------------------------------------------
# tracking


def test_moving_faces_keep_their_ids() -> None:
    tracker = FaceTracker("s")
    for frame in range(30):
        ids = step(tracker, frame, [square(10 + 5 * frame, 20 + 2 * frame), square(400 - 4 * frame, 300 - 3 * frame)])
        assert ids == [1, 2]
        if frame == 0:
            assert tracker.pop_events() == [
                TrackStarted("s", 1, 0, 0.0, (10, 20, 89, 99)),
                TrackStarted("s", 2, 0, 0.0, (400, 300, 479, 379)),
            ]
    assert tracker.pop_events() == []
    np.testing.assert_allclose(tracker.tracks[1].velocity, [5, 2, 5, 2])


def test_crossing_faces_keep_their_ids() -> None:
    # A goes right and B left, 12 px a frame, 10 px apart vertically. At frame 6, B's box overlaps where A
    # was (IoU 0.71) more than A's own new box does (0.67): only the velocity keeps them apart.
    tracker = FaceTracker("s")
    for frame in range(12):
        a, b = square(12 * frame, 100, 60), square(132 - 12 * frame, 110, 60)
        assert step(tracker, frame, [b, a] if frame % 2 else [a, b]) == ([2, 1] if frame % 2 else [1, 2])
    still = box_iou([square(60, 100, 60)], [square(72, 100, 60), square(60, 110, 60)])[0]
    assert still[1] > still[0]  # the trap is real: a tracker without prediction swaps them at frame 6


def test_missed_detections_keep_the_track() -> None:
    tracker = FaceTracker("s", max_age=15)
    for frame in range(20):
        detections = [] if 5 <= frame < 15 else [square(10 + 6 * frame, 50)]  # ten frames without it
        ids = step(tracker, frame, detections)
        assert ids == ([1] if detections else [])
    assert kinds(tracker.pop_events()) == [("track_started", 1, 0)]


def test_face_leaving_and_returning_becomes_a_new_track() -> None:
    tracker = FaceTracker("s", max_age=15)
    for frame in range(50):
        ids = step(tracker, frame, [square(200, 100)] if frame < 10 or frame >= 40 else [])
        if frame == 25:  # 16 frames unseen: over max_age
            assert tracker.pop_events() == [
                TrackStarted("s", 1, 0, 0.0, (200, 100, 279, 179)),
                TrackEnded("s", 1, 9, 9 / FPS, (200, 100, 279, 179), None, None, 0, 0.0),
            ]
            assert tracker.tracks == {}
        if frame >= 40:
            assert ids == [2]
    tracker.finish()
    assert kinds(tracker.pop_events()) == [("track_started", 2, 40), ("track_ended", 2, 49)]


def test_ages_in_seconds_survive_dropped_frames_that_frame_counts_do_not() -> None:
    """A live stream processed at ~0.5 frames/s: 60 capture frames (2 s) between processed frames. Counted in
    frames (max_age 15) the track dies at every processed frame; counted in seconds (3 s) it lives on.
    (FPS 25: 60 frames are 2.4 s.)"""
    box = square(200, 100)
    by_frames, by_time = FaceTracker("s", max_age=15), FaceTracker("s", max_age_s=3.0)
    for frame in range(0, 300, 60):
        frames_ids, time_ids = step(by_frames, frame, [box]), step(by_time, frame, [box])
    assert frames_ids == [5] and time_ids == [1]
    assert by_time.predict_only(310, 310 / FPS)[0].tolist() == [1]  # 2.8 s later: still carried
    assert by_time.predict_only(320, 320 / FPS)[0].tolist() == []  # 3.2 s: too old to carry
    assert step(by_time, 320, [box]) == [2]
    # The summary merges stretches at most max_age_s apart: frames 0-240 and 320 are 3.2 s apart.
    assert [(i.first_frame, i.last_frame) for i in by_time.identity_summary()["unknown"]] == [(0, 240), (320, 320)]


def test_detect_every_kth_frame_carries_the_boxes() -> None:
    # Two faces at 6 and 9 px a frame, the detector runs every 4th frame; between, the tracker predicts.
    def truth(frame: int) -> list[list[int]]:
        return [square(10 + 6 * frame, 40), square(600 - 9 * frame, 240, 100)]

    tracker = FaceTracker("s", max_age=8)
    for frame in range(41):
        if frame % 4 == 0:
            assert step(tracker, frame, truth(frame)) == [1, 2]
            continue
        ids, boxes = tracker.predict_only(frame)
        assert ids.tolist() == [1, 2] and boxes.dtype == np.int64
        if frame > 4:  # the velocity is known after two detections
            np.testing.assert_array_equal(boxes, truth(frame))
        else:
            np.testing.assert_array_equal(boxes, truth(0))  # a new track stands still until seen twice
    assert kinds(tracker.pop_events()) == [("track_started", 1, 0), ("track_started", 2, 0)]


def test_predict_only_changes_nothing_and_hides_stale_tracks() -> None:
    tracker = FaceTracker("s", max_age=5)
    step(tracker, 0, [square(0, 0)])
    step(tracker, 1, [square(4, 0)])
    ids, boxes = tracker.predict_only(6)
    assert ids.tolist() == [1] and boxes.tolist() == [square(24, 0)]
    ids, boxes = tracker.predict_only(7)  # 6 frames unseen: gone from the picture, ended at the next update
    assert ids.shape == (0,) and boxes.shape == (0, 4)
    assert 1 in tracker.tracks and kinds(tracker.pop_events()) == [("track_started", 1, 0)]
    assert step(tracker, 7, []) == []
    assert kinds(tracker.pop_events()) == [("track_ended", 1, 1)]


def test_predict_only_does_not_carry_a_track_the_last_detection_missed() -> None:
    tracker = FaceTracker("s", max_age=15)
    step(tracker, 0, [square(0, 0), square(200, 0)])
    step(tracker, 2, [square(200, 0)])  # the first face has left (a scene cut, say)
    ids, boxes = tracker.predict_only(3)
    assert ids.tolist() == [2] and boxes.tolist() == [square(200, 0)]
    assert 1 in tracker.tracks  # it may still come back within max_age; it is just not drawn


def test_update_checks_its_inputs() -> None:
    tracker = FaceTracker("s")
    step(tracker, 3, [])
    with pytest.raises(ValueError, match="not after"):
        step(tracker, 3, [])
    with pytest.raises(ValueError, match="boxes must be"):
        tracker.update(4, 0.0, np.zeros((2, 4)), np.zeros(3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="quality must be"):
        tracker.update(4, 0.0, np.zeros((2, 4)), np.zeros(2), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="timestamp must be finite"):
        tracker.update(4, float("nan"), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)))
    ids = tracker.update(np.int64(5), np.float32(0.2), np.zeros((1, 4)), np.ones(1), np.ones((1, 2)))
    [started] = tracker.pop_events()
    assert type(started.frame_index) is int and type(started.timestamp) is float and ids.tolist() == [1]
    with pytest.raises(ValueError, match="before the last updated frame"):
        tracker.predict_only(2)
    with pytest.raises(ValueError, match="iou_threshold"):
        FaceTracker("s", iou_threshold=0)


# ------------------------------------------------------------------------------------------------
# identity


def one_track(frame: int = 0) -> FaceTracker:
    tracker = FaceTracker("s")
    assert step(tracker, frame, [square(100, 100, 100)]) == [1]
    tracker.pop_events()
    return tracker


def test_faces_below_the_gate_never_decide() -> None:
    tracker = one_track()
    assert not observe(tracker, 1, "bob", sharpness=BLURRY)  # blurry
    assert not observe(tracker, 1, "bob", size=24)  # too small
    assert not observe(tracker, 1, "bob", score=0.1)  # a marginal detection
    assert tracker.tracks[1].identity is None and tracker.pop_events() == []
    assert observe(tracker, 1, "alice", distance=0.42)
    track = tracker.tracks[1]
    assert (track.identity, track.distance) == ("alice", pytest.approx(0.42))
    assert tracker.pop_events() == [TrackIdentified("s", 1, 0, 0.0, (100, 100, 199, 199), "alice", 0.42, None)]
    for _ in range(5):  # a run of blurry look-alikes changes nothing either
        assert not observe(tracker, 1, "bob", sharpness=BLURRY)
    assert track.identity == "alice" and "bob" not in track.votes


def test_one_look_alike_frame_does_not_flip_an_established_identity() -> None:
    tracker = one_track()
    for _ in range(5):
        observe(tracker, 1, "alice", 0.45)
    tracker.pop_events()
    assert not observe(tracker, 1, "bob", 0.55)  # sharp, big, confident: still only one frame
    assert not observe(tracker, 1, "alice", 0.45)
    assert not observe(tracker, 1, "bob", 0.55)  # a second isolated one after a fresh "alice" neither
    assert tracker.tracks[1].identity == "alice" and tracker.pop_events() == []


def test_a_sustained_change_flips_in_bounded_time() -> None:
    """After a tracker id switch the other person's faces win, however long the track has lived."""
    for history in (5, 200):
        tracker = one_track()
        for _ in range(history):
            observe(tracker, 1, "alice", 0.4)
        tracker.pop_events()
        flipped_after = next(n for n in range(1, 50) if observe(tracker, 1, "bob", 0.5))
        assert 3 <= flipped_after <= 10, history
        [event] = tracker.pop_events()
        assert (event.identity, event.previous_identity, event.distance) == ("bob", "alice", pytest.approx(0.5))


def test_unknown_is_an_identity_like_any_other() -> None:
    tracker = one_track()
    assert observe(tracker, 1, "unknown", 0.72)
    assert tracker.tracks[1].identity == "unknown"
    assert tracker.pop_events()[0].identity == "unknown"


def test_distance_is_the_weighted_mean_of_the_supporting_votes() -> None:
    tracker = one_track()
    observe(tracker, 1, "alice", 0.40)  # weight 1
    observe(tracker, 1, "alice", 0.50, size=40)  # half the good face size: weight 0.5
    observe(tracker, 1, "unknown", 0.70)  # another label: not part of alice's distance
    decay = tracker.vote_decay
    expected = (decay**2 * 0.40 + decay * 0.5 * 0.50) / (decay**2 + decay * 0.5)
    assert tracker.tracks[1].distance == pytest.approx(expected)


def test_min_votes_delays_the_first_decision() -> None:
    tracker = FaceTracker("s", min_votes=2)
    step(tracker, 0, [square(0, 0)])
    assert not observe(tracker, 1, "alice")
    assert observe(tracker, 1, "alice")


def test_observations_for_ended_tracks_are_ignored() -> None:
    tracker = one_track()
    tracker.finish()
    assert not observe(tracker, 1, "alice")
    with pytest.raises(ValueError, match="identity"):
        observe(tracker, 1, "")


# ------------------------------------------------------------------------------------------------
# embedding schedule


def test_needs_embedding_new_periodic_and_better_faces() -> None:
    tracker = FaceTracker("s", reembed_every=10, improve_factor=1.5)
    [track_id] = step(tracker, 0, [square(100, 100, 40)])  # 40 px: weight 0.5
    assert tracker.needs_embedding(track_id, 0)  # new
    assert tracker.select_for_embedding([track_id], 0).tolist() == [True]
    for frame in range(1, 10):
        step(tracker, frame, [square(100, 100, 40)])
        assert not tracker.select_for_embedding([track_id], frame).any(), frame
    step(tracker, 10, [square(100, 100, 40)])
    assert tracker.select_for_embedding([track_id], 10).tolist() == [True]  # periodic
    step(tracker, 11, [square(95, 95, 50)])  # 0.625: better, not clearly
    assert not tracker.needs_embedding(track_id, 11)
    step(tracker, 12, [square(90, 90, 60)])  # 0.75 = 1.5 x 0.5: clearly better
    assert tracker.select_for_embedding([track_id], 12).tolist() == [True]
    step(tracker, 13, [square(80, 80, 80)])  # 1.0 < 1.5 x 0.75
    assert not tracker.needs_embedding(track_id, 13)
    assert not tracker.needs_embedding(track_id, 14)  # no detection at frame 14: nothing to embed


def test_faces_the_gate_rejects_are_not_embedded() -> None:
    tracker = FaceTracker("s")
    [track_id] = step(tracker, 0, [square(100, 100, 80)], sharpness=BLURRY)
    assert not tracker.needs_embedding(tracker.tracks[track_id], 0)
    step(tracker, 1, [square(100, 100, 80)])
    assert tracker.needs_embedding(track_id, 1)


def test_observations_count_as_embedded_quality() -> None:
    """A pipeline that embeds everything still gets a sensible "clearly better" reference."""
    tracker = one_track()
    observe(tracker, 1, "alice", size=40)
    assert tracker.tracks[1].best_embedded_weight == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# summary


def test_summary_time_ranges_per_identity() -> None:
    tracker = FaceTracker("s", max_age=5)
    for frame in range(60):
        boxes = []
        if frame < 10 or 40 <= frame < 50:
            boxes.append(square(0, 0))  # alice, twice
        if 5 <= frame <= 20:
            boxes.append(square(300, 0))  # bob
        if 25 <= frame <= 30:
            boxes.append(square(600, 0))  # a face that never passes the gate
        ids = step(tracker, frame, boxes)
        for track_id, box in zip(ids, boxes):
            if box[0] == 0:
                observe(tracker, track_id, "alice")
            elif box[0] == 300:
                observe(tracker, track_id, "bob")
            else:
                observe(tracker, track_id, "carol", sharpness=BLURRY)
    summary = tracker.identity_summary()
    assert summary == {
        "alice": [OnScreenInterval(0, 9, 0.0, 9 / FPS, (1,)), OnScreenInterval(40, 49, 40 / FPS, 49 / FPS, (4,))],
        "bob": [OnScreenInterval(5, 20, 5 / FPS, 20 / FPS, (2,))],
        "unknown": [OnScreenInterval(25, 30, 25 / FPS, 30 / FPS, (3,))],  # never decided counts as unknown
    }
    tracker.finish()
    assert tracker.identity_summary() == summary  # ended tracks are remembered


def test_summary_merges_short_gaps_and_splits_at_identity_changes() -> None:
    tracker = FaceTracker("s", max_age=5)
    for frame in range(40):
        if frame < 10:
            boxes = [square(0, 0)]
        elif frame < 13:
            boxes = []
        else:
            boxes = [square(500, 0)]  # somewhere else: a new track, 3 frames after the first one was last seen
        ids = step(tracker, frame, boxes)
        for track_id in ids:
            observe(tracker, track_id, "alice" if frame < 25 else "bob")
    alice, bob = tracker.identity_summary()["alice"], tracker.identity_summary()["bob"]
    assert [(i.first_frame, i.track_ids) for i in alice] == [(0, (1, 2))]  # one interval over the 3-frame gap
    switch = bob[0].first_frame
    assert 27 <= switch <= 35 and bob[0].last_frame == 39 and bob[0].track_ids == (2,)
    assert alice[0].last_frame == switch - 1


# ------------------------------------------------------------------------------------------------
# the demo clip, with dlib's own boxes, scores and labels


def clip_rows() -> list[dict]:
    path = DATA / "golden" / "dlib-20.0.1-video-up1-every-frame.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("every", [1, 3])
def test_demo_clip(every: int) -> None:
    """dlib's every-frame result for the Hamilton clip (sharpness is not in the file: taken as sharp).

    Frames 20-42 show one unknown face (a scene cut from Lin-Manuel Miranda at frame 20) that dlib labels
    Alex Lacamoire in two single frames: frame 26 (a look-alike, score 0.88) and frame 42 (score 0.01).
    Neither may name the track.
    """
    tracker = FaceTracker("clip")
    events = []
    for row in clip_rows():
        frame = row["frame"]
        if frame % every:
            tracker.predict_only(frame)
            continue
        faces = row["faces"]
        boxes = np.array([face["box"] for face in faces], np.int64).reshape(-1, 4)
        scores = np.array([face["score"] for face in faces])
        quality = quality_of(boxes)
        ids = tracker.update(frame, frame / FPS, boxes, scores, quality)
        for track_id, face, face_quality_row in zip(ids, faces, quality):
            distance = min(face["distances"].values())
            tracker.add_observation(int(track_id), face["label"], distance, face_quality_row, face["score"])
        events += tracker.pop_events()
    tracker.finish()
    events += tracker.pop_events()

    started = [event for event in events if isinstance(event, TrackStarted)]
    identified = [event for event in events if isinstance(event, TrackIdentified)]
    assert not any(event.identity == "Alex_Lacamoire" for event in identified)
    scene_cut = next(event.track_id for event in started if 20 <= event.frame_index <= 21)
    assert [event.identity for event in identified if event.track_id == scene_cut] == ["unknown"]
    assert len(started) <= 7  # one track per face and scene, at most one lost at a detector jump with every=3
    summary = tracker.identity_summary()
    assert "Alex_Lacamoire" not in summary
    first_detection_from_82 = 82 + (-82 % every)
    assert [interval.first_frame for interval in summary["Lin_Manuel_Miranda"]] == [0, first_detection_from_82]


# ------------------------------------------------------------------------------------------------
# decision="mean": the track's mean descriptor decides


def test_mean_descriptor_keeps_the_best_faces_weighted_by_quality() -> None:
    tracker = FaceTracker("s", decision="mean", best_faces=3)
    (track,) = step(tracker, 0, [square(100, 100)])
    assert tracker.mean_descriptor(track) is None
    rng = np.random.default_rng(0)
    faces = rng.normal(size=(5, 128)).astype(np.float32)
    good = np.array([100.0, SHARP], np.float32)  # weight 1
    half = np.array([100.0, 50.0], np.float32)  # sharpness 50 of the gate's good 100: weight 0.5
    assert tracker.add_face(track, faces[0], half, 1.0)
    assert tracker.add_face(track, faces[1], good, 1.0)
    assert not tracker.add_face(track, faces[2], np.array([10.0, SHARP], np.float32), 1.0)  # too small: gated out
    expected = (0.5 * faces[0] + 1.0 * faces[1]) / 1.5
    np.testing.assert_allclose(tracker.mean_descriptor(track), expected, rtol=1e-6)
    assert tracker.add_face(track, faces[3], good, 1.0)
    assert tracker.add_face(track, faces[4], good, 1.0)  # full: replaces the weakest face (faces[0])
    np.testing.assert_allclose(tracker.mean_descriptor(track), faces[[1, 3, 4]].mean(axis=0), rtol=1e-5)
    assert not tracker.add_face(999, faces[0], good, 1.0) and tracker.mean_descriptor(999) is None
    with pytest.raises(ValueError, match="decision"):
        FaceTracker("s", decision="median")


def test_mean_decision_takes_the_match_of_the_mean_after_min_votes() -> None:
    tracker = FaceTracker("s", decision="mean", min_votes=2)
    (track,) = step(tracker, 0, [square(100, 100)])
    tracker.pop_events()
    assert not observe(tracker, track, "unknown", 0.62)  # one face: not enough yet
    assert tracker.tracks[track].identity is None
    assert observe(tracker, track, "Alex", 0.593)  # the mean now matches: decided at once, no vote to win
    assert (tracker.tracks[track].identity, tracker.tracks[track].distance) == ("Alex", 0.593)
    assert not observe(tracker, track, "Alex", 0.58)
    assert tracker.tracks[track].distance == 0.58  # the latest mean's distance
    assert observe(tracker, track, "unknown", 0.61)  # the mean drifted past the threshold: unknown again
    events = [e for e in tracker.pop_events() if e.kind == "track_identified"]
    assert [(e.identity, e.previous_identity) for e in events] == [("Alex", None), ("unknown", "Alex")]
