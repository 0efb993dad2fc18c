"""The source stage process: opens every source, sends frames to the detect workers round-robin, keeps file
frames in flight until the sink acknowledges them (re-sending lost ones), sends skip notices and EndOfStream
to the sink (the protocol is described in the package docstring, `pipeline/sources/__init__.py`)."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ..domain.scenes import frame_thumbnail, scene_changed
from ..runtime import messages
from ..runtime.messages import EndOfStream, FacesMessage, FrameMessage, MessageError
from ..runtime.stages import StageProcess, decode_json, empty_faces, open_socket
from .files import FrameReader, open_file_reader
from .live import LatestFrames, LiveCapture, LiveFrame, LiveReader, live_capture_factory
from .spec import SourceError, SourceSpec

LIVE_JOIN_S = 3.0  # how long a stopping source waits for its capture threads (under pipeline.shutdown_grace_s)

log = logging.getLogger(__name__)


@dataclass
class Inflight:
    """A file frame sent to the detectors and not yet acknowledged by the sink (re-sent after a timeout)."""

    message: FrameMessage
    read_at: float
    sent_at: float | None = None  # None: waiting to be (re-)sent
    first_sent: float | None = None
    sends: int = 0


@dataclass
class StreamState:
    """The source stage's state of one stream: reader, frames in flight, counters."""

    spec: SourceSpec
    reader: FrameReader | None = None
    live: LiveReader | None = None
    next_index: int = 0
    inflight: dict[int, Inflight] = field(default_factory=dict)  # insertion order = index order
    held: LiveFrame | None = None  # a live frame taken from the queue that could not be sent yet
    live_sent: dict[int, float] = field(default_factory=dict)  # live frames sent, not yet acknowledged: never
    # re-sent (newer frames matter more), only waited for at the end so their results are not cut off
    last_detect_index: int = -1  # live: the last frame sent to the detectors
    thumbnail: np.ndarray | None = None  # of the last frame read, to see a scene cut on a frame due to be skipped
    size: tuple[int, ...] | None = None  # (height, width) of the last frame read: a change is a scene cut
    last_checked_index: int = -1  # live: the last frame `thumbnail` was taken of ...
    held_cut: bool = False  # ... and whether it starts a new scene
    # live: skip notices wait here until every detection frame sent before them is acknowledged (or
    # superseded or lost), so a notice never reaches the sink ahead of the detection it carries over
    held_notices: deque[FacesMessage] = field(default_factory=deque)
    exhausted: bool = False
    finished: bool = False  # EndOfStream sent
    error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, amount: int = 1) -> None:
        """Add `amount` to the stream's counter `name`."""
        self.counters[name] = self.counters.get(name, 0) + amount

    @property
    def lowest_open(self) -> int:
        """The lowest frame index not yet acknowledged (the in-flight window starts there)."""
        return next(iter(self.inflight)) if self.inflight else self.next_index


class SourceStage(StageProcess):
    """Reads every source, sends frames to the detect workers, keeps file frames until acknowledged."""

    role = "source"

    # Over 60 lines: the source loop's steps in order; the setup is already apart (_configure).
    def run(self) -> int:
        """Open every source, send frames until they are exhausted or the run stops; re-send lost file frames."""
        pipeline = self.config.pipeline
        self._configure()
        control = self.subscribe_control()
        self.streams = [self._open(SourceSpec.from_json(item)) for item in self.spec["sources"]]
        self.extra_stats = self._extra_stats
        self.ready()
        poller = zmq.Poller()
        poller.register(self.acks, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        turn = 0
        # Live capture waits for the supervisor's Control("workers_ready") (its detect, embed and sink
        # processes have loaded their models), at most pipeline.live_start_timeout_s.
        any_live = any(stream.live is not None for stream in self.streams)
        live_start_by = time.monotonic() + float(pipeline.live_start_timeout_s) if any_live else 0.0
        while not self.stopping:
            for command in self.handle_control():
                if command.command == "resend":
                    self._resend_all(command.stream_id)
                elif command.command == "workers_ready":
                    live_start_by = self._start_live(live_start_by)
            if live_start_by and time.monotonic() >= live_start_by:
                log.warning(
                    "workers not ready after %.0f s: starting live capture anyway", pipeline.live_start_timeout_s
                )
                live_start_by = self._start_live(live_start_by)
            self._drain_acks()
            for stream in self.streams:
                if not stream.finished:
                    self._fill(stream)
            self._check_timeouts()
            for stream in self.streams:
                self._release_notices(stream)
            blocked = self._send(turn)
            turn += 1
            for stream in self.streams:
                self._maybe_finish(stream)
            if all(stream.finished for stream in self.streams):
                log.info("every source is done")
                break
            self.send_stats()
            if blocked:  # the detect workers push back: wake when they take more (or acks/control come)
                poller.register(self.frames, zmq.POLLOUT)
                poller.poll(100)
                poller.unregister(self.frames)
            else:  # live frames arrive from capture threads: short naps, they are what latency is made of
                poller.poll(5 if any(s.live is not None and not s.finished for s in self.streams) else 50)
        for stream in self.streams:
            if stream.live is not None:
                stream.live.stop()
            if stream.reader is not None:
                stream.reader.close()
        # A camera read returns within a frame interval; one that hangs longer is left to stage_main's exit.
        deadline = time.monotonic() + LIVE_JOIN_S
        for stream in self.streams:
            if stream.live is not None and not stream.live.join(deadline - time.monotonic()):
                log.warning("%s: the capture thread did not stop within %.0f s", stream.spec.stream_id, LIVE_JOIN_S)
        # EndOfStream messages must reach the sink before we go; a stopped run need not wait.
        self.to_sink.setsockopt(zmq.LINGER, 500 if self.stopping else 5000)
        self.to_sink.close()
        return 0

    def _configure(self) -> None:
        """The run's settings from `pipeline.*` and the frames, sink_in and acks sockets."""
        pipeline = self.config.pipeline
        self.window = max(1, int(pipeline.inflight_frames))
        self.detect_every = max(1, int(pipeline.detect_every))
        self.resend_timeout = float(pipeline.resend_timeout_s)
        self.send_images = bool(self.spec["outputs"].get("images"))
        self.live_inflight = int(pipeline.live_inflight) or max(1, int(pipeline.detect_workers))
        self.cut_threshold = float(pipeline.scene_cut_threshold)
        self.ack_latency_ewma = 0.0
        self.frames = open_socket(
            self.context, zmq.PUSH, self.endpoints["frames"], bind=True, hwm=int(pipeline.frame_hwm)
        )
        self.to_sink = open_socket(
            self.context, zmq.PUSH, self.endpoints["sink_in"], bind=False, hwm=4 * self.window + 64
        )
        self.acks = open_socket(self.context, zmq.SUB, self.endpoints["acks"], bind=False, subscribe=b"")

    def _start_live(self, pending: float) -> float:
        """Start every live capture thread (once); 0.0 = started."""
        if pending:
            for stream in self.streams:
                if stream.live is not None and not stream.error:
                    stream.live.start()
        return 0.0

    # -- opening ---------------------------------------------------------------------------------

    def _open(self, spec: SourceSpec) -> StreamState:
        stream = StreamState(spec)
        sources = self.config.sources
        try:
            if spec.live:
                where = {"camera": f"camera {spec.uri}", "url": _redact(spec.uri)}.get(spec.kind, spec.uri)
                name = f"{spec.stream_id} ({where})"
                capture = LiveCapture(
                    name,
                    live_capture_factory(spec),
                    initial=float(sources.reconnect_initial_s),
                    maximum=float(sources.reconnect_max_s),
                    # a replayed file that cannot be opened will not come up later: a few tries only
                    open_attempts=sources.open_attempts or (3 if spec.kind in ("replay", "loop") else 0),
                    max_reconnects=int(sources.max_reconnects),
                )
                # Capture starts once the workers are ready (see run): frames taken while models load
                # would only be stale by the time a detector sees them.
                stream.live = LiveReader(capture, LatestFrames(int(sources.live_queue)), int(sources.max_frames))
            else:
                stream.reader = open_file_reader(spec, self.config)
                log.info("%s: opened %s", spec.stream_id, spec.uri)
        except (SourceError, OSError) as error:
            self._fail(stream, str(error))
        return stream

    def _fail(self, stream: StreamState, reason: str) -> None:
        log.error("source %s: %s", stream.spec.stream_id, reason)
        stream.error = reason
        stream.exhausted = True
        stream.inflight.clear()

    # -- reading and sending ----------------------------------------------------------------------

    def _fill(self, stream: StreamState) -> None:
        """Read file frames while the window has room; take live frames from the capture queue."""
        if stream.live is not None:
            if stream.live.error and not stream.error:
                self._fail(stream, stream.live.error)
            elif stream.live.done.is_set() and not len(stream.live.queue) and stream.held is None:
                stream.exhausted = True
            return
        while not stream.exhausted and stream.next_index < stream.lowest_open + self.window and not self.stopping:
            try:
                item = stream.reader.read() if stream.reader is not None else None
            except SourceError as error:
                self._fail(stream, str(error))
                return
            if item is None:
                stream.exhausted = True
                return
            image, timestamp = item
            stream.count("read")
            cut = self._cut(stream, image)  # every frame: the thumbnail is compared with the previous frame's
            frame = FrameMessage(stream.spec.stream_id, stream.next_index, timestamp, False, image, cut)
            stream.next_index += 1
            detect = frame.frame_index % self.detect_every == 0 or cut
            if not self._to_sink_first(stream, frame, detect):
                return
            if detect:
                stream.inflight[frame.frame_index] = Inflight(frame, time.monotonic())

    def _cut(self, stream: StreamState, image: np.ndarray) -> bool:
        """Whether a frame the detector would skip starts a new scene (then it is detected: the tracker
        must not carry the last scene's boxes and names onto it): a frame of another size than the last
        one always does (an image folder of mixed sizes), else the thumbnail test. Only computed when
        skipping is on."""
        if self.detect_every == 1:
            return False
        size = image.shape[:2]
        resized = stream.size is not None and stream.size != size
        stream.size = size
        if resized:
            stream.count("size_changes")
            stream.count("scene_cuts")
            stream.thumbnail = frame_thumbnail(image) if self.cut_threshold > 0 else None
            return True
        if self.cut_threshold <= 0:
            return False
        thumbnail = frame_thumbnail(image)
        changed = scene_changed(stream.thumbnail, thumbnail, self.cut_threshold)
        stream.thumbnail = thumbnail
        if changed:
            stream.count("scene_cuts")
        return changed

    def _to_sink_first(self, stream: StreamState, frame: FrameMessage, detect: bool) -> bool:
        """What the sink gets straight from the source: the image (for drawing) and, for a frame the
        detector skips, a skip notice (held back for live streams, see `_release_notices`). False when stopping."""
        if self.send_images and not self.send_until_stopped(self.to_sink, frame):
            return False
        if not detect:
            height, width = frame.image.shape[:2]
            notice = empty_faces(frame.stream_id, frame.frame_index, frame.timestamp, width, height)
            stream.count("skipped_detection")
            if stream.live is not None:
                stream.held_notices.append(notice)
            elif not self.send_until_stopped(self.to_sink, notice):
                return False
        return True

    def _release_notices(self, stream: StreamState) -> None:
        """Send a live stream's skip notices whose earlier detection frames are all accounted for."""
        while stream.held_notices and not self.stopping:
            index = stream.held_notices[0].frame_index
            if any(sent < index for sent in stream.live_sent):
                return
            if not self.send_until_stopped(self.to_sink, stream.held_notices.popleft()):
                return

    def _send(self, turn: int) -> bool:
        """Send queued frames round-robin over the streams; True when the detect workers pushed back."""
        order = self.streams[turn % len(self.streams) :] + self.streams[: turn % len(self.streams)]
        progress = True
        while progress and not self.stopping:
            progress = False
            for stream in order:
                if stream.finished or stream.error:
                    continue
                try:
                    sent = self._send_one(stream)
                except zmq.Again:
                    return True
                progress = progress or sent
        return False

    def _send_one(self, stream: StreamState) -> bool:
        if stream.live is not None:
            return self._send_live(stream)
        for frame_index, entry in stream.inflight.items():
            if entry.sent_at is None:
                self.frames.send_multipart(messages.encode(entry.message), zmq.NOBLOCK, copy=False)
                entry.sent_at = time.monotonic()
                entry.first_sent = entry.first_sent or entry.sent_at
                entry.sends += 1
                stream.count("sent")
                if entry.sends > 1:
                    stream.count("resent")
                    log.info("%s: frame %d re-sent (attempt %d)", stream.spec.stream_id, frame_index, entry.sends)
                return True
        return False

    def _send_live(self, stream: StreamState) -> bool:
        assert stream.live is not None
        if stream.held is None:
            stream.held = stream.live.queue.get()
            if stream.held is None:
                return False
        # Every k-th frame *taken*: frames dropped before they were taken do not skip a detection.
        if stream.held.index != stream.last_checked_index:  # once per frame taken, though it may wait
            stream.last_checked_index = stream.held.index
            # a cut stays pending while the frame it was found on is replaced by a newer one (below)
            stream.held_cut = self._cut(stream, stream.held.image) or stream.held_cut
        detect = stream.last_detect_index < 0 or stream.held.index - stream.last_detect_index >= self.detect_every
        detect = detect or stream.held_cut
        if detect and len(stream.live_sent) >= self.live_inflight:
            # Every detector is busy with one of our frames: wait for the newest frame at the time one is free
            # (frames queued in sockets meanwhile would only grow old there).
            stream.held = stream.live.queue.newest(stream.held)
            return False
        live = stream.held
        frame = FrameMessage(stream.spec.stream_id, live.index, live.timestamp, True, live.image, stream.held_cut)
        if detect:
            self.frames.send_multipart(messages.encode(frame), zmq.NOBLOCK, copy=False)  # raises Again
            stream.live_sent[live.index] = time.monotonic()
            stream.last_detect_index = live.index
            stream.count("sent")
        stream.held, stream.held_cut = None, False
        stream.next_index = live.index + 1
        stream.count("read")
        self._to_sink_first(stream, frame, detect)
        return True

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        # Adaptive: never re-send a frame that is merely waiting its turn behind a slow detector.
        timeout = max(self.resend_timeout, 4.0 * self.ack_latency_ewma)
        for stream in self.streams:
            lost = [index for index, sent in stream.live_sent.items() if now - sent > timeout]
            for index in lost:  # a live frame whose result never came: lost with a worker; not worth re-sending
                del stream.live_sent[index]
                stream.count("lost")
            for frame_index, entry in stream.inflight.items():
                if entry.sent_at is not None and now - entry.sent_at > timeout:
                    log.warning(
                        "%s: frame %d not completed after %.0f s: sending it again",
                        stream.spec.stream_id,
                        frame_index,
                        now - entry.sent_at,
                    )
                    entry.sent_at = None

    def _resend_all(self, stream_id: str) -> None:
        """A worker died: whatever it held is lost, and we cannot know which frames it held."""
        count = 0
        for stream in self.streams:
            if stream_id and stream.spec.stream_id != stream_id:
                continue
            for entry in stream.inflight.values():
                if entry.sent_at is not None:
                    entry.sent_at = None
                    count += 1
            if stream.live_sent:  # live frames are not re-sent (newer ones matter more): give them up, so
                stream.count("lost", len(stream.live_sent))  # the stream's detector credit comes back at once
                stream.live_sent.clear()
        if count:
            log.warning("a worker was lost: re-sending %d frames still in flight", count)

    def _drain_acks(self) -> None:
        by_id = {stream.spec.stream_id: stream for stream in self.streams}
        while True:
            try:
                frame = self.acks.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                payload = decode_json(frame)
                stream = by_id.get(payload.get("stream_id"))
                indices = payload.get("frames")
                if payload["type"] != "ack" or not isinstance(indices, list):
                    raise MessageError(f"expected an ack, got {payload['type']!r}")
            except MessageError as error:
                self.malformed(f"acks: {error}")
                continue
            if stream is None:
                continue
            now = time.monotonic()
            if stream.live is not None:
                for frame_index in indices:
                    sent = stream.live_sent.pop(frame_index, None) if isinstance(frame_index, int) else None
                    if sent is not None:
                        stream.count("acked")
                        self.stats.latency("frame", now - sent)
                # Older live frames still out are stale (a worker skipped them for a newer one) or will be
                # dropped by the sink as late: nothing to wait for.
                newest = max((i for i in indices if isinstance(i, int)), default=-1)
                for frame_index in [i for i in stream.live_sent if i < newest]:
                    del stream.live_sent[frame_index]
                continue
            for frame_index in indices:
                entry = stream.inflight.pop(frame_index, None) if isinstance(frame_index, int) else None
                if entry is not None:
                    stream.count("acked")
                    # Send to acknowledgement: the pipeline's latency for this frame, queues included.
                    latency = now - (entry.first_sent or entry.read_at)
                    self.stats.latency("frame", latency)
                    self.ack_latency_ewma = 0.9 * self.ack_latency_ewma + 0.1 * latency

    def _maybe_finish(self, stream: StreamState) -> None:
        if stream.finished or not stream.exhausted or stream.inflight or stream.held is not None or stream.live_sent:
            return
        if stream.held_notices:
            self._release_notices(stream)
            return
        end = EndOfStream(stream.spec.stream_id, stream.next_index)
        if self.send_until_stopped(self.to_sink, end):
            stream.finished = True
            log.info("%s: end of stream after %d frames", stream.spec.stream_id, stream.next_index)

    def _extra_stats(self) -> dict[str, Any]:
        streams = {}
        for stream in self.streams:
            info: dict[str, Any] = {
                "kind": stream.spec.kind,
                "live": stream.spec.live,
                **stream.counters,
                "in_flight": len(stream.inflight),
                "finished": stream.finished,
            }
            if stream.live is not None:
                info["dropped"] = stream.live.queue.dropped
                info["reconnects"] = stream.live.capture.reconnects
                info["state"] = stream.live.capture.state
                info["disconnects"] = stream.live.capture.disconnects
            if stream.error:
                info["error"] = stream.error
            streams[stream.spec.stream_id] = info
        errors = [f"{s.spec.stream_id}: {s.error}" for s in self.streams if s.error]
        return {"streams": streams, "errors": errors}


def _redact(uri: str) -> str:
    """A URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)
