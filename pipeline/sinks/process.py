"""The sink process (`SinkStage`): its sockets, its receive loop, the gallery refresh; `core.SinkCore` does the
work.

Inputs (see runtime/stages.py for the socket map): DescriptorsMessages from the embed workers on
``descriptors``; straight from the source on ``sink_in``: frame images (only when an annotated video
or a live window is wanted), skip notices (frames the detector did not run on, an empty FacesMessage)
and EndOfStream. Outputs: acknowledgements on ``acks`` (every result received, so the source can stop
re-sending it), events on ``events``, the web view's frames and faces on ``preview``, and the files of
`outputs.SinkOutputs`.

The gallery is re-read every ``pipeline.gallery_refresh_s`` (`Gallery.refresh()`), so enrolments and
removals reach a running pipeline without a restart; a gallery file that does not exist yet is opened
once it appears.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from ..config import PipelineConfig
from ..domain.kiosk import KioskDecider
from ..domain.unknowns import UnknownTracks, chips_dir
from ..runtime import messages
from ..runtime.messages import MessageError
from ..runtime.stages import StageProcess, encode_json, open_socket
from ..sources.spec import LIVE_KINDS
from .core import SinkCore
from .matcher import open_matcher
from .outputs import SinkOutputs
from .web_feed import WebFeed

log = logging.getLogger(__name__)


def live_reorder_s(pipeline: PipelineConfig, endpoints: dict[str, str]) -> float:
    """How long a live result may wait for an earlier one. Results can only come out of order when several
    detect or embed workers run, or more workers may join (`facestream stage` over tcp://, or over ipc://
    in a fixed pipeline.run_dir): else nothing is worth waiting for, and holding would only add latency."""
    parallel = int(pipeline.detect_workers) > 1 or int(pipeline.embed_workers) > 1
    joinable = bool(pipeline.run_dir) or any(str(e).startswith("tcp://") for e in endpoints.values())
    return float(pipeline.live_reorder_ms) / 1000 if parallel or joinable else 0.0


class SinkStage(StageProcess):
    """The sink process: descriptors in, gallery match, tracking, events and the other outputs out, in order."""

    role = "sink"
    quit = False  # the user closed the live window: the whole run stops

    def run(self) -> int:
        """Receive until every stream has finished or the run stops, then flush the outputs."""
        pipeline = self.config.pipeline
        control = self._open_sockets()
        self.core = self._make_core()
        matcher, outputs = self.core.matcher, self.core.outputs
        self.extra_stats = self._extra_stats
        refresh_every = float(pipeline.gallery_refresh_s)
        next_refresh = time.monotonic() + refresh_every
        poller = zmq.Poller()
        for socket in (self.descriptors, self.sink_in, control):
            poller.register(socket, zmq.POLLIN)
        self.ready()
        try:
            while not self.stopping and not self.core.done:
                ready = dict(poller.poll(20))
                if control in ready:
                    self.handle_control()
                if self.sink_in in ready:
                    self._drain(self.sink_in, "sink_in")
                if self.descriptors in ready:
                    self._drain(self.descriptors, "descriptors")
                self.core.pump()
                self._publish_acks()
                if outputs.window is not None and outputs.window.quit:
                    self.quit = True
                    self.request_stop("q pressed in the window")
                if refresh_every > 0 and time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh_every
                    try:
                        if matcher.refresh():
                            log.info("gallery changed: reloaded")
                            self.stats.count("gallery_reloads")
                    except Exception as error:  # a gallery being rewritten must not stop the run
                        log.warning("gallery refresh failed (keeping the previous state): %s", error)
                self.send_stats()
        finally:
            self.core.close()
        return 0

    def _open_sockets(self) -> zmq.Socket:
        """Bind the sink's sockets (descriptors, sink_in in; acks, events out); the control subscription."""
        pipeline = self.config.pipeline
        hwm = int(pipeline.faces_hwm)
        self.descriptors = open_socket(self.context, zmq.PULL, self.endpoints["descriptors"], bind=True, hwm=hwm)
        self.sink_in = open_socket(
            self.context, zmq.PULL, self.endpoints["sink_in"], bind=True, hwm=4 * int(pipeline.inflight_frames) + 64
        )
        self.acks = open_socket(self.context, zmq.PUB, self.endpoints["acks"], bind=True, hwm=100_000)
        self.events = open_socket(self.context, zmq.PUB, self.endpoints["events"], bind=True, hwm=100_000)
        return self.subscribe_control()

    def _make_core(self) -> SinkCore:
        """The gallery, the outputs, the unknowns file and the kiosk of this run's spec, in a SinkCore."""
        pipeline, outputs_spec = self.config.pipeline, self.spec["outputs"]
        streams = {item["stream_id"]: item["kind"] in LIVE_KINDS for item in self.spec["sources"]}
        fps = {
            sid: float(self.spec["stream_fps"].get(sid) or self.config.outputs.live_video_fps) for sid in streams
        }
        matcher = open_matcher(self.config, outputs_spec.get("gallery"))
        outputs = SinkOutputs(
            events=outputs_spec.get("events"),
            detections=outputs_spec.get("detections"),
            video=outputs_spec.get("video"),
            stream_fps=fps,
            codec=str(self.config.outputs.video_codec),
            show=bool(outputs_spec.get("show")),
            publish=lambda topic, line: self.events.send_multipart([topic.encode(), line], zmq.NOBLOCK),
            web=self._web_feed(outputs_spec),
        )
        unknowns = None
        if outputs_spec.get("unknowns"):
            sources = {item["stream_id"]: str(item.get("uri", "")) for item in self.spec["sources"]}
            unknowns = UnknownTracks(outputs_spec["unknowns"], sources=sources,
                                     chip_dir=chips_dir(outputs_spec["unknowns"]))  # fmt: skip
        kiosk = None
        if self.config.kiosk.enabled:
            from ..domain.kiosk import KioskPolicy

            kiosk = KioskDecider(KioskPolicy.from_config(self.config.kiosk))
        return SinkCore(
            streams,
            matcher,
            outputs,
            self.config.tracker,
            detect_every=int(pipeline.detect_every),
            live_hold_s=live_reorder_s(pipeline, self.endpoints),
            stats=self.stats,
            unknowns=unknowns,
            kiosk=kiosk,
            event_descriptors=bool(self.config.outputs.event_descriptors),
            stream_fps=fps,
        )

    def _web_feed(self, outputs_spec: dict[str, Any]) -> WebFeed | None:
        """The ``preview`` PUB socket and what goes on it, when the run serves a web view (spec outputs "web")."""
        if not outputs_spec.get("web"):
            return None
        web = self.config.web
        self.preview = open_socket(self.context, zmq.PUB, self.endpoints["preview"], bind=True, hwm=64)

        def publish(topic: bytes, payload: bytes) -> None:
            try:
                self.preview.send_multipart([topic, payload], zmq.NOBLOCK)
            except zmq.Again:
                self.stats.count("preview_dropped")

        return WebFeed(publish, fps=float(web.preview_fps), max_width=int(web.preview_max_width),
                       jpeg_quality=int(web.jpeg_quality))  # fmt: skip

    def _drain(self, socket: zmq.Socket, channel: str, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                message = messages.recv(socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            except MessageError as error:
                self.malformed(f"{channel}: {error}")
                continue
            try:
                self.core.add(message, channel)
            except MessageError as error:
                self.malformed(str(error))

    def _publish_acks(self) -> None:
        for stream_id, frames in self.core.take_acks().items():
            try:
                self.acks.send(encode_json({"type": "ack", "stream_id": stream_id, "frames": frames}), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the source re-sends and we ack again

    def _extra_stats(self) -> dict[str, Any]:
        streams = {
            sid: {"processed": s.processed, "waiting": len(s.pending), "finished": s.finished}
            for sid, s in self.core.streams.items()
        }
        return {
            "streams": streams,
            "summaries": self.core.summaries,
            "events": self.core.outputs.event_count,
            "gallery_people": getattr(self.core.matcher, "people_count", None),  # Prometheus (integrations/metrics.py)
            "quit": self.quit,
        }
