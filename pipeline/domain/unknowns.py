"""The unknown-faces file: what a run saw of people the gallery did not know, for clustering and enrolment.

One JSON object a line, one line per unknown **track** (one visit), written when the track ends:

    {"format": "facestream-unknowns", "version": 1, "stream_id": "door", "track_id": 7,
     "source": "rtsp://...", "first_frame": 120, "last_frame": 188, "first_timestamp": 4.0,
     "last_timestamp": 6.27, "identity": "unknown",
     "faces": [{"frame_index": 131, "timestamp": 4.37, "box": [l, t, r, b], "score": 1.02,
                "weight": 0.93, "descriptor": "<base64 of 128 little-endian float32>",
                "chip": "/path/unknowns.jsonl.chips/door-7-131.png" | null}, ...]}

``faces`` are the track's best faces (highest quality weight, `tracker.QualityGate.weights`; then the
detector score), at most ``max_faces`` of them. A track none of whose faces passed the quality gate (an
out-of-focus audience, say) is still written, with weight 0 on its faces: it can be clustered and seen,
and `facestream unknowns --enroll` leaves such faces out unless forced. Descriptors are base64 of their
exact float32 bytes (as `enroll export` writes them: they round-trip bit for bit). The file is created
0600 (descriptors are biometric data) and written one whole line per write(2), so a killed run leaves only
complete lines. In a run (`run --unknowns FILE`) the kept faces' 150x150 aligned chips are saved as PNG in
``FILE.chips/`` (0700; files 0600), made by the sink from the frame and landmarks only for the faces kept.

Writing: `UnknownTracks` collects faces per track while a run goes (``observe``) and writes the track's
line at ``end`` when the track ended unknown. Reading: `read_unknowns` -> `UnknownFace` records for
`enroll.clustering.cluster_unknowns`; malformed lines are reported (line number, reason) and skipped,
never fatal. `unknowns_from_faces` makes the same records from one analysed image (every unknown face
its own track), e.g. to collect unknown faces from photos or to test with real data.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...enroll.clustering import UnknownFace
from ...errors import InputError

log = logging.getLogger(__name__)

FORMAT = "facestream-unknowns"
VERSION = 1
DESCRIPTOR_BYTES = 128 * 4
UNKNOWN = "unknown"

__all__ = [
    "FORMAT",
    "VERSION",
    "ReadReport",
    "UnknownTracks",
    "UnknownsFileError",
    "decode_descriptor",
    "encode_descriptor",
    "read_unknowns",
    "redact",
    "track_record",
    "unknowns_from_faces",
    "write_records",
]


class UnknownsFileError(InputError, ValueError):
    """The file cannot be read at all (missing, unreadable, not text)."""


def encode_descriptor(descriptor: np.ndarray) -> str:
    array = np.asarray(descriptor, dtype="<f4").reshape(-1)
    if array.shape != (128,):
        raise ValueError(f"a descriptor has 128 values, got {array.size}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_descriptor(text: str) -> np.ndarray:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != DESCRIPTOR_BYTES:
        raise ValueError(f"a descriptor has {len(raw)} bytes, not {DESCRIPTOR_BYTES}")
    array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("a descriptor holds NaN or inf")
    return array


def redact(uri: str) -> str:
    """A source URI without its password (rtsp://user:secret@host/... -> rtsp://user:***@host/...)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _number(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


# ------------------------------------------------------------------------------------------------
# writing


@dataclass
class _Face:
    frame_index: int
    timestamp: float
    box: tuple[int, int, int, int]
    score: float
    weight: float
    descriptor: np.ndarray
    chip: np.ndarray | None


@dataclass
class _Track:
    stream_id: str
    track_id: int
    first_frame: int
    first_timestamp: float
    last_frame: int
    last_timestamp: float
    faces: list[_Face] = field(default_factory=list)


def track_record(
    stream_id: str,
    track_id: int,
    faces: Sequence[dict[str, Any]],
    *,
    first_frame: int,
    last_frame: int,
    first_timestamp: float,
    last_timestamp: float,
    source: str | None = None,
    identity: str = UNKNOWN,
) -> dict[str, Any]:
    """One line of the file. `faces`: dicts with frame_index, timestamp, box, score, weight, descriptor
    (array) and chip (path or None)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "stream_id": stream_id,
        "track_id": int(track_id),
        "source": source,
        "first_frame": int(first_frame),
        "last_frame": int(last_frame),
        "first_timestamp": _number(first_timestamp),
        "last_timestamp": _number(last_timestamp),
        "identity": identity,
        "faces": [
            {
                "frame_index": int(face["frame_index"]),
                "timestamp": _number(face["timestamp"]),
                "box": None if face.get("box") is None else [int(v) for v in face["box"]],
                "score": _number(face.get("score")),
                "weight": _number(face.get("weight")),
                "descriptor": encode_descriptor(face["descriptor"]),
                "chip": face.get("chip"),
            }
            for face in faces
        ],
    }


class _LineFile:
    """Whole lines, one write(2) each, file mode 0600."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self.fd: int | None = os.open(self.path, flags, 0o600)
        os.fchmod(self.fd, 0o600)  # an existing file keeps its mode otherwise: these lines hold biometric data
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.fd is None:
            raise ValueError(f"{self.path}: closed")
        view = memoryview((json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode())
        while view:
            view = view[os.write(self.fd, view) :]
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_records(path: str | Path, records: Iterable[dict[str, Any]], append: bool = False) -> int:
    """Write track records (from `track_record` / `unknowns_from_faces`) to `path`; the number written."""
    out = _LineFile(path, append=append)
    try:
        for record in records:
            out.write(record)
        return out.lines
    finally:
        out.close()


def _count_lines(path: str | Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return 0


def chips_dir(unknowns_path: str | Path) -> Path:
    """Where `run --unknowns FILE` saves the kept faces' chips: ``FILE.chips/`` beside it."""
    return Path(str(unknowns_path) + ".chips")


def save_chip(folder: Path, name: str, chip: np.ndarray) -> str | None:
    """Save a 150x150 RGB chip as ``folder/name.png`` (folder 0700, file 0600: face images are biometric
    data); its path, or None (logged) when it cannot be written."""
    import cv2

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # an existing folder too
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]
    path = folder / f"{safe}.png"
    if not cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(chip)[:, :, ::-1])):
        log.warning("%s: cannot write the chip", path)
        return None
    os.chmod(path, 0o600)
    return str(path)


class UnknownTracks:
    """Collects each track's best faces during a run; writes one line per track that ends unknown.

    The sink calls ``observe`` for every embedded face (with its quality weight, 0 when the quality gate
    rejects it: such faces are kept only while the track has no better ones) and ``end`` when a track
    ends, with the track's final identity (None: no face passed the gate, so never identified). Chips
    (150x150 RGB), when given, are saved as PNG in `chip_dir` for the kept faces only.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_faces: int = 3,
        chip_dir: str | Path | None = None,
        sources: dict[str, str] | None = None,
    ) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        held = _count_lines(path)
        self.out = _LineFile(path, append=True)  # a later run (or a restarted sink) adds to what the file holds
        if held:
            log.info("%s: adding to its %d earlier unknown tracks", path, held)
        # chip names carry the run, so a later run's track 1 of frame 0 never replaces an earlier run's chip
        self.run_tag = f"{time.time_ns() // 1_000_000:x}"
        self.max_faces = int(max_faces)
        self.chip_dir = None if chip_dir is None else Path(chip_dir)
        self.sources = {stream_id: redact(uri) for stream_id, uri in (sources or {}).items()}
        self.tracks: dict[tuple[str, int], _Track] = {}
        self.written = 0

    def observe(
        self,
        stream_id: str,
        track_id: int,
        frame_index: int,
        timestamp: float,
        box: Sequence[int],
        score: float,
        weight: float,
        descriptor: np.ndarray,
        chip: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> None:
        """One embedded face of a track. `chip` may be a function that makes it: called only when the face
        is among the track's best (the sink computes chips from the frame, so only for the faces kept)."""
        key = (stream_id, int(track_id))
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = _Track(stream_id, int(track_id), frame_index, timestamp, frame_index, timestamp)
        track.last_frame, track.last_timestamp = (
            max(track.last_frame, frame_index),
            max(track.last_timestamp, timestamp),
        )
        face = _Face(
            int(frame_index),
            float(timestamp),
            (int(box[0]), int(box[1]), int(box[2]), int(box[3])),
            float(score),
            max(0.0, float(weight)) if math.isfinite(float(weight)) else 0.0,
            np.array(descriptor, np.float32).reshape(128),
            None,
        )
        track.faces.append(face)
        # Keep the best: highest weight, then the higher detector score, then the earlier frame.
        track.faces.sort(key=lambda f: (-f.weight, -f.score, f.frame_index))
        del track.faces[self.max_faces :]
        if chip is not None and self.chip_dir is not None and any(f is face for f in track.faces):
            face.chip = np.array(chip() if callable(chip) else chip)

    def end(self, stream_id: str, track_id: int, identity: str | None) -> dict[str, Any] | None:
        """The track ended; returns (and writes) its record when it ended unknown with a kept face."""
        track = self.tracks.pop((stream_id, int(track_id)), None)
        if track is None or not track.faces or (identity not in (None, UNKNOWN)):
            return None
        faces = []
        for face in sorted(track.faces, key=lambda f: f.frame_index):
            faces.append({"frame_index": face.frame_index, "timestamp": face.timestamp, "box": face.box,
                          "score": face.score, "weight": face.weight, "descriptor": face.descriptor,
                          "chip": self._save_chip(track, face)})  # fmt: skip
        record = track_record(
            stream_id, track.track_id, faces, first_frame=track.first_frame, last_frame=track.last_frame,
            first_timestamp=track.first_timestamp, last_timestamp=track.last_timestamp,
            source=self.sources.get(stream_id),
        )  # fmt: skip
        self.out.write(record)
        self.written += 1
        return record

    def _save_chip(self, track: _Track, face: _Face) -> str | None:
        if self.chip_dir is None or face.chip is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in track.stream_id)[:60]
        return save_chip(self.chip_dir, f"{safe}-{self.run_tag}-{track.track_id}-{face.frame_index}", face.chip)

    def close(self, identities: dict[tuple[str, int], str | None] | None = None) -> None:
        """End every track still open (their final identities in `identities`, else unknown) and close."""
        identities = identities or {}
        for key in list(self.tracks):
            self.end(key[0], key[1], identities.get(key))
        self.out.close()


# ------------------------------------------------------------------------------------------------
# reading


@dataclass
class ReadReport:
    """What `read_unknowns` found: faces, and the lines it skipped with why."""

    faces: list[UnknownFace]
    tracks: int
    problems: list[str]


def _face_from(record: dict[str, Any], face: dict[str, Any]) -> UnknownFace:
    box = face.get("box")
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        raise ValueError(f"box must be [left, top, right, bottom], got {box!r}")
    timestamp = face.get("timestamp")
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        raise ValueError(f"timestamp must be a number, got {timestamp!r}")
    frame_index = face.get("frame_index")
    if not isinstance(frame_index, int) or isinstance(frame_index, bool):
        raise ValueError(f"frame_index must be an integer, got {frame_index!r}")
    descriptor = face.get("descriptor")
    if not isinstance(descriptor, str):
        raise ValueError("descriptor must be a base64 string")
    chip = face.get("chip")
    return UnknownFace(
        descriptor=decode_descriptor(descriptor),
        stream_id=str(record["stream_id"]),
        frame_index=frame_index,
        timestamp=float(timestamp),
        track_id=int(record["track_id"]),
        box=None if box is None else tuple(int(v) for v in box),  # type: ignore[arg-type]
        score=None if face.get("score") is None else float(face["score"]),
        weight=None if face.get("weight") is None else float(face["weight"]),
        chip=None if chip is None else str(chip),
        source=None if record.get("source") is None else str(record["source"]),
    )


def parse_line(line: str) -> list[UnknownFace]:
    """The faces of one line; ValueError naming what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    if record.get("version") != VERSION:
        raise ValueError(f"version {record.get('version')!r}; this facestream reads {VERSION}")
    if not isinstance(record.get("stream_id"), str) or not isinstance(record.get("track_id"), int):
        raise ValueError("stream_id (text) and track_id (integer) are required")
    faces = record.get("faces")
    if not isinstance(faces, list) or not all(isinstance(face, dict) for face in faces):
        raise ValueError("faces must be a list of objects")
    try:
        return [_face_from(record, face) for face in faces]
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"bad face: {error}") from None


def read_unknowns(paths: str | Path | Sequence[str | Path]) -> ReadReport:
    """Every face of every file (in order); a malformed line is skipped and listed in `problems`.

    UnknownsFileError when a file cannot be read at all.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    faces: list[UnknownFace] = []
    problems: list[str] = []
    tracks = 0
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownsFileError(f"{path}: no such file") from None
        except OSError as error:
            raise UnknownsFileError(f"{path}: cannot read: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise UnknownsFileError(f"{path}: not a text file (expected JSON lines)") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found = parse_line(line)
            except ValueError as error:
                problems.append(f"{path}:{number}: {error}")
                continue
            faces.extend(found)
            tracks += 1
    return ReadReport(faces, tracks, problems)


# ------------------------------------------------------------------------------------------------
# records from analysed images


def unknowns_from_faces(
    faces: Any,
    matches: Any | None,
    *,
    stream_id: str,
    frame_index: int = 0,
    timestamp: float = 0.0,
    source: str | None = None,
    first_track_id: int = 0,
    weights: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Track records for the unknown faces of one analysed image or frame (`engines.face_batch.FaceBatch`,
    with the gallery's `Matches` for it, or None when nobody is enrolled): each face its own track,
    numbered from `first_track_id` in the batch's order."""
    n = len(faces)
    unknown = [True] * n if matches is None else [identity == UNKNOWN for identity in matches.identities]
    scores = np.asarray(faces.scores, np.float64)
    records = []
    for i in range(n):
        if not unknown[i]:
            continue
        face = {"frame_index": frame_index, "timestamp": timestamp, "box": faces.boxes[i], "score": float(scores[i]),
                "weight": None if weights is None else float(weights[i]), "descriptor": faces.descriptors[i],
                "chip": None}  # fmt: skip
        records.append(
            track_record(
                stream_id,
                first_track_id + i,
                [face],
                first_frame=frame_index,
                last_frame=frame_index,
                first_timestamp=timestamp,
                last_timestamp=timestamp,
                source=source,
            )
        )
    return records
