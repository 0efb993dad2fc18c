"""The detect+align stage: frames in; detector, 5-point landmarks, 150x150 chips and quality; faces out."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from ...engines.face_batch import BOX_SCAN
from . import messages
from .messages import FacesMessage, FrameMessage, MessageError
from .stages import StageProcess, model_cache_dir, open_socket, worker_threads

log = logging.getLogger(__name__)


def detect_and_align(detector: Any, predictor: Any, frame: FrameMessage) -> FacesMessage:
    """Full-frame detection: faces, landmarks, chips and quality of one frame (the frame itself goes no further)."""
    from ..domain.follow import faces_message

    boxes, scores = detector.detect(frame.image)
    return faces_message(frame, predictor, boxes, scores, np.full(len(boxes), BOX_SCAN), None, True)


class DetectWorker(StageProcess):
    """PULL frames -> detector, 5-point landmarks, chips, quality -> PUSH faces. Any number may run.

    With ``detector.follow`` off every frame gets full-frame detection and the worker is stateless; else
    the worker follows the faces of each stream it sees with region detection and scans the full frame on
    a schedule (`pipeline.follow.Follower`; background scans on a second session with
    ``detector.scan_threads`` threads, the follower session gets the rest of the worker's threads).
    """

    role = "detect"

    def run(self) -> int:
        """Frames in, faces (boxes, landmarks, 150x150 chips, quality) out, until stopped."""
        from ...engines.detector import FaceDetector, detector_options
        from ...engines.landmarks import ShapePredictor
        from ...engines.models import model_path
        from ..domain.follow import Follower, FollowSettings
        from ..domain.tracker import QualityGate

        config, threads = self.config, worker_threads(self.config, "detect")
        cache = model_cache_dir(config)
        settings = FollowSettings.from_config(config)
        scan_threads = max(1, int(config.detector.scan_threads)) if settings.mode != "off" else 0

        def make_detector(count: int) -> Any:
            return FaceDetector.from_file(
                model_path("detector", config.models.detector),
                cache,
                count,
                upsample=config.detector.upsample,
                threshold=config.detector.threshold,
                engine=config.engine,
                **detector_options(config.detector),
            )

        detector = make_detector(max(1, threads - scan_threads))
        self.models.append(detector)
        predictor = ShapePredictor.from_file(model_path("landmarks", config.models.landmarks), cache)
        self.follower: Follower | None = None
        if settings.mode != "off":
            tracker = config.tracker
            gate = QualityGate(float(tracker.min_face_size), float(tracker.min_sharpness),
                               float(tracker.min_score))  # fmt: skip
            scanner = make_detector(scan_threads)
            self.models.append(scanner)
            self.follower = Follower(settings, detector, predictor, gate, scanner, self.stats)
        hwm = int(config.pipeline.frame_hwm)
        self.frames = open_socket(self.context, zmq.PULL, self.endpoints["frames"], bind=False, hwm=hwm)
        self.faces = open_socket(
            self.context, zmq.PUSH, self.endpoints["faces_in"], bind=False, hwm=int(config.pipeline.faces_hwm)
        )
        control = self.subscribe_control() if self.spec.get("local") else None
        poller = zmq.Poller()
        poller.register(self.frames, zmq.POLLIN)
        if control is not None:
            poller.register(control, zmq.POLLIN)
        log.info("%s: ready (%d ONNX Runtime threads, upsample %d)", self.name, threads, detector.upsample)
        self.backlog: deque[FrameMessage] = deque()
        self.ready()
        while not self.stopping:
            ready = dict(poller.poll(0 if self.backlog else 200))
            if control is not None and control in ready:
                self.handle_control()
            if (self.backlog or self.frames in ready) and not self.stopping:
                frame = self.backlog.popleft() if self.backlog else self._receive()
                if frame is not None:
                    self._one_frame(detector, predictor, self._newest(frame) if frame.live else frame)
            self.send_stats()
        if self.follower is not None:
            self.follower.close()
        return 0

    def _receive(self) -> FrameMessage | None:
        try:
            frame = messages.recv(self.frames, zmq.NOBLOCK)
        except zmq.Again:
            return None
        except MessageError as error:
            self.malformed(str(error))
            return None
        if not isinstance(frame, FrameMessage):
            self.malformed(f"expected a frame, got a {type(frame).__name__}")
            return None
        self.stats.count("received")
        return frame

    def _newest(self, frame: FrameMessage) -> FrameMessage:
        """A live frame whose stream has newer frames already queued here is stale: detect the newest instead.
        Other frames met on the way wait in the backlog (at most the receive high-water mark)."""
        while (queued := self._receive()) is not None:
            if queued.live and queued.stream_id == frame.stream_id and queued.frame_index > frame.frame_index:
                self.stats.count("stale")
                frame = queued
            else:
                self.backlog.append(queued)
        return frame

    def _one_frame(self, detector: Any, predictor: Any, frame: FrameMessage) -> None:
        started = time.perf_counter()
        try:
            if self.follower is not None and self.follower.settings.applies(frame.live):
                faces = self.follower.process(frame)
            else:
                faces = detect_and_align(detector, predictor, frame)
        except (ValueError, MessageError) as error:  # e.g. an image the detector cannot take
            self.malformed(f"frame {frame.stream_id}#{frame.frame_index}: {error}")
            return
        self.stats.latency("detect", time.perf_counter() - started)
        self.stats.count("frames")
        self.stats.count("faces", len(faces))
        if self.send_until_stopped(self.faces, faces):
            self.stats.count("sent")
