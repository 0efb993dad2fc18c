"""pipeline/sinks/: ordering, de-duplication, tracking and identity, and every output, on scripted streams."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from facestream.engines.face_batch import BOX_REGION, BOX_SCAN, FaceBatch
from facestream.enroll.gallery import Gallery
from facestream.pipeline.config import Config, KioskConfig, PipelineConfig, TrackerConfig
from facestream.pipeline.domain.kiosk import KioskDecider, KioskPolicy
from facestream.pipeline.domain.unknowns import UnknownTracks, read_unknowns
from facestream.pipeline.runtime.messages import (
    DescriptorsMessage,
    EndOfStream,
    FrameMessage,
    MessageError,
)
from facestream.pipeline.runtime.stages import empty_faces
from facestream.pipeline.sinks.core import SinkCore
from facestream.pipeline.sinks.matcher import GalleryMatcher, open_matcher
from facestream.pipeline.sinks.outputs import SinkOutputs
from facestream.pipeline.sinks.process import live_reorder_s
from facestream.pipeline.sinks.records import describe_summary, format_time, json_line
from facestream.pipeline.sinks.writers import JsonLines, video_paths

from conftest import golden_images, golden_video, wait_until

FPS = 10.0
WIDTH, HEIGHT = 320, 240
PEOPLE = {1: ("Alice", 0.41), 2: ("Bob", 0.47), 3: ("unknown", 0.83)}  # descriptor[0] -> the gallery's answer


class ScriptedMatcher:
    """A gallery stand-in: the first descriptor value says who the face is (see PEOPLE)."""

    def __init__(self) -> None:
        self.refreshed = 0
        self.closed = False

    def identify(self, descriptors: np.ndarray) -> SimpleNamespace:
        answers = [PEOPLE[int(d[0])] for d in descriptors]
        return SimpleNamespace(identities=[a[0] for a in answers], distances=np.array([a[1] for a in answers]))

    def refresh(self) -> bool:
        self.refreshed += 1
        return False

    def close(self) -> None:
        self.closed = True


def faces_at(
    stream: str, index: int, people: list[tuple[int, list[int]]], sharpness: float = 120.0
) -> DescriptorsMessage:
    boxes = np.array([box for _, box in people], np.int64).reshape(-1, 4)
    descriptors = np.zeros((len(people), 128), np.float32)
    descriptors[:, 0] = [who for who, _ in people]
    widths = boxes[:, 2] - boxes[:, 0] + 1
    quality = np.stack([widths, np.full(len(people), sharpness), np.ones(len(people))], axis=1).astype(np.float32)
    faces = FaceBatch(boxes, np.ones(len(people)), np.zeros((len(people), 5, 2), np.int64), descriptors=descriptors,
                      quality=quality)  # fmt: skip
    return DescriptorsMessage(stream, index, index / FPS, WIDTH, HEIGHT, faces)


def scene(index: int) -> list[tuple[int, list[int]]]:
    """Alice walks right in frames 0-9, nobody in 10-14, Bob stands still in 15-29."""
    if index < 10:
        return [(1, [40 + 2 * index, 60, 119 + 2 * index, 139])]
    if index < 15:
        return []
    return [(2, [180, 50, 259, 129])]


def image_of(index: int) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    image[:, :, 0] = index * 8  # every frame different
    return image


def tracker_config(**changes: object) -> TrackerConfig:
    return dataclasses.replace(TrackerConfig(), **changes)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def outputs(tmp_path: Path) -> tuple[SinkOutputs, Path]:
    published = []
    sink_outputs = SinkOutputs(
        events=str(tmp_path / "out/events.jsonl"), detections=str(tmp_path / "out/detections.jsonl"),
        video=str(tmp_path / "out/annotated.mp4"), stream_fps={"cam": FPS},
        publish=lambda topic, line: published.append((topic, line)),
    )  # fmt: skip
    sink_outputs.published = published
    return sink_outputs, tmp_path / "out"


def test_file_stream_in_order_deduplicated_tracked_and_written(outputs: tuple[SinkOutputs, Path]) -> None:
    sink_outputs, out = outputs
    core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, tracker_config(max_age=3))
    for index in range(30):  # the source sends images first, straight to the sink
        core.add(FrameMessage("cam", index, index / FPS, False, image_of(index)), "sink_in")
    results = [faces_at("cam", index, scene(index)) for index in range(30)]
    rng = random.Random(5)
    arrivals = [*results, results[3], results[17], results[17]]  # re-sent after a worker died
    rng.shuffle(arrivals)
    processed = []
    for message in arrivals:
        core.add(message, "descriptors")
        processed.append(core.pump())
        assert not core.done
    assert sum(processed) == 30
    acks = core.take_acks()["cam"]
    assert sorted(set(acks)) == list(range(30)) and len(acks) == 33  # duplicates are acknowledged again
    assert core.stats.counters["duplicates"] == 3
    core.add(EndOfStream("cam", 30), "sink_in")
    core.pump()
    assert core.done
    core.close()

    events = read_lines(out / "events.jsonl")
    kinds = [(e["event"], e.get("track_id"), e.get("identity")) for e in events]
    assert kinds == [
        ("track_started", 1, None), ("track_identified", 1, "Alice"), ("track_ended", 1, "Alice"),
        ("track_started", 2, None), ("track_identified", 2, "Bob"), ("track_ended", 2, "Bob"), ("summary", None, None),
    ]  # fmt: skip
    for event in events[:-1]:
        assert {"stream_id", "track_id", "frame_index", "timestamp", "box"} <= event.keys()
        assert event["stream_id"] == "cam" and len(event["box"]) == 4
    assert events[1]["distance"] == pytest.approx(0.41) and events[1]["frame_index"] == 0
    assert events[2]["last_frame"] == 9 and events[2]["box"] == [58, 60, 137, 139]  # its last detection
    assert events[2]["frame_index"] == 13  # where the end was decided (max_age 3): events stay in frame order
    assert events[3]["frame_index"] == 15 and events[3]["timestamp"] == pytest.approx(1.5)
    summary = events[-1]
    assert summary["frames"] == 30
    alice, bob = summary["identities"]["Alice"], summary["identities"]["Bob"]
    assert [(i["first_frame"], i["last_frame"]) for i in alice["intervals"]] == [(0, 9)]
    assert [(i["first_timestamp"], i["last_timestamp"]) for i in bob["intervals"]] == [(1.5, 2.9)]
    assert alice["seconds"] == pytest.approx(0.9) and set(summary["identities"]) == {"Alice", "Bob"}
    assert describe_summary(summary) == [
        "cam: 30 frames", "  Alice: 0:00.00-0:00.90 (frames 0-9)", "  Bob: 0:01.50-0:02.90 (frames 15-29)",
    ]  # fmt: skip
    assert [topic for topic, _ in sink_outputs.published] == [e["event"] for e in events]
    assert json.loads(sink_outputs.published[1][1]) == events[1]

    detections = read_lines(out / "detections.jsonl")
    assert [d["frame_index"] for d in detections] == list(range(30))
    first = detections[0]
    assert set(first) == {"stream_id", "frame_index", "timestamp", "width", "height", "detected", "scanned", "faces"}
    assert first["faces"] == [{
        "box": [40, 60, 119, 139], "box_source": "scan", "score": 1.0, "track_id": 1, "identity": "Alice",
        "distance": pytest.approx(0.41),
        "match": {"identity": "Alice", "distance": pytest.approx(0.41)},
    }]  # fmt: skip
    assert all(d["faces"] == [] and d["detected"] for d in detections[10:15])
    assert {f["identity"] for d in detections[15:] for f in d["faces"]} == {"Bob"}

    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 30
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 30
    raw = image_of(0)[:, :, ::-1].astype(int)
    box_edge = np.abs(frames[0][60, 40:120].astype(int) - raw[60, 40:120]).mean()
    elsewhere = np.abs(frames[0][200:230, 200:300].astype(int) - raw[200:230, 200:300]).mean()
    assert box_edge > 40 and elsewhere < 6  # the box is drawn, the rest of the frame is the frame


def test_skipped_frames_carry_the_tracks_boxes(outputs: tuple[SinkOutputs, Path]) -> None:
    sink_outputs, out = outputs
    core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, tracker_config(max_age=1), detect_every=3)
    assert core.streams["cam"].tracker.max_age == 3  # never shorter than the detection interval
    for index in range(9):
        if index % 3:
            core.add(empty_faces("cam", index, index / FPS, WIDTH, HEIGHT), "sink_in")  # the source's skip notice
        else:
            core.add(faces_at("cam", index, scene(index)), "descriptors")
        core.add(FrameMessage("cam", index, index / FPS, False, image_of(index)), "sink_in")
    core.add(EndOfStream("cam", 9), "sink_in")
    core.pump()
    assert core.done
    core.close()
    detections = read_lines(out / "detections.jsonl")
    assert [d["detected"] for d in detections] == [True, False, False] * 3
    predicted = detections[1]["faces"][0]
    assert predicted["box"] == [40, 60, 119, 139]  # frame 0's box: no velocity yet ...
    assert detections[4]["faces"][0]["box"] == [46 + 2, 60, 125 + 2, 139]  # ... frame 3's, moved 2 px a frame
    assert predicted["identity"] == "Alice" and predicted["score"] is None and predicted["match"] is None
    assert core.take_acks()["cam"] == [0, 3, 6]  # skip notices need no acknowledgement
    assert cv2.VideoCapture(str(out / "annotated.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 9


@pytest.mark.parametrize("cut_distance", [0.65, 0.0])
def test_a_scene_cut_ends_the_tracks_instead_of_naming_a_stranger(tmp_path: Path, cut_distance: float) -> None:
    """Frames 0-4: Alice; frame 5 on: a cut to a blurry stranger (too blurry to vote) where Alice's face was."""
    sink_outputs = SinkOutputs(events=str(tmp_path / "e.jsonl"), detections=str(tmp_path / "d.jsonl"))
    config = tracker_config(scene_cut_distance=cut_distance)
    core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, config)
    box = [100, 60, 179, 139]
    for index in range(10):
        who, sharpness = (1, 120.0) if index < 5 else (3, 5.0)
        core.add(faces_at("cam", index, [(who, box)], sharpness), "descriptors")
    core.add(EndOfStream("cam", 10), "sink_in")
    core.pump()
    core.close()
    events = read_lines(tmp_path / "e.jsonl")
    identities = [(d["faces"][0]["track_id"], d["faces"][0]["identity"]) for d in read_lines(tmp_path / "d.jsonl")]
    if cut_distance:
        assert identities == [(1, "Alice")] * 5 + [(2, "unknown")] * 5
        ended = next(e for e in events if e["event"] == "track_ended" and e["track_id"] == 1)
        assert ended["last_frame"] == 4 and ended["frame_index"] == 5  # decided at the cut
        assert list(events[-1]["identities"]) == ["Alice", "unknown"] and core.stats.counters["scene_cuts"] == 1
    else:  # boxes only: the stranger inherits Alice's track and name
        assert identities == [(1, "Alice")] * 10


def test_a_frame_flagged_new_scene_ends_the_tracks_whatever_the_descriptors_say(tmp_path: Path) -> None:
    """The same cut, told by the detect worker (``new_scene`` on frame 5) with the descriptor test off: the
    stranger starts a new track (the live run that found this: a guest's face overlapping the singer's last
    box after a cut, 0.6 from his last face, under scene_cut_distance, inherited his name)."""
    sink_outputs = SinkOutputs(events=str(tmp_path / "e.jsonl"), detections=str(tmp_path / "d.jsonl"))
    core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, tracker_config(scene_cut_distance=0.0))
    box = [100, 60, 179, 139]
    for index in range(10):
        who, sharpness = (1, 120.0) if index < 5 else (3, 5.0)
        message = faces_at("cam", index, [(who, box)], sharpness)
        message.new_scene = index in (0, 5)  # frame 0: no track yet, nothing ends
        core.add(message, "descriptors")
    core.add(EndOfStream("cam", 10), "sink_in")
    core.pump()
    core.close()
    identities = [(d["faces"][0]["track_id"], d["faces"][0]["identity"]) for d in read_lines(tmp_path / "d.jsonl")]
    assert identities == [(1, "Alice")] * 5 + [(2, "unknown")] * 5
    ended = next(e for e in read_lines(tmp_path / "e.jsonl") if e["event"] == "track_ended" and e["track_id"] == 1)
    assert ended["last_frame"] == 4 and ended["frame_index"] == 5
    assert core.stats.counters["scene_cuts"] == 1


def test_live_stream_reorders_briefly_and_drops_late_results(tmp_path: Path) -> None:
    sink_outputs = SinkOutputs(detections=str(tmp_path / "d.jsonl"))
    core = SinkCore({"live": True}, ScriptedMatcher(), sink_outputs, tracker_config(), live_hold_s=0.2)
    core.add(faces_at("live", 0, scene(0)), "descriptors", now=0.0)
    core.add(faces_at("live", 2, scene(2)), "descriptors", now=0.0)
    assert core.pump(now=0.01) == 1  # 0 at once; 2 waits for 1 (frames of a live source may be dropped)
    core.add(faces_at("live", 1, scene(1)), "descriptors", now=0.05)
    assert core.pump(now=0.06) == 2  # 1 then 2, in order
    core.add(faces_at("live", 5, scene(5)), "descriptors", now=1.0)
    assert core.pump(now=1.01) == 0 and core.pump(now=1.3) == 1  # 3 and 4 never came (dropped at the source)
    core.add(faces_at("live", 4, scene(4)), "descriptors", now=1.4)  # too late: 5 is out
    assert core.pump(now=2.0) == 0 and core.stats.counters["late"] == 1
    assert core.take_acks() == {"live": [0, 2, 1, 5, 4]}  # the source waits for these before ending the stream
    core.close()
    assert [d["frame_index"] for d in read_lines(tmp_path / "d.jsonl")] == [0, 1, 2, 5]


def test_stop_processes_what_is_in_order_and_closes_outputs(outputs: tuple[SinkOutputs, Path]) -> None:
    sink_outputs, out = outputs
    matcher = ScriptedMatcher()
    core = SinkCore({"cam": False}, matcher, sink_outputs, tracker_config())
    for index in [*range(5), *range(6, 10)]:  # frame 5 is still in a worker
        core.add(FrameMessage("cam", index, index / FPS, False, image_of(index)), "sink_in")
        core.add(faces_at("cam", index, scene(index)), "descriptors")
    core.pump()
    core.close()  # SIGTERM
    assert matcher.closed
    detections = read_lines(out / "detections.jsonl")
    assert [d["frame_index"] for d in detections] == [0, 1, 2, 3, 4]
    events = read_lines(out / "events.jsonl")
    assert [e["event"] for e in events] == ["track_started", "track_identified", "track_ended", "summary"]
    assert events[-1]["frames"] == 5 and events[2]["frame_index"] == 4
    assert cv2.VideoCapture(str(out / "annotated.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 5


def test_messages_that_do_not_belong_are_errors_not_crashes(tmp_path: Path) -> None:
    core = SinkCore({"cam": False}, ScriptedMatcher(), SinkOutputs(), tracker_config())
    with pytest.raises(MessageError, match="unknown stream"):
        core.add(faces_at("elsewhere", 0, scene(0)), "descriptors")
    with pytest.raises(MessageError, match="skip notice must have no faces"):
        one_face = FaceBatch(np.zeros((1, 4), np.int64), np.ones(1), np.zeros((1, 5, 2), np.int64),
                             np.zeros((1, 150, 150, 3), np.uint8), quality=np.zeros((1, 3), np.float32))  # fmt: skip
        core.add(dataclasses.replace(empty_faces("cam", 0, 0.0, WIDTH, HEIGHT), faces=one_face), "sink_in")
    with pytest.raises(MessageError, match="unexpected EndOfStream"):
        core.add(EndOfStream("cam", 3), "descriptors")
    core.add(faces_at("cam", 0, scene(0)), "descriptors")  # and the sink goes on
    assert core.pump() == 1


def test_gallery_changes_reach_a_running_matcher(tmp_path: Path) -> None:
    """Enrolments and removals by another process show up at refresh(); a gallery created later is opened then."""
    from facestream.enroll.gallery import Gallery

    rng = np.random.default_rng(3)
    alice, bob = rng.normal(size=(2, 128)).astype(np.float32) * 0.05
    path = tmp_path / "later" / "gallery.db"
    matcher = open_matcher(Config(), str(path))
    assert isinstance(matcher, GalleryMatcher) and matcher.gallery is None and not path.exists()
    assert matcher.identify(alice[None]).identities == ["unknown"]  # nobody yet, and no file created
    assert not matcher.refresh()
    with Gallery(path) as writer:  # another process enrols
        writer.add_samples("Alice", alice[None])
        assert matcher.refresh()  # the file appeared: opened
        assert matcher.identify(alice[None]).identities == ["Alice"]
        writer.add_samples("Bob", bob[None])
        assert matcher.identify(bob[None]).identities == ["unknown"]  # not before the refresh ...
        assert matcher.refresh() and not matcher.refresh()  # ... but after it; and only once
        assert matcher.identify(np.stack([alice, bob])).identities == ["Alice", "Bob"]
        writer.remove_person("Alice")
        assert matcher.refresh()
        assert matcher.identify(alice[None]).identities == ["unknown"]
    matcher.close()


def test_video_paths_per_stream() -> None:
    assert video_paths("out/a.mp4", ["one"]) == {"one": Path("out/a.mp4")}
    assert video_paths("out/a.mp4", ["x", "y"]) == {"x": Path("out/a-x.mp4"), "y": Path("out/a-y.mp4")}


WRITER = """
import sys
from facestream.pipeline.sinks.writers import JsonLines
lines = JsonLines(sys.argv[1])
record = {"event": "track_started", "stream_id": "s" * 200, "box": list(range(400))}
print("ready", flush=True)
i = 0
while True:
    record["frame_index"] = i
    lines.write(record)
    i += 1
"""


def test_events_file_is_valid_line_by_line_after_an_abrupt_stop(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        wait_until(lambda: path.is_file() and path.read_bytes().count(b"\n") >= 50, "50 lines written before the kill")
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    data = path.read_bytes()
    assert len(data) > 100_000
    # Every line but possibly the last is whole and in order; the last can only be cut when the kill lands
    # while the kernel copies a line across a page boundary (seen once in CI: cut at 266 x 4096 bytes), and
    # is then the start of the next line.
    whole, _, tail = data.rpartition(b"\n")
    indices = [json.loads(line)["frame_index"] for line in whole.decode().splitlines()]
    assert indices == list(range(len(indices)))
    following = {"event": "track_started", "stream_id": "s" * 200, "box": list(range(400)), "frame_index": len(indices)}
    assert json_line(following).startswith(tail) and len(tail) < len(json_line(following))
    assert JsonLines(tmp_path / "new/dir/x.jsonl").path.parent.is_dir()


def test_live_results_wait_for_reordering_only_when_they_can_come_out_of_order() -> None:
    base = PipelineConfig(detect_workers=1, embed_workers=1, live_reorder_ms=200.0, run_dir="")
    ipc = {"frames": "ipc:///tmp/run/frames", "descriptors": "ipc:///tmp/run/descriptors"}
    assert live_reorder_s(base, ipc) == 0.0  # one worker per stage: results arrive in order
    assert live_reorder_s(dataclasses.replace(base, detect_workers=2), ipc) == 0.2
    assert live_reorder_s(dataclasses.replace(base, embed_workers=3), ipc) == 0.2
    assert live_reorder_s(base, {**ipc, "frames": "tcp://10.0.0.2:5555"}) == 0.2  # remote workers may join
    local_join = dataclasses.replace(base, run_dir="/srv/facestream")  # local `facestream stage` may join
    assert live_reorder_s(local_join, ipc) == 0.2


def test_summary_times_are_positions_in_files_and_clock_times_live() -> None:
    assert format_time(75.5) == "1:15.50"
    assert format_time(0.0) == "0:00.00"
    live = time.mktime((2026, 11, 22, 10, 45, 17, 0, 0, -1)) + 0.98
    assert format_time(live) == "10:45:17.98"


# ------------------------------------------------------------------------------------------------
# unknown tracks and kiosk decisions (pipeline/domain/unknowns.py, pipeline/domain/kiosk.py)

LIN_PHOTO = "video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png"


def test_sink_writes_unknown_tracks_and_kiosk_decisions(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Gallery(db) as gallery:
        gallery.add_samples("Lin_Manuel_Miranda", np.array([golden_images()[LIN_PHOTO]["cnn_faces"][0]["descriptor"]]))
    outputs = SinkOutputs(events=str(tmp_path / "events.jsonl"))
    core = SinkCore(
        {"clip": False}, open_matcher(Config(), str(db)), outputs,
        TrackerConfig(),
        unknowns=UnknownTracks(tmp_path / "unknowns.jsonl", sources={"clip": "rtsp://user:pw@cam/clip"}),
        kiosk=KioskDecider(KioskPolicy.from_config(KioskConfig())),
    )  # fmt: skip
    frames = golden_video()["frames"]
    for k in range(30):
        faces = frames[str(k)]["cnn_faces"]
        boxes = np.array([f["rect"][:4] for f in faces], np.int64).reshape(-1, 4)
        scores = np.array([f["rect"][4] for f in faces], np.float64)
        quality = np.zeros((len(faces), 3), np.float32)
        quality[:, 0], quality[:, 1], quality[:, 2] = boxes[:, 2] - boxes[:, 0] + 1, 50.0, scores
        batch = FaceBatch(boxes, scores, np.array([f["landmarks_5"] for f in faces], np.int64).reshape(-1, 5, 2),
                          descriptors=np.array([f["descriptor"] for f in faces], np.float32).reshape(-1, 128),
                          quality=quality)  # fmt: skip
        core.add(DescriptorsMessage("clip", k, k / 29.97, 640, 360, batch), "descriptors")
    core.add(EndOfStream("clip", 30), "sink_in")
    core.pump()
    core.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    decisions = [
        (e["decision"], e["reason"], e["identity"], e["track_id"], e["frame_index"], e["evidence"]["used_frames"])
        for e in events if e["event"] == "access_decision"
    ]  # fmt: skip
    assert decisions == [
        ("granted", "k_of_n", "Lin_Manuel_Miranda", 1, 2, [0, 1, 2]),  # dlib: 0.515, 0.538, 0.504
        ("denied", "track_ended", None, 2, 29, []),  # Alex Lacamoire, not enrolled
    ]
    report = read_unknowns(tmp_path / "unknowns.jsonl")
    assert report.tracks == 1 and {f.visit for f in report.faces} == {("clip", 2)} and len(report.faces) == 3
    assert report.faces[0].source == "rtsp://user:***@cam/clip"


@pytest.mark.parametrize("decision", ["mean", "vote"])
def test_events_carry_descriptors_only_when_configured(tmp_path: Path, decision: str) -> None:
    for enabled in (False, True):
        path = tmp_path / f"events-{decision}-{enabled}.jsonl"
        published: list = []
        sink_outputs = SinkOutputs(events=str(path), publish=lambda topic, line, sink=published: sink.append(line))
        core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, tracker_config(decision=decision),
                        event_descriptors=enabled)  # fmt: skip
        for index in range(30):
            core.add(faces_at("cam", index, scene(index)), "descriptors")
        core.add(EndOfStream("cam", 30), "sink_in")
        core.pump()
        core.close()
        events = read_lines(path)
        identified = [e for e in events if e["event"] == "track_identified"]
        assert [e["identity"] for e in identified] == ["Alice", "Bob"]
        with_descriptor = [e for e in events if "descriptor" in e]
        if not enabled:  # the default: no biometric data in events, in the file or on the socket
            assert with_descriptor == [] and all(b'"descriptor"' not in line for line in published)
        else:
            assert with_descriptor == identified
            assert [e["descriptor"][0] for e in identified] == [1.0, 2.0] and len(identified[0]["descriptor"]) == 128


def test_events_are_in_frame_order_and_a_never_identified_track_ends_unknown(tmp_path: Path) -> None:
    """Alice leaves at frame 9 and Bob arrives at 15: her end is decided at frame 13 (max_age 3), before Bob
    starts, and says so (last_frame 9). A track whose faces are all below the quality gate ends "unknown"."""
    sink_outputs = SinkOutputs(events=str(tmp_path / "e.jsonl"), detections=str(tmp_path / "d.jsonl"))
    core = SinkCore({"cam": False}, ScriptedMatcher(), sink_outputs, tracker_config(max_age=3))
    for index in range(30):
        blurred = index >= 15  # Bob's faces never pass the quality gate
        core.add(faces_at("cam", index, scene(index), sharpness=0.0 if blurred else 120.0), "descriptors")
        core.pump()
    core.add(EndOfStream("cam", 30), "sink_in")
    core.pump()
    core.close()
    events = read_lines(tmp_path / "e.jsonl")
    frames = [e["frame_index"] for e in events if e["event"] != "summary"]
    assert frames == sorted(frames), [(e["event"], e["frame_index"]) for e in events]
    alice, bob = (e for e in events if e["event"] == "track_ended")
    assert alice["last_frame"] == 9 and alice["frame_index"] == 13 and alice["identity"] == "Alice"
    assert bob["identity"] == "unknown" and bob["decided"] is False and alice["decided"] is True
    detections = read_lines(tmp_path / "d.jsonl")
    assert {f["identity"] for d in detections[15:] for f in d["faces"]} == {"unknown"}


def test_labels_stay_inside_the_frame_and_off_other_faces() -> None:
    from facestream.pipeline.sinks.annotate import place_labels

    width, height = 640, 360
    # a face at the top right corner, one at the bottom edge, and two side by side with room below them
    boxes = [(560, 0, 639, 79), (10, 300, 89, 359), (200, 100, 279, 179), (290, 100, 369, 179)]
    sizes = [(150, 20), (150, 20), (150, 20), (150, 20)]
    places = place_labels(boxes, sizes, width, height)
    for (x0, y0, x1, y1), (w, h) in zip(places, sizes):
        assert x0 >= 0 and x1 <= width and y0 >= 0 and y1 <= height and (x1 - x0, y1 - y0) == (w, h)
    for i, place in enumerate(places):
        for j, box in enumerate(boxes):
            if i != j:  # covers no other face ...
                assert min(place[2], box[2] + 1) <= max(place[0], box[0]) or min(place[3], box[3] + 1) <= max(
                    place[1], box[1]), (i, j, place, box)  # fmt: skip
        for other in places[:i]:  # ... and no other label
            assert min(place[2], other[2]) <= max(place[0], other[0]) or min(place[3], other[3]) <= max(
                place[1], other[1])  # fmt: skip

def test_faces_without_a_descriptor_are_tracked_but_not_matched(tmp_path: Path) -> None:
    """The detect worker's embed choice (pipeline/domain/follow.py): a face sent without a descriptor (embed 0, NaN
    row) keeps its track and box, says where its box came from, and is neither matched nor averaged."""
    outputs = SinkOutputs(detections=str(tmp_path / "d.jsonl"))
    core = SinkCore({"cam": False}, ScriptedMatcher(), outputs, tracker_config())
    for index in range(3):
        message = faces_at("cam", index, [(1, [40, 60, 119, 139]), (2, [300, 60, 379, 139])])
        embed = np.array([1, 0] if index else [1, 1], np.uint8)
        descriptors = np.array(message.faces.descriptors)
        descriptors[embed == 0] = np.nan
        message.faces.descriptors, message.faces.embed = descriptors, embed
        message.faces.box_source = np.array([BOX_SCAN if index == 0 else BOX_REGION] * 2, np.uint8)
        message.scanned = index == 0
        core.add(message, "descriptors")
    core.add(EndOfStream("cam", 3), "sink_in")
    core.pump()
    core.close()
    records = read_lines(tmp_path / "d.jsonl")
    assert [r["scanned"] for r in records] == [True, False, False]
    assert [[f["box_source"] for f in r["faces"]] for r in records] == [["scan"] * 2, ["region"] * 2, ["region"] * 2]
    assert [[f["track_id"] for f in r["faces"]] for r in records] == [[1, 2]] * 3
    assert [f["match"] for f in records[2]["faces"]][1] is None and records[2]["faces"][0]["match"] is not None
    assert records[2]["faces"][1]["identity"] == "Bob"  # decided from frame 0, its one embedded face
    assert core.stats.counters["faces_scan"] == 2 and core.stats.counters["faces_region"] == 4
