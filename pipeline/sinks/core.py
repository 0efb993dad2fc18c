"""The sink's logic, no sockets (`SinkCore`, tested directly): messages in, in any order and with duplicates,
frames processed in order per stream, tracked, matched, decided, and handed to the outputs.

Order: results of a **file** stream are processed strictly by frame index — a result waits until every
earlier frame's result is there (the source's in-flight window bounds how many wait), duplicates (a
frame re-sent after a worker died) are dropped by (stream, frame index). Every result received is
acknowledged (`SinkCore.take_acks`) at once, so the source can stop re-sending it (live frames are
acknowledged too: the source waits for them before it ends a live stream). **Live** results are processed
as they come, held at most ``pipeline.live_reorder_ms`` to put the results of parallel workers back in
order (not at all when one detect and one embed worker run and no other can join: `process.live_reorder_s`);
one older than a frame already processed is dropped (counted as ``late``).

Per frame the tracker (`pipeline.domain.tracker.FaceTracker`, one per stream) assigns track ids, the gallery
(`matcher.Matcher`) names each embedded face (identity or "unknown", distance) and the track's vote decides
its identity; a frame flagged ``new_scene`` (a cut or a size change seen upstream) and a face far from its
track's last face (a cut nobody saw) each end every track of the stream. Kiosk
decisions and unknown faces are collected from the same matches.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engines.face_batch import BOX_CARRIED, FaceBatch
from ..config import TrackerConfig
from ..domain.kiosk import KioskDecider, evidence_from_matches
from ..domain.tracker import (
    UNKNOWN,
    FaceTracker,
    QualityGate,
    TrackEnded,
    TrackEvent,
    TrackIdentified,
    box_iou,
    greedy_assignment,
)
from ..domain.unknowns import UnknownTracks
from ..runtime import messages
from ..runtime.messages import DescriptorsMessage, EndOfStream, FacesMessage, FrameMessage, MessageError
from ..runtime.stages import StageStats
from .matcher import Matcher
from .outputs import SinkOutputs
from .records import FrameResult, TrackedFaces, box_source_name, event_record, json_number, summary_record
from .web_feed import FrameChips

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    message: DescriptorsMessage | FacesMessage
    detected: bool
    arrived: float


class StreamSink:
    """One stream's reorder buffer, tracker and images."""

    def __init__(self, stream_id: str, live: bool, tracker: FaceTracker, need_images: bool, hold_s: float) -> None:
        self.stream_id, self.live, self.tracker = stream_id, live, tracker
        self.need_images, self.hold_s = need_images, hold_s
        self.pending: dict[int, _Pending] = {}
        self.images: dict[int, np.ndarray] = {}
        self.next_index = 0  # file streams: the next frame to process
        self.last_processed = -1
        self.frame_count: int | None = None  # from EndOfStream
        self.processed = 0
        self.finished = False
        self.last_descriptor: dict[int, np.ndarray] = {}  # per track, its latest embedded face

    def seen(self, frame_index: int) -> bool:
        """Whether this frame was already processed or is waiting (a duplicate after a re-send)."""
        return frame_index < self.next_index or frame_index in self.pending

    def ready(self, now: float, flush: bool) -> Iterator[tuple[int, _Pending, np.ndarray | None]]:
        """The frames that can be processed now, in order."""
        if not self.live:
            while self.next_index in self.pending:
                image = self.images.get(self.next_index)
                if self.need_images and image is None:
                    return  # the image comes straight from the source, normally long before the result
                item = self.pending.pop(self.next_index)
                self.images.pop(self.next_index, None)
                self.next_index += 1
                yield self.next_index - 1, item, image
            return
        for frame_index in sorted(self.pending):
            item = self.pending[frame_index]
            in_order = frame_index == self.last_processed + 1
            waited = now - item.arrived >= self.hold_s
            image = self.images.get(frame_index)
            if not (in_order or waited or flush) or (self.need_images and image is None and not (waited or flush)):
                return
            del self.pending[frame_index]
            self.images.pop(frame_index, None)
            self.last_processed = frame_index
            yield frame_index, item, image
        for old in [i for i in self.images if i <= self.last_processed]:
            del self.images[old]
        while len(self.images) > 64:  # images whose results were lost with a worker: bounded
            del self.images[min(self.images)]

    @property
    def complete(self) -> bool:
        """Whether every frame of a file stream has been processed (live streams end with the source)."""
        if self.frame_count is None:
            return False
        return self.live or self.next_index >= self.frame_count


def tracker_max_age_s(tracker_config: TrackerConfig, live: bool, fps: float, detect_every: int = 1) -> float | None:
    """How long a track survives unseen, in seconds of the frames' timestamps (media time for files,
    wall-clock capture time for live streams): ``tracker.max_age_s`` (files) or ``live_max_age_s`` (live),
    at least the time of the detect_every frames the tracker carries boxes over. None when an old config
    sets ``tracker.max_age`` > 0: ages then count frames, exactly as before that key was replaced."""
    if int(tracker_config.max_age) > 0:
        return None
    seconds = float(tracker_config.live_max_age_s if live else tracker_config.max_age_s)
    return max(seconds, detect_every / fps)


def with_decisions(tracker: FaceTracker, faces: TrackedFaces, track_ids: np.ndarray) -> TrackedFaces:
    """`faces` with their track ids and each track's decided identity and distance after this frame
    ("unknown" and NaN while undecided)."""
    tracks = [tracker.tracks[track_id] for track_id in track_ids.tolist()]
    faces.track_ids = np.asarray(track_ids, np.int64)
    faces.identities = np.array([track.identity or UNKNOWN for track in tracks], object)
    faces.distances = np.array([track.distance if track.identity else np.nan for track in tracks], np.float64)
    return faces


class SinkCore:
    """Messages in (any order, duplicates allowed), processed frames and events out, in order per stream."""

    def __init__(
        self,
        streams: dict[str, bool],
        matcher: Matcher,
        outputs: SinkOutputs,
        tracker_config: TrackerConfig,
        *,
        detect_every: int = 1,
        live_hold_s: float = 0.2,
        stats: StageStats | None = None,
        unknowns: UnknownTracks | None = None,
        kiosk: KioskDecider | None = None,
        event_descriptors: bool = False,
        stream_fps: dict[str, float] | None = None,
    ) -> None:
        self.matcher, self.outputs = matcher, outputs
        self.unknowns, self.kiosk = unknowns, kiosk
        self.event_descriptors = event_descriptors  # descriptors are biometric data: off unless configured
        self.stats = stats or StageStats()
        gate = QualityGate(
            float(tracker_config.min_face_size),
            float(tracker_config.min_sharpness),
            float(tracker_config.min_score),
        )
        options = {
            "iou_threshold": float(tracker_config.iou_threshold),
            "max_age": max(int(tracker_config.max_age), int(detect_every)),  # boxes carried over skipped frames
            "min_votes": int(tracker_config.min_votes),
            "decision": str(tracker_config.decision),
            "best_faces": int(tracker_config.best_faces),
            "switch_votes": int(tracker_config.switch_votes),
            "switch_ratio": float(tracker_config.switch_ratio),
            "vote_decay": float(tracker_config.vote_decay),
        }
        # Frame images: for the annotated outputs, and for the chips of the unknown tracks' kept faces.
        need_images = outputs.wants_images or (unknowns is not None and unknowns.chip_dir is not None)
        fps = stream_fps or {}
        self.streams = {
            sid: StreamSink(sid, live, FaceTracker(sid, gate=gate, **options, max_age_s=tracker_max_age_s(
                tracker_config, live, float(fps.get(sid) or 25.0), int(detect_every))), need_images, live_hold_s)
            for sid, live in streams.items()
        }  # fmt: skip
        self.cut_distance = float(tracker_config.scene_cut_distance)
        self.summaries: dict[str, dict[str, Any]] = {}
        self._at: dict[str, tuple[int, float]] = {}  # per stream: the last frame processed (index, timestamp)
        self.acks: dict[str, list[int]] = {}

    # -- input ---------------------------------------------------------------------------------

    def _stream(self, stream_id: str, what: str) -> StreamSink | None:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise MessageError(f"{what} for unknown stream {stream_id[:40]!r}")
        return None if stream.finished else stream

    def add(self, message: messages.Message, channel: str, now: float | None = None) -> None:
        """One decoded message from `channel` ("descriptors" or "sink_in"); MessageError if it does not belong."""
        now = time.monotonic() if now is None else now
        if channel == "descriptors":
            if not isinstance(message, DescriptorsMessage):
                raise MessageError(f"descriptors: unexpected {type(message).__name__}")
            self._add_result(message, True, now)
        elif isinstance(message, FrameMessage):
            stream = self._stream(message.stream_id, "image")
            oldest = (stream.last_processed + 1 if stream.live else stream.next_index) if stream else 0
            if stream is not None and message.frame_index >= oldest:
                stream.images[message.frame_index] = message.image
        elif isinstance(message, FacesMessage):
            if len(message):
                raise MessageError("sink_in: a skip notice must have no faces")
            self._add_result(message, False, now)
        elif isinstance(message, EndOfStream):
            stream = self._stream(message.stream_id, "end of stream")
            if stream is not None:
                stream.frame_count = message.frame_count
        else:
            raise MessageError(f"sink_in: unexpected {type(message).__name__}")

    def _add_result(self, message: DescriptorsMessage | FacesMessage, detected: bool, now: float) -> None:
        stream = self._stream(message.stream_id, "result")
        if stream is None:
            return
        index = message.frame_index
        if detected:  # duplicates too: the first ack may have been lost
            self.acks.setdefault(stream.stream_id, []).append(index)
        if stream.live and index <= stream.last_processed:
            self.stats.count("late")
            return
        if stream.seen(index):
            self.stats.count("duplicates")
            return
        if detected:
            self.stats.count("received")
        stream.pending[index] = _Pending(message, detected, now)

    def take_acks(self) -> dict[str, list[int]]:
        """The frame indices processed since the last call, per stream (sent to the source as acks)."""
        acks, self.acks = self.acks, {}
        return acks

    # -- processing ----------------------------------------------------------------------------

    def pump(self, now: float | None = None, flush: bool = False) -> int:
        """Process every frame that is ready; finish complete streams. The number of frames processed."""
        now = time.monotonic() if now is None else now
        done = 0
        for stream in self.streams.values():
            if stream.finished:
                continue
            # A live stream that has ended holds nothing back: nothing more will come.
            for frame_index, item, image in stream.ready(now, flush or stream.frame_count is not None):
                started = time.perf_counter()
                self._process(stream, frame_index, item, image)
                self.stats.latency("process", time.perf_counter() - started)
                if stream.live:  # capture -> result and events; frames the tracker carried over apart
                    name = "capture_to_result" if item.detected else "capture_to_result_carried"
                    self.stats.latency(name, max(0.0, time.time() - item.message.timestamp))
                done += 1
            if stream.complete:
                self.finish(stream.stream_id)
        return done

    def _process(self, stream: StreamSink, frame_index: int, item: _Pending, image: np.ndarray | None) -> None:
        message, tracker = item.message, stream.tracker
        scanned = bool(item.detected and message.scanned)
        if item.detected:
            assert isinstance(message, DescriptorsMessage)
            faces = self._detected_faces(stream, frame_index, message, image)
        else:
            track_ids, boxes = tracker.predict_only(frame_index, message.timestamp)
            count = len(track_ids)
            carried = TrackedFaces(
                boxes, np.full(count, np.nan), box_source=np.full(count, BOX_CARRIED, np.uint8),
                match_identities=np.full(count, None, object), match_distances=np.full(count, np.nan),
            )  # fmt: skip
            faces = with_decisions(tracker, carried, track_ids)
            if count:
                self.stats.count("faces_carried", count)
            self.stats.count("skipped_detection")
        self._emit(stream, tracker.pop_events(), (frame_index, message.timestamp))
        if self.kiosk is not None:
            for decision in self.kiosk.advance(stream.stream_id, message.timestamp):
                self.outputs.event(decision.to_record())
        detected = item.detected and (scanned or len(message) > 0)
        result = FrameResult(
            stream.stream_id, frame_index, message.timestamp, message.width, message.height, detected, faces, scanned
        )
        self.outputs.frame(result, image)
        stream.processed += 1
        self.stats.count("frames")

    def _detected_faces(
        self, stream: StreamSink, frame_index: int, message: DescriptorsMessage, image: np.ndarray | None
    ) -> TrackedFaces:
        """A detected frame: tracked, its embedded faces matched and observed by their tracks (the unknowns, the
        kiosk and the web feed see them too); each face with its track's identity after this frame."""
        tracker, batch, timestamp = stream.tracker, message.faces, message.timestamp
        # Faces the detect worker did not send to the embedder (embed 0) are tracked but not matched.
        embedded = np.flatnonzero(np.asarray(batch.embed, bool))
        part = batch if len(embedded) == len(batch) else batch.take(embedded)
        if message.new_scene:
            self._end_tracks_at_a_new_scene(stream, frame_index)
        self._end_tracks_at_a_cut(stream, frame_index, timestamp, part)
        track_ids = tracker.update(frame_index, timestamp, batch.boxes, batch.scores, batch.quality)
        part_ids = track_ids[embedded]
        for i, track_id in enumerate(part_ids.tolist()):
            stream.last_descriptor[track_id] = np.array(part.descriptors[i], np.float32)
        identities = [UNKNOWN] * len(batch)
        distances = np.full(len(batch), np.nan)
        chips = None if image is None else FrameChips(image, part.landmarks)
        if len(part):
            matches = self.matcher.identify(np.asarray(part.descriptors, np.float32))
            for row, i in enumerate(embedded.tolist()):
                identities[i], distances[i] = matches.identities[row], float(matches.distances[row])
            self._observe_faces(stream, frame_index, timestamp, part, part_ids, matches, chips)
        observed_identities, observed_distances = list(identities), distances.copy()
        if tracker.decision == "mean" and len(part):
            mean_identities, mean_distances = self._match_track_means(tracker, part_ids, part)
            for row, i in enumerate(embedded.tolist()):
                observed_identities[i], observed_distances[i] = mean_identities[row], mean_distances[row]
        for i in embedded.tolist():
            if math.isfinite(observed_distances[i]):  # NaN: nobody in the gallery (or face gated out)
                tracker.add_observation(int(track_ids[i]), observed_identities[i], float(observed_distances[i]),
                                        batch.quality[i], float(batch.scores[i]))  # fmt: skip
        chosen = np.zeros(len(batch), bool)
        chosen[embedded] = True
        match_identities = np.array([name if chosen[i] else None for i, name in enumerate(identities)], object)
        detected = TrackedFaces.of(batch, match_identities=match_identities,
                                   match_distances=np.where(chosen, distances, np.nan))  # fmt: skip
        faces = with_decisions(tracker, detected, track_ids)
        for code in batch.box_source.tolist():
            self.stats.count(f"faces_{box_source_name(code)}")
        self.stats.count("faces", len(batch))
        if self.outputs.web is not None and len(part):
            weights = tracker.gate.weights(part.quality, part.scores)
            self.outputs.web.faces(stream.stream_id, frame_index, timestamp, faces.take(embedded), weights, chips)
        return faces

    def _match_track_means(
        self, tracker: FaceTracker, track_ids: np.ndarray, faces: FaceBatch
    ) -> tuple[list[str], np.ndarray]:
        """decision="mean": each face joins its track's best faces; the tracks' mean descriptors are matched in
        one batch. Per face: its track's match (NaN distance where the quality gate turned the face away)."""
        identities = [UNKNOWN] * len(track_ids)
        distances = np.full(len(track_ids), np.nan)
        kept = [
            i for i, track_id in enumerate(track_ids.tolist())
            if tracker.add_face(track_id, faces.descriptors[i], faces.quality[i], float(faces.scores[i]))
        ]  # fmt: skip
        if not kept:
            return identities, distances
        means = np.stack([tracker.mean_descriptor(int(track_ids[i])) for i in kept])
        matches = self.matcher.identify(means.astype(np.float32))
        for row, i in enumerate(kept):
            identities[i], distances[i] = matches.identities[row], float(matches.distances[row])
        return identities, distances

    def _observe_faces(
        self, stream: StreamSink, frame_index: int, timestamp: float, faces: FaceBatch, track_ids: np.ndarray,
        matches: Any, chips: FrameChips | None = None,
    ) -> None:  # fmt: skip
        """Unknown-face collection (every face, with its quality weight) and kiosk evidence (faces the tracker's
        quality gate accepts only), from this frame's own per-face matches."""
        if self.unknowns is None and self.kiosk is None:
            return
        weights = stream.tracker.gate.weights(faces.quality, faces.scores)
        if self.unknowns is not None:
            for i, track_id in enumerate(track_ids.tolist()):
                chip = None if chips is None else functools.partial(chips, i)
                self.unknowns.observe(stream.stream_id, track_id, frame_index, timestamp, faces.boxes[i],
                                      float(faces.scores[i]), float(weights[i]), faces.descriptors[i],
                                      chip)  # fmt: skip
        if self.kiosk is not None and hasattr(matches, "names"):
            for i, evidence in enumerate(evidence_from_matches(matches, frame_index, timestamp)):
                if weights[i] > 0:
                    decision = self.kiosk.observe(stream.stream_id, int(track_ids[i]), evidence)
                    if decision is not None:
                        self.outputs.event(decision.to_record())

    def _emit(self, stream: StreamSink, events: list[TrackEvent], at: tuple[int, float] | None = None) -> None:
        """Track events out; an ended track also closes its unknown-face record and its kiosk decision.

        `at` is the frame being processed (index, timestamp): an end is decided frames after the track's last
        detection, so its event is stamped with that frame (events stay in frame order) and carries the last
        detection as ``last_frame`` / ``last_timestamp``."""
        if at is not None:
            self._at[stream.stream_id] = at
        for event in events:
            record = event_record(event)
            if isinstance(event, TrackEnded):
                record["last_frame"], record["last_timestamp"] = record["frame_index"], record["timestamp"]
                if at is not None and at[0] > event.frame_index:
                    record["frame_index"], record["timestamp"] = at[0], json_number(at[1])
            if self.event_descriptors and isinstance(event, TrackIdentified):
                tracker = stream.tracker
                descriptor = (tracker.mean_descriptor(event.track_id) if tracker.decision == "mean"
                              else stream.last_descriptor.get(event.track_id))  # fmt: skip
                if descriptor is not None:
                    record["descriptor"] = [round(float(v), 6) for v in descriptor]
            self.outputs.event(record)
            if isinstance(event, TrackEnded):
                if self.outputs.web is not None:
                    self.outputs.web.end(stream.stream_id, event.track_id)
                if self.unknowns is not None:
                    self.unknowns.end(stream.stream_id, event.track_id, event.identity)
                if self.kiosk is not None:
                    decision = self.kiosk.end_track(stream.stream_id, event.track_id)
                    if decision is not None:
                        self.outputs.event(decision.to_record())

    def _end_tracks_at_a_new_scene(self, stream: StreamSink, frame_index: int) -> None:
        """The source or the detect worker saw a scene cut or a size change on this frame (``new_scene``):
        every track of the stream ends, whatever the boxes overlap."""
        if not stream.tracker.tracks:
            return
        log.info("%s: new scene at frame %d (a cut or a size change): every track ends", stream.stream_id,
                 frame_index)  # fmt: skip
        self._end_every_track(stream)

    def _end_every_track(self, stream: StreamSink) -> None:
        """A scene cut: the stream's tracks end (their events go out with this frame's), faces start new ones."""
        stream.tracker.finish()
        stream.last_descriptor.clear()
        self.stats.count("scene_cuts")

    def _end_tracks_at_a_cut(self, stream: StreamSink, frame_index: int, timestamp: float, faces: FaceBatch) -> None:
        """A scene cut can put another person where a tracked face was: the boxes overlap, so the tracker
        (which sees boxes only) would carry the track, and its identity, over to a stranger, and a blurry
        stranger never gets the votes to correct it. The descriptors tell: when a face that would continue a
        track is farther than `tracker.scene_cut_distance` from that track's last face, every track of the
        stream ends here and the faces start new ones. The assignment is the tracker's own rule (greedy IoU
        on the predicted boxes), computed beforehand with its public functions."""
        if self.cut_distance <= 0 or not len(faces) or not stream.last_descriptor:
            return
        tracker = stream.tracker
        track_ids, predicted = tracker.predict_only(frame_index, timestamp)
        if not len(track_ids):
            return
        rows, columns = greedy_assignment(box_iou(predicted, faces.boxes), tracker.iou_threshold)
        for row, column in zip(rows.tolist(), columns.tolist()):
            last = stream.last_descriptor.get(int(track_ids[row]))
            if last is None:
                continue
            distance = float(np.linalg.norm(last - faces.descriptors[column]))
            if distance > self.cut_distance:
                log.info("%s: scene cut at frame %d (the face continuing track %d is %.2f from its last face): "
                         "every track ends", stream.stream_id, frame_index, int(track_ids[row]), distance)  # fmt: skip
                self._end_every_track(stream)
                return

    def finish(self, stream_id: str) -> None:
        """End one stream: its tracks end, its summary is written, its video closed."""
        stream = self.streams[stream_id]
        if stream.finished:
            return
        stream.finished = True
        stream.tracker.finish()
        self._emit(stream, stream.tracker.pop_events(), self._at.get(stream_id))
        record = summary_record(stream_id, stream.processed, stream.tracker.identity_summary())
        self.summaries[stream_id] = record
        self.outputs.event(record)
        self.outputs.end_stream(stream_id)
        dropped = len(stream.pending)
        if dropped:
            log.warning("%s: %d results after a missing frame were not processed (run stopped)", stream_id, dropped)
        stream.pending.clear()
        stream.images.clear()
        log.info("%s: finished, %d frames", stream_id, stream.processed)

    @property
    def done(self) -> bool:
        """Whether every stream has finished."""
        return all(stream.finished for stream in self.streams.values())

    def close(self) -> None:
        """Stop: process what is in order, finish every stream, close the outputs."""
        self.pump(flush=True)
        for stream_id in self.streams:
            self.finish(stream_id)
        if self.unknowns is not None:
            self.unknowns.close()
        self.outputs.close()
        self.matcher.close()
