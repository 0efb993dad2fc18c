"""What a `--source` names: its kind (file or live), its stream id, and what can be known of it before the run
(frame count, frame rate); the sources' error and the image-folder listing the readers share."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2

from ...errors import InputError
from ..config import Config

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
FILE_KINDS = ("video", "images", "image")
LIVE_KINDS = ("camera", "url", "replay", "loop")
REPLAY_PREFIXES = {"replay:": "replay", "loop:": "loop"}
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SourceError(InputError, RuntimeError):
    """A source that cannot be opened or read; the message names it and says why."""


@dataclass(frozen=True)
class SourceSpec:
    """One `--source`: its stream id, where it reads from (path, camera index or URL) and its kind."""

    stream_id: str
    uri: str
    kind: str  # video, images, image (file sources); camera, url (live)

    @property
    def live(self) -> bool:
        """Cameras, URLs and replay:/loop: files: newest frames win (else lossless and in order)."""
        return self.kind in LIVE_KINDS

    def to_json(self) -> dict[str, str]:
        """The spec as JSON (spec.json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceSpec:
        """The spec from `to_json`'s dict."""
        return cls(str(data["stream_id"]), str(data["uri"]), str(data["kind"]))


def classify(uri: str) -> str:
    """The kind of source `uri` names (it need not exist: opening it is the source process's job)."""
    if uri.isdigit():
        return "camera"
    for prefix, kind in REPLAY_PREFIXES.items():
        if uri.startswith(prefix):
            if not uri[len(prefix) :]:
                raise SourceError(f"{uri}: {prefix} needs a video file after it ({prefix}clip.mp4)")
            return kind
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in LIVE_SCHEMES:
        return "url"
    if scheme and scheme != "file":
        raise SourceError(f"{uri}: unknown URL scheme {scheme!r} (live streams: {', '.join(LIVE_SCHEMES)})")
    path = Path(uri[len("file://") :] if scheme == "file" else uri)
    if path.is_dir():
        return "images"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "video"


def default_stream_id(uri: str, kind: str) -> str:
    """The stream id when `--source` gives none: the file's name, `camera0`, or the URL's host."""
    if kind == "camera":
        return f"camera{uri}"
    if kind == "url":
        rest = uri.split("://", 1)[1].split("@")[-1]  # never put credentials in a stream id
        text = rest.split("?")[0]
    elif kind in ("replay", "loop"):
        text = Path(replay_path(uri)).stem or "stream"
    else:
        text = Path(uri.removeprefix("file://").rstrip("/")).stem or "stream"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "stream"
    return cleaned[:64] if cleaned[0].isalnum() else f"s{cleaned[:63]}"


def replay_path(uri: str) -> str:
    """The video file of a ``replay:`` / ``loop:`` source."""
    for prefix in REPLAY_PREFIXES:
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return uri


def parse_source(text: str) -> tuple[str | None, str]:
    """`[ID=]URI` -> (ID or None, URI). An '=' belongs to the id only when what precedes it is a plain name."""
    head, sep, tail = text.partition("=")
    if sep and _STREAM_ID.fullmatch(head) and tail:
        return head, tail
    return None, text


def parse_sources(texts: list[str]) -> list[SourceSpec]:
    """SourceSpecs with unique stream ids (defaults get -2, -3... when they collide)."""
    if not texts:
        raise SourceError("no source: give at least one --source (video file, image folder, camera index or URL)")
    specs: list[SourceSpec] = []
    used: set[str] = set()
    explicit = [parse_source(text)[0] for text in texts]
    for text, stream_id in zip(texts, explicit):
        _, uri = parse_source(text)
        if not uri:
            raise SourceError(f"--source {text!r}: empty source")
        kind = classify(uri)
        if stream_id is not None:
            if stream_id in used:
                raise SourceError(f"--source {text!r}: stream id {stream_id!r} is used twice")
        else:
            base = default_stream_id(uri, kind)
            stream_id, n = base, 2
            while stream_id in used or stream_id in explicit:
                stream_id, n = f"{base}-{n}", n + 1
        used.add(stream_id)
        specs.append(SourceSpec(stream_id, uri, kind))
    return specs


def natural_key(name: str) -> list[Any]:
    """Sort key putting frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder, in natural order (frame2 before frame10)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


@dataclass(frozen=True)
class ProbeInfo:
    """What the supervisor knows of a file source before the run: for the progress bar and the video writer."""

    frame_count: int | None
    fps: float | None


def probe_source(spec: SourceSpec, config: Config) -> ProbeInfo:
    """Frame count and frame rate of a file source (best effort, nothing read beyond the header)."""
    max_frames = int(config.sources.max_frames)

    def capped(count: int | None) -> int | None:
        return min(count, max_frames) if count is not None and max_frames > 0 else count

    if spec.kind == "images":
        try:
            return ProbeInfo(capped(len(list_images(Path(spec.uri)))), float(config.sources.image_fps))
        except OSError:
            return ProbeInfo(None, None)
    if spec.kind == "image":
        return ProbeInfo(1, float(config.sources.image_fps))
    if spec.kind in ("video", "replay", "loop"):
        capture = cv2.VideoCapture(replay_path(spec.uri))
        try:
            if not capture.isOpened():
                return ProbeInfo(None, None)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = float(capture.get(cv2.CAP_PROP_FPS))
            if spec.kind == "loop" or (spec.kind == "replay" and max_frames > 0):
                count = 0  # unknown: frames are dropped when the pipeline falls behind
            return ProbeInfo(capped(count) if count > 0 and spec.kind == "video" else None, fps if fps > 0 else None)
        finally:
            capture.release()
    return ProbeInfo(None, None)
