"""Where processed frames and events go (`SinkOutputs`): each event to ``--events`` and the events PUB
socket, each frame's record to ``--detections`` and its annotated image to the video, the live window and the
web view, every part optional."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .annotate import draw_faces
from .records import FrameResult, detection_record, json_line
from .web_feed import WebFeed
from .writers import JsonLines, LiveWindow, VideoOutput, video_paths


class SinkOutputs:
    """Where processed frames and events go. Every part optional."""

    def __init__(
        self,
        *,
        events: str | None = None,
        detections: str | None = None,
        video: str | None = None,
        stream_fps: dict[str, float] | None = None,
        codec: str = "mp4v",
        show: bool = False,
        publish: Callable[[str, bytes], None] | None = None,
        web: WebFeed | None = None,
    ) -> None:
        self.events = JsonLines(events) if events else None
        self.detections = JsonLines(detections) if detections else None
        self.publish = publish
        stream_fps = stream_fps or {}
        self.videos = (
            {sid: VideoOutput(p, stream_fps[sid], codec) for sid, p in video_paths(video, list(stream_fps)).items()}
            if video
            else {}
        )
        self.window = LiveWindow() if show else None
        self.web = web  # run --web / --preview
        self.event_count = 0

    @property
    def wants_images(self) -> bool:
        """Whether any output needs the annotated image (video, window, web view)."""
        return bool(self.videos) or self.window is not None or self.web is not None

    def event(self, record: dict[str, Any]) -> None:
        """Write an event to --events and publish it on the events socket."""
        line = self.events.write(record) if self.events else json_line(record)
        self.event_count += 1
        if self.publish is not None:
            self.publish(str(record["event"]), line.rstrip(b"\n"))

    def frame(self, result: FrameResult, image: np.ndarray | None) -> None:
        """Write a frame's record to --detections and its annotated image to the image outputs."""
        if self.detections is not None:
            self.detections.write(detection_record(result))
        if image is None:
            return
        video, window = self.videos.get(result.stream_id), self.window
        web = self.web if self.web is not None and self.web.frame_due(result.stream_id) else None
        if video is None and window is None and web is None:
            return
        canvas = draw_faces(image, result)
        if web is not None:
            web.frame(result.stream_id, canvas)
        if video is not None:
            video.write(canvas)
        if window is not None:
            window.show(result.stream_id, canvas)

    def end_stream(self, stream_id: str) -> None:
        """Finish a stream's outputs (its video file)."""
        video = self.videos.get(stream_id)
        if video is not None:
            video.close()

    def close(self) -> None:
        """Close every output."""
        for part in (self.events, self.detections, *self.videos.values(), self.window):
            if part is not None:
                part.close()
