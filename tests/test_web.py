"""The web view: `run --web`, `facestream serve` and what the sink sends them (pipeline/web/app.py,
pipeline/sinks/web_feed.py).

Real parts throughout: the HTTP server on a free localhost port, ZeroMQ PUB sockets over ipc:// feeding it,
a real SQLite gallery, dlib's golden descriptors of the demo clip, and at the end the whole pipeline with
a real headless Chromium clicking through the page (Debian's chromium + chromium-driver, driven by
Selenium; `make test` installs them where it can; without them that test skips and says why, except
when FACESTREAM_REQUIRE_BROWSER=1, as `.ci/run` sets, where it fails).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
import zmq

from facestream.engines.face_batch import FaceBatch
from facestream.enroll.gallery import Gallery
from facestream.pipeline.config import load_config
from facestream.pipeline.runtime.messages import DescriptorsMessage
from facestream.pipeline.sinks.records import TrackedFaces
from facestream.pipeline.sinks.web_feed import FrameChips, WebFeed
from facestream.pipeline.web.address import WebError, check_binding, parse_address, resolve_token
from facestream.pipeline.web.server import WebServer

DATA = Path(__file__).parent / "data"
CLIP = DATA / "video" / "short_hamilton_clip.mp4"
GOLDEN = DATA / "golden" / "dlib-20.0.1-video.json"
GOLDEN_LABELS = DATA / "golden" / "dlib-20.0.1-video-up1-every-frame.jsonl"
LIN, ALEX = "Lin_Manuel_Miranda", "Alex Lacamoire"
CHANGE = {"X-Facestream": "1"}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@cache
def golden_frames() -> dict[int, list[dict[str, Any]]]:
    """dlib's faces of demo-clip frames 0-29: box, score, landmarks, descriptor."""
    frames = json.loads(GOLDEN.read_text())["frames"]
    return {int(index): [{"box": face["rect"][:4], "score": face["rect"][4], "landmarks": face["landmarks_5"],
                          "descriptor": np.asarray(face["descriptor"], np.float32)} for face in record["cnn_faces"]]
            for index, record in frames.items()}  # fmt: skip


@cache
def clip_frame(index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(CLIP))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = capture.read()
    capture.release()
    assert ok
    return np.ascontiguousarray(bgr[:, :, ::-1])


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def http_json(
    url: str, method: str = "GET", payload: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    body = None if payload is None else json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    status, _, data = http(url, method, body, all_headers)
    return status, json.loads(data) if data else None


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 20, every: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if every is not None:
            every()
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def chip_png(frame: int, face: int = 0) -> bytes:
    from facestream.engines.chips import extract_face_chips

    chip = extract_face_chips(clip_frame(frame), np.asarray([golden_frames()[frame][face]["landmarks"]]))[0]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(chip[:, :, ::-1]))
    assert ok
    return png.tobytes()


def unknown_record(stream: str, track: int, frame: int, quality: float, with_chip: bool = True) -> dict[str, Any]:
    face = golden_frames()[frame][0]
    return {"event": "unknown_face", "stream_id": stream, "track_id": track, "frame_index": frame,
            "timestamp": frame / 29.97, "box": face["box"], "quality": quality, "score": face["score"],
            "descriptor": [float(v) for v in face["descriptor"]],
            "chip_png": base64.b64encode(chip_png(frame)).decode() if with_chip else None}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# addresses and tokens


def test_addresses_tokens_and_the_refusal_to_serve_beyond_localhost_without_a_token(monkeypatch) -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:81") == ("::1", 81)
    for bad in ("", "host:port", "1.2.3.4:70000"):
        with pytest.raises(WebError):
            parse_address(bad)
    check_binding("127.0.0.1", "")
    check_binding("localhost", "")
    check_binding("::1", "")
    with pytest.raises(WebError, match="without a token"):
        check_binding("0.0.0.0", "")
    with pytest.raises(WebError, match="too short"):
        check_binding("192.168.1.5", "secret")
    check_binding("192.168.1.5", "0123456789abcdef")
    config = load_config(None)
    monkeypatch.delenv("FACESTREAM_WEB_TOKEN", raising=False)
    assert resolve_token(config) == ""
    config.web.token = "from-config-0123456"
    assert resolve_token(config) == "from-config-0123456"
    monkeypatch.setenv("FACESTREAM_WEB_TOKEN", "from-env-0123456789")
    assert resolve_token(config) == "from-env-0123456789"
    assert resolve_token(config, "given-0123456789abc") == "given-0123456789abc"
    monkeypatch.delenv("FACESTREAM_WEB_TOKEN")
    with pytest.raises(WebError, match="without a token"):
        WebServer(load_config(None), {}, address="0.0.0.0:0", token="")


# ------------------------------------------------------------------------------------------------
# the sink's side: sinks.web_feed.WebFeed


def descriptors_message(frame: int, stream: str = "hall") -> DescriptorsMessage:
    faces = golden_frames()[frame]
    return DescriptorsMessage(stream, frame, frame / 29.97, 640, 360, FaceBatch(
        np.asarray([f["box"] for f in faces], np.int64), np.asarray([f["score"] for f in faces], np.float32),
        np.asarray([f["landmarks"] for f in faces], np.int64), descriptors=np.stack([f["descriptor"] for f in faces]),
        quality=np.zeros((len(faces), 3), np.float32),
    ))  # fmt: skip


def tracked(message: DescriptorsMessage, track_id: int, identity: str, distance: float | None) -> TrackedFaces:
    """The message's one face as a processed frame holds it: the message's columns, its track and the track's
    decision."""
    return TrackedFaces.of(
        message.faces, track_ids=np.array([track_id], np.int64), identities=np.array([identity], object),
        distances=np.array([np.nan if distance is None else distance]),
    )  # fmt: skip


def test_the_sink_feed_caps_annotated_frames_and_sends_each_better_face_of_unknown_tracks_only() -> None:
    published: list[tuple[bytes, bytes]] = []
    feed = WebFeed(lambda topic, payload: published.append((topic, payload)), fps=5, max_width=320, jpeg_quality=80)
    bgr = np.ascontiguousarray(clip_frame(0)[:, :, ::-1])
    assert feed.frame_due("hall", now=100.0)
    feed.frame("hall", bgr, now=100.0)
    assert not feed.frame_due("hall", now=100.1) and feed.frame_due("other", now=100.1)
    assert feed.frame_due("hall", now=100.2)
    (topic, jpeg), = published  # fmt: skip
    assert topic == b"frame:hall"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (180, 320, 3)  # scaled down to max_width
    assert WebFeed(published.append, fps=0).frame_due("hall") is False

    published.clear()
    image = clip_frame(25)
    message = descriptors_message(25)
    chips = FrameChips(image, message.faces.landmarks)
    box = [int(v) for v in message.faces.boxes[0]]
    at = (message.frame_index, message.timestamp)
    unknown = tracked(message, 2, "unknown", 0.71)
    feed.faces("hall", *at, unknown, np.array([0.5]), chips)
    (topic, payload), = published  # fmt: skip
    record = json.loads(payload)
    assert topic == b"unknown_face" and record["event"] == "unknown_face"
    assert (record["stream_id"], record["track_id"], record["frame_index"], record["box"]) == ("hall", 2, 25, box)
    assert record["quality"] == 0.5
    # The descriptor survives JSON exactly (float32 -> double -> float32).
    assert np.array_equal(np.asarray(record["descriptor"], np.float32), message.faces.descriptors[0])
    chip = cv2.imdecode(np.frombuffer(base64.b64decode(record["chip_png"]), np.uint8), cv2.IMREAD_COLOR)
    dlib_chip = json.loads(GOLDEN.read_text())["frames"]["25"]["cnn_faces"][0]["chip_sha256"]
    assert hashlib.sha256(np.ascontiguousarray(chip[:, :, ::-1]).tobytes()).hexdigest() == dlib_chip  # dlib's chip
    feed.faces("hall", *at, unknown, np.array([0.5]), chips)  # not better: nothing
    feed.faces("hall", *at, unknown, np.array([0.0]), chips)  # below the quality gate: never
    assert len(published) == 1
    feed.faces("hall", *at, unknown, np.array([0.9]), None)  # better (no image: no chip)
    assert len(published) == 2 and json.loads(published[1][1])["chip_png"] is None
    known = tracked(message, 3, LIN, 0.5)
    feed.faces("hall", *at, known, np.array([1.0]), chips)  # a known track: never
    undecided = tracked(message, 4, "unknown", None)
    feed.faces("hall", *at, undecided, np.array([1.0]), chips)  # undecided (e.g. an empty gallery): sent
    assert [json.loads(p)["track_id"] for _, p in published] == [2, 2, 4]
    feed.end("hall", 2)
    feed.faces("hall", *at, unknown, np.array([0.1]), chips)  # a new track with the same id starts over
    assert len(published) == 4


# ------------------------------------------------------------------------------------------------
# the server, fed over real ZeroMQ sockets


class PipelineSockets:
    """The sink's two PUB sockets, bound in a short private directory as a run directory would hold them."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fsweb-", dir="/tmp"))
        self.context = zmq.Context()
        self.endpoints = {name: f"ipc://{self.dir / name}" for name in ("events", "preview")}
        self.events = self.context.socket(zmq.PUB)
        self.events.bind(self.endpoints["events"])
        self.preview = self.context.socket(zmq.PUB)
        self.preview.bind(self.endpoints["preview"])

    def event(self, record: dict[str, Any]) -> None:
        self.events.send_multipart([record["event"].encode(), json.dumps(record).encode()])

    def frame(self, stream: str, jpeg: bytes) -> None:
        self.preview.send_multipart([b"frame:" + stream.encode(), jpeg])

    def unknown(self, record: dict[str, Any]) -> None:
        self.preview.send_multipart([b"unknown_face", json.dumps(record).encode()])

    def close(self) -> None:
        self.events.close(0)
        self.preview.close(0)
        self.context.destroy(0)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def sockets() -> Iterator[PipelineSockets]:
    made = PipelineSockets()
    yield made
    made.close()


@pytest.fixture()
def gallery_path(tmp_path: Path) -> Path:
    """A real gallery holding Lin-Manuel Miranda (dlib's descriptor of his face in frame 0)."""
    path = tmp_path / "gallery.db"
    with Gallery(path) as gallery:
        gallery.add_samples(LIN, golden_frames()[0][0]["descriptor"][None])
    return path


def start_server(config: dict, sockets: PipelineSockets, gallery: Path, **options: Any) -> WebServer:
    server = WebServer(config, sockets.endpoints, address="127.0.0.1:0", gallery=gallery, **options)
    server.start()
    wait_until(lambda: http(server.url, timeout=2)[0] in (200, 401), "the server")
    return server


@pytest.fixture()
def server(sockets: PipelineSockets, gallery_path: Path) -> Iterator[WebServer]:
    made = start_server(load_config(None), sockets, gallery_path)
    yield made
    made.stop()


def read_sse(url: str, wanted: Callable[[str, Any], bool], timeout: float = 15) -> list[tuple[str, Any]]:
    """Server-sent events from `url` until one satisfies `wanted`: [(event name, data)]."""
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind, data = "message", ""
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                seen.append((kind, json.loads(data)))
                if wanted(*seen[-1]):
                    return seen
                kind, data = "message", ""
            assert time.monotonic() < deadline, f"no wanted event in {seen}"
    raise AssertionError(f"the stream ended: {seen}")


def test_events_frames_and_health_reach_the_page(server: WebServer, sockets: PipelineSockets) -> None:
    identified = {"event": "track_identified", "stream_id": "hall", "track_id": 1, "frame_index": 0,
                  "timestamp": 0.0, "box": [519, 48, 567, 95], "identity": LIN, "distance": 0.5151,
                  "previous_identity": None}  # fmt: skip
    events = wait_until(lambda: http_json(server.url + "api/events")[1], "the event at the server",
                        every=lambda: sockets.event(identified))  # fmt: skip
    assert {k: v for k, v in events[0].items() if k != "seq"} == identified
    # The page's live stream replays what it missed, then goes on.
    seen = read_sse(server.url + "api/live", lambda kind, data: kind == "fs-event" and data["identity"] == LIN)
    assert seen[-1][1] == identified

    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(clip_frame(0)[:, :, ::-1]))[1].tobytes()
    wait_until(
        lambda: "hall" in http_json(server.url + "api/streams")[1],
        "the stream",
        every=lambda: sockets.frame("hall", jpeg),
    )
    status, headers, body = http(server.url + "api/streams/hall/frame.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body == jpeg
    with urllib.request.urlopen(server.url + "api/streams/hall/video", timeout=10) as response:
        assert response.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        assert response.readline() == b"--frame\r\n"
        assert response.readline() == b"Content-Type: image/jpeg\r\n"
        length = int(response.readline().split(b":")[1])
        response.readline()
        assert response.read(length) == jpeg
    assert http(server.url + "api/streams/nowhere/video")[0] == 404
    # A second stream is served beside the first, each with its own frames.
    door = cv2.imencode(".jpg", np.ascontiguousarray(clip_frame(25)[:, :, ::-1]))[1].tobytes()
    wait_until(lambda: sorted(http_json(server.url + "api/streams")[1]) == ["door", "hall"], "the second stream",
               every=lambda: sockets.frame("door", door))  # fmt: skip
    assert http(server.url + "api/streams/door/frame.jpg")[2] == door
    assert http(server.url + "api/streams/hall/frame.jpg")[2] == jpeg

    assert http_json(server.url + "api/health")[1]["health"] is None
    stages = {role: {"processes": 1, "unit": "frames", "total": 10, "per_second": 2.0, "recent_per_second": 2.5,
                     "latency": {"detect": {"p50_ms": 270.0, "p99_ms": 400.0}}, "counters": {"stale": 3},
                     "queue_depth": 1} for role in ("source", "detect", "embed", "sink")}  # fmt: skip
    server.set_health({"time": 1.0, "elapsed_s": 5.0, "stages": stages, "streams": {"hall": {"processed": 10}}})
    health = http_json(server.url + "api/health")[1]["health"]
    assert health["stages"]["detect"] == {"processes": 1, "per_second": 2.5, "unit": "frames", "total": 10,
                                          "latency": {"name": "detect", "p50_ms": 270.0, "p99_ms": 400.0},
                                          "queue": 1, "drops": {"stale": 3}}  # fmt: skip
    assert health["streams"] == {"hall": {"processed": 10}}
    # The page and its script are served, with the names the script looks for.
    status, _, page = http(server.url)
    assert status == 200 and b'id="events"' in page and b'src="app.js"' in page
    status, headers, script = http(server.url + "app.js")
    assert status == 200 and "javascript" in headers["content-type"] and b"EventSource" in script


def test_an_unknown_track_is_enrolled_in_one_step_then_renamed_and_deleted(
    server: WebServer, sockets: PipelineSockets, gallery_path: Path
) -> None:
    # Alex Lacamoire's close-up (frames 20-29) as unknown track 2, five faces of which the best three are kept;
    # Lin-Manuel's track 1 once looked unknown and was identified since: it leaves the list.
    records = [unknown_record("hall", 2, frame, quality) for frame, quality in
               [(20, 0.4), (22, 0.9), (24, 1.0), (26, 0.3), (28, 0.95)]]  # fmt: skip
    records.append(unknown_record("hall", 1, 0, 0.8))

    def listing() -> dict[str, Any]:
        return http_json(server.url + "api/unknowns")[1]

    def publish() -> None:
        for record in records:
            sockets.unknown(record)

    wait_until(lambda: sum(c["faces"] for c in listing()["clusters"]) == 3, "the unknown faces", every=publish)
    # Track 1's face matches Lin-Manuel in the gallery: never shown as unknown.
    (cluster,) = listing()["clusters"]
    assert cluster["label"] == "unknown person 1" and cluster["faces"] == 3
    (track,) = cluster["tracks"]
    assert (track["stream_id"], track["track_id"], track["first_frame"], track["last_frame"]) == ("hall", 2, 22, 28)
    status, headers, chip = http(server.url + track["chip"])
    assert status == 200 and headers["content-type"] == "image/png" and chip == chip_png(24)  # the best face's

    request = {"name": ALEX, "tracks": [["hall", 2]]}
    assert http_json(server.url + "api/unknowns/enrol", "POST", request)[0] == 403  # no X-Facestream header
    assert (
        http_json(server.url + "api/unknowns/enrol", "POST", {"name": ALEX, "tracks": [["hall", 9]]}, CHANGE)[0] == 404
    )
    status, result = http_json(server.url + "api/unknowns/enrol", "POST", request, CHANGE)
    assert status == 200, result
    assert result["added"] == 3 and result["tracks"] == 1 and result["matched_others"] == []
    with Gallery(gallery_path) as gallery:
        matches = gallery.identify(np.stack([golden_frames()[f][0]["descriptor"] for f in (21, 25, 29)]))
        assert list(matches.identities) == [ALEX] * 3
        assert list(gallery.identify(golden_frames()[0][0]["descriptor"][None]).identities) == [LIN]
    assert listing()["clusters"] == []
    sockets.unknown(unknown_record("hall", 5, 27, 0.9))  # Alex again, later: he is known now, so not listed
    time.sleep(0.5)
    assert listing()["clusters"] == []

    people = {p["name"]: p for p in http_json(server.url + "api/people")[1]["people"]}
    assert set(people) == {LIN, ALEX} and people[ALEX]["samples"] == 3
    assert len(people[ALEX]["thumbnails"]) == 3 and people[LIN]["thumbnails"] == []
    thumbs = Path(str(gallery_path) + ".thumbs")
    assert thumbs.stat().st_mode & 0o777 == 0o700
    status, _, png = http(server.url + f"api/thumbnails/{people[ALEX]['thumbnails'][0]}")
    assert status == 200 and png in {chip_png(22), chip_png(24), chip_png(28)}
    assert (thumbs / f"{people[ALEX]['thumbnails'][0]}.png").stat().st_mode & 0o777 == 0o600

    rename = server.url + "api/people/" + urllib.request.quote(ALEX) + "/rename"
    assert http_json(rename, "POST", {"name": LIN}, CHANGE)[0] == 409  # taken
    assert http_json(rename, "POST", {"name": "Alex"}, CHANGE) == (200, {"renamed": ALEX, "to": "Alex"})
    assert http_json(server.url + "api/people/Nobody/rename", "POST", {"name": "X"}, CHANGE)[0] == 404
    assert http(server.url + "api/people/Alex", "DELETE")[0] == 403
    assert http_json(server.url + "api/people/Alex", "DELETE", None, CHANGE) == (200, {"deleted": "Alex", "samples": 3})
    assert [p["name"] for p in http_json(server.url + "api/people")[1]["people"]] == [LIN]
    assert not any(thumbs.glob("*.png"))  # only the owner file (.gallery) is left


def test_enrolling_from_the_page_creates_a_missing_gallery_which_the_running_sink_picks_up(
    sockets: PipelineSockets, tmp_path: Path
) -> None:
    from facestream.pipeline.sinks.matcher import open_matcher

    config = load_config(None)
    gallery_path = tmp_path / "new" / "gallery.db"
    gallery_path.parent.mkdir()
    matcher = open_matcher(config, str(gallery_path))  # the sink of a run started with no gallery yet
    alex = np.stack([golden_frames()[f][0]["descriptor"] for f in (25, 29)])
    assert list(matcher.identify(alex).identities) == ["unknown"] * 2 and not matcher.refresh()
    server = start_server(config, sockets, gallery_path)
    try:
        assert http_json(server.url + "api/people")[1]["people"] == []
        record = unknown_record("hall", 2, 24, 1.0)
        wait_until(lambda: http_json(server.url + "api/unknowns")[1]["clusters"], "the unknown face",
                   every=lambda: sockets.unknown(record))  # fmt: skip
        status, result = http_json(server.url + "api/unknowns/enrol", "POST", {"name": ALEX, "tracks": [["hall", 2]]},
                                   CHANGE)  # fmt: skip
        assert status == 200 and result["added"] == 1, result
    finally:
        server.stop()
    assert gallery_path.stat().st_mode & 0o777 == 0o600
    assert matcher.refresh()  # the sink's next gallery refresh opens the new file
    assert list(matcher.identify(alex).identities) == [ALEX] * 2
    matcher.close()


def test_a_photo_upload_goes_through_the_enrolment_checks(server: WebServer, tmp_path: Path) -> None:
    photo = next((DATA / "video" / "gallery" / "Alex_Lacamoire").iterdir())
    url = server.url + "api/people/" + urllib.request.quote(ALEX) + "/photos"
    status, _, body = http(url, "POST", photo.read_bytes(), {**CHANGE, "X-Filename": photo.name})
    report = json.loads(body)
    assert status == 200 and report["status"] == "added", report
    # analysed in a process of its own, which reports its high-water mark (models ~230 MB + this photo)
    assert server.gallery.last_upload_rss_mb is not None and 100 < server.gallery.last_upload_rss_mb < 1500
    status, _, body = http(url, "POST", photo.read_bytes(), {**CHANGE, "X-Filename": photo.name})
    assert status == 422 and "already enrolled" in json.loads(body)["reason"]
    blank = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    status, _, body = http(url, "POST", blank, CHANGE)
    assert status == 422 and json.loads(body)["reason"] == "no face found"
    status, _, body = http(url, "POST", b"not an image", CHANGE)
    assert status == 422 and json.loads(body)["status"] == "failed"
    assert http(url, "POST", b"", CHANGE)[0] == 400
    (person,) = [p for p in http_json(server.url + "api/people")[1]["people"] if p["name"] == ALEX]
    assert person["samples"] == 1 and len(person["thumbnails"]) == 1
    status, _, png = http(server.url + f"api/thumbnails/{person['thumbnails'][0]}")
    assert status == 200 and cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3


def test_the_token_the_host_header_and_the_change_header_are_enforced(
    sockets: PipelineSockets, gallery_path: Path
) -> None:
    config = load_config(None)
    config.web.token = "0123456789abcdef0123"
    server = start_server(config, sockets, gallery_path)
    try:
        assert http(server.url + "api/people")[0] == 401
        assert http(server.url + "api/people", headers={"Authorization": "Bearer wrong-token-000000"})[0] == 401
        status, _, body = http(server.url + "api/people", headers={"Authorization": "Bearer 0123456789abcdef0123"})
        assert status == 200 and json.loads(body)["people"][0]["name"] == LIN
        assert http(server.url + "login?token=nope")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(server.url + "login?token=0123456789abcdef0123", timeout=10) as response:
            assert response.status == 200 and b'id="events"' in response.read()  # redirected to the page
        with opener.open(server.url + "api/people", timeout=10) as response:  # the cookie from now on
            assert response.status == 200
        # A person at the page without the cookie is sent to the sign-in form, which posts the token.
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(server.url, timeout=10) as response:
            assert response.url.endswith("/login") and b'type="password" name="token"' in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            browser.open(server.url + "login", data=b"token=wrong-token-0000000000", timeout=10)
        assert refused.value.code == 401 and b"Wrong token" in refused.value.read()
        with browser.open(server.url + "login", data=b"token=0123456789abcdef0123", timeout=10) as response:
            assert response.status == 200 and b'id="events"' in response.read()
        with browser.open(server.url + "api/people", timeout=10) as response:
            assert response.status == 200
        port = server.port
        assert http(f"http://127.0.0.1:{port}/api/people", headers={"Host": f"evil.example:{port}",
                    "Authorization": "Bearer 0123456789abcdef0123"})[0] == 421  # fmt: skip
    finally:
        server.stop()


def test_facestream_serve_attaches_to_a_run_directory(
    sockets: PipelineSockets, gallery_path: Path, tmp_path: Path
) -> None:
    """`serve --run-dir`: events and frames from the run's sockets, health from its health.json."""
    (sockets.dir / "processes.json").write_text(json.dumps({"supervisor": os.getpid(), "processes": []}))
    stages = {role: {"processes": 1, "unit": "frames", "total": 3, "recent_per_second": 1.0, "latency": {},
                     "counters": {}} for role in ("source", "detect", "embed", "sink")}  # fmt: skip
    (sockets.dir / "health.json").write_text(json.dumps({"time": 1.0, "stages": stages, "streams": {}}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"web": {"address": "127.0.0.1:0"}}))
    argv = [sys.executable, "-m", "facestream.pipeline.cli.serve", "--config", str(tmp_path / "config.yaml"), "serve",
            "--run-dir", str(sockets.dir), "--gallery", str(gallery_path)]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for _ in range(20):  # the address is logged after a few start-up lines (which configuration, ...)
            lines.append(process.stderr.readline())
            match = re.search(r"web view: (http://127\.0\.0\.1:\d+/)", lines[-1])
            if match or not lines[-1]:
                break
        assert match, "".join(lines)
        url = match.group(1)
        health = wait_until(lambda: http_json(url + "api/health")[1]["health"], "health from health.json")
        assert health["stages"]["detect"]["per_second"] == 1.0
        record = {"event": "track_started", "stream_id": "hall", "track_id": 4, "frame_index": 9, "timestamp": 0.3,
                  "box": [1, 2, 3, 4]}  # fmt: skip
        events = wait_until(lambda: http_json(url + "api/events")[1], "an event", every=lambda: sockets.event(record))
        assert events[0]["track_id"] == 4
        assert [p["name"] for p in http_json(url + "api/people")[1]["people"]] == [LIN]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = subprocess.run([sys.executable, "-m", "facestream.pipeline.cli.serve", "serve", "--run-dir",
                             str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "no such directory" in result.stderr
    public = [sys.executable, "-m", "facestream.pipeline.cli.serve", "serve", "--address", "0.0.0.0:0"]
    environment = {**os.environ, "FACESTREAM_WEB_TOKEN": ""}
    result = subprocess.run(public, capture_output=True, text=True, timeout=60, env=environment)
    assert result.returncode == 2 and "without a token" in result.stderr


# ------------------------------------------------------------------------------------------------
# end to end: the pipeline, the page, a real browser


def browser_problem() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return (
            "needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
            "apt-get install -y chromium chromium-driver"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    return None


LOOP_FRAMES = 46  # demo-clip frames 0-45: Lin-Manuel Miranda (0-19), then Alex Lacamoire's close-up (20-42)


def test_in_chromium_the_page_shows_events_and_enrolling_an_unknown_face_names_him_next(tmp_path: Path) -> None:
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("FACESTREAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required here (FACESTREAM_REQUIRE_BROWSER=1): {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from facestream.engines.faces import FaceAnalyzer
    from facestream.engines.imageio import read_image

    clip = tmp_path / "clip.avi"  # lossless, so every pass decodes to the same pixels
    capture = cv2.VideoCapture(str(CLIP))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 29.97, (640, 360))
    for _ in range(LOOP_FRAMES):
        writer.write(capture.read()[1])
    writer.release()
    capture.release()
    gallery_path = tmp_path / "gallery.db"  # Lin-Manuel Miranda only, from his photo
    analyzer = FaceAnalyzer.from_config(load_config(None))
    with Gallery(gallery_path) as gallery:
        for photo in (DATA / "video" / "gallery" / LIN).iterdir():
            gallery.add_samples(LIN, analyzer.analyze(read_image(photo)).descriptors)
    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    config = {"pipeline": {"run_dir": str(run_dir), "gallery_refresh_s": 0.5, "report_interval_s": 5.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "facestream.pipeline.cli.run", "--config", str(tmp_path / "config.yaml"), "run",
            "--source", f"hall=loop:{clip}", "--max-frames", "4000", "--gallery", str(gallery_path),
            "--events", str(tmp_path / "events.jsonl"), "--web", "127.0.0.1:0"]  # fmt: skip
    stderr = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    driver = None

    def log() -> str:
        return (tmp_path / "stderr.txt").read_text()

    try:
        match = wait_until(lambda: re.search(r"web view: (http://127\.0\.0\.1:\d+/)", log()), "the web view", 60)
        url = match.group(1)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1400,1000"):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.get(url)

        def present(selector: str) -> list:
            assert process.poll() is None, f"the run ended:\n{log()}"
            return driver.find_elements(By.CSS_SELECTOR, selector)

        # The page shows the demo stream's events, its annotated frames and the stages' health.
        wait_until(lambda: present(f'#events li[data-event="track_identified"][data-identity="{LIN}"]'),
                   "Lin-Manuel Miranda named on the page", 60)  # fmt: skip
        wait_until(lambda: driver.execute_script(
            "const i = document.querySelector('figure[data-stream=\"hall\"] img'); return i && i.naturalWidth;"),
            "the annotated stream", 30)  # fmt: skip
        wait_until(lambda: present('#health tr[data-stage="detect"]'), "the health table", 30)

        # Alex Lacamoire's close-up comes out as an unknown person: keep only his snapshots and enrol them.
        def alex_card() -> Any:
            for card in present(".unknown-card"):
                frames = [int(s.get_attribute("data-first-frame")) % LOOP_FRAMES
                          for s in card.find_elements(By.CSS_SELECTOR, "img.snapshot")]  # fmt: skip
                if frames and sum(20 <= f <= 42 for f in frames) > len(frames) / 2:
                    return card
            return None

        def enrol() -> bool:
            try:
                card = alex_card()
                if card is None:
                    return False
                for snapshot in card.find_elements(By.CSS_SELECTOR, "img.snapshot"):
                    frame = int(snapshot.get_attribute("data-first-frame")) % LOOP_FRAMES
                    if not 20 <= frame <= 42 and "deselected" not in snapshot.get_attribute("class"):
                        snapshot.click()
                field = card.find_element(By.CSS_SELECTOR, "input.name")
                field.clear()
                field.send_keys(ALEX)
                card.find_element(By.CSS_SELECTOR, "button.enrol").click()
                return True
            except (StaleElementReferenceException, ElementNotInteractableException):  # redrawn meanwhile: again
                return False

        wait_until(enrol, "an unknown card of Alex Lacamoire's close-up to enrol", 60)
        wait_until(lambda: "enrolled Alex Lacamoire" in driver.find_element(By.ID, "status").text, "the enrolment", 30)
        enrolled_at = max(int(e["seq"]) for e in http_json(url + "api/events")[1])

        # The next events for his face name him.
        def named_after() -> list:
            items = present(f'#events li[data-identity="{ALEX}"]')
            return [item for item in items if int(item.get_attribute("data-seq")) > enrolled_at]

        named = wait_until(named_after, "Alex named", 60)
        event = json.loads(named[-1].get_attribute("title"))
        assert event["event"] == "track_identified" and event["distance"] < 0.6
        frame = event["frame_index"] % LOOP_FRAMES
        golden = {g["frame"]: g for g in map(json.loads, GOLDEN_LABELS.read_text().splitlines())}
        (alex_box,) = [f["box"] for f in golden[frame]["faces"]]
        assert 20 <= frame <= 42 and iou(event["box"], alex_box) > 0.5, event
        people = {p["name"]: p for p in http_json(url + "api/people")[1]["people"]}
        assert people[ALEX]["samples"] >= 1 and people[ALEX]["thumbnails"]
        assert present(f'#people .person[data-name="{ALEX}"] img')  # with his thumbnails on the page
        health = json.loads((run_dir / "health.json").read_text())
        assert health["stages"]["detect"]["total"] > 0 and (run_dir / "health.json").stat().st_mode & 0o777 == 0o600
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            stderr.close()
            shutil.rmtree(run_dir, ignore_errors=True)
    assert code == 143, log()  # stopped by SIGTERM, cleanly
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e.get("identity") == ALEX for e in lines)
    assert "descriptor" not in json.dumps(lines)  # descriptors stay on the private preview topic


def iou(a: list[int], b: list[int]) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
