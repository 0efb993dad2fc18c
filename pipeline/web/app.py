"""The web view: live annotated streams, events, per-stage health and gallery management in a browser.

One small ASGI app (Starlette, served by uvicorn) and one static page (pipeline/web/static: plain HTML
and JavaScript, no build). It runs inside `facestream run --web` (a thread of the supervisor, which hands
it the health of every stage) or alone as `facestream serve`, attached to a running pipeline's endpoints
(its run directory) and gallery.

Where the data comes from:

* events: the sink's ``events`` PUB socket (every event, as the events file has them);
* annotated frames and unknown faces: the sink's private ``preview`` PUB socket, which the sink binds only
  when the run serves a web view (`run --web`, or `run --preview` for `facestream serve`): JPEGs at
  ``web.preview_fps`` per stream, and ``unknown_face`` records (best face of each unknown track, with its
  descriptor and 150x150 chip; see `sinks.web_feed.WebFeed`);
* health: the supervisor's stats board (`run --web`), or ``health.json`` the supervisor rewrites in its
  run directory every second (`serve`);
* the gallery: its SQLite file, opened here in one worker thread. The sink re-reads it every
  ``pipeline.gallery_refresh_s``, so an enrolment made on the page names the next events.
  Sample thumbnails are the gallery's own (`enroll.thumbnails`: ``<gallery>.thumbs/``, written at enrolment
  from a photo or from an unknown face's chip, deleted with the sample; 0700 folder, 0600 files: face images
  are biometric data).

Unknown faces are grouped with dlib's chinese whispers (`enroll.clustering.cluster_unknowns`) into
"unknown person 1, 2, ..." over the live tracks and any ``--unknowns`` files; a face that now matches
someone in the gallery is no longer shown.

Security: the server binds 127.0.0.1 by default. Any other address needs a token (``web.token``,
``FACESTREAM_WEB_TOKEN`` or ``--token``), checked on every request: ``Authorization: Bearer``, or the
cookie set by signing in at ``/login`` (where the page sends a browser without it). Requests that change
something must carry the ``X-Facestream`` header (a cross-site form or script cannot add it without a
CORS preflight, which is never granted), and on a loopback address the ``Host`` header must name that
address (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...enroll.store import POSITIVE
from ...errors import InputError
from ..config import Config

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
TOKEN_ENV = "FACESTREAM_WEB_TOKEN"
COOKIE = "facestream_token"
CHANGE_HEADER = "x-facestream"
MAX_UPLOAD_BYTES = 20 << 20
MAX_JSON_BYTES = 1 << 20  # the JSON endpoints' bodies (a name, a list of tracks)
MAX_FORM_BYTES = 4096  # the sign-in form
UPLOAD_TIMEOUT_S = 300.0  # an upload's analysis process is killed after this
MAX_TRACKS = 300  # live unknown tracks kept (the oldest ended ones go first)
FACES_PER_TRACK = 3
UNKNOWN = "unknown"
POLL_S = 0.1


class WebError(InputError, ValueError):
    """A web-view set-up problem with a clear message (bad address, a public address without a token...)."""


class BodyTooLargeError(InputError, ValueError):
    """A request body longer than its endpoint's limit (answered 413 before more of it is read)."""


async def read_body(receive: Any, headers: Any, limit: int, sink: Callable[[bytes], None] | None = None) -> bytes:
    """The request body read chunk by chunk, counting: BodyTooLargeError as soon as Content-Length or the bytes
    received pass `limit`, so a chunked upload without Content-Length is never held whole. With `sink`, each
    chunk goes there instead of into the returned bytes."""
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLargeError(f"the request body is larger than {limit:,} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLargeError("the client went away before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the request body is larger than {limit:,} bytes")
        if chunk:
            sink(chunk) if sink is not None else parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


# ------------------------------------------------------------------------------------------------
# address and token


def parse_address(text: str, default_port: int = 8080) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, HOST or :PORT -> (host, port); WebError when it is not one."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", text)
    if not match or not text:
        raise WebError(f"web address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = match.group(1) or match.group(3) or "127.0.0.1"
    port = int(match.group(2) or match.group(4) or default_port)
    if not 0 <= port <= 65535:
        raise WebError(f"web address {text!r}: port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(config: Config, given: str | None = None) -> str:
    """The token: `given` (--token), else $FACESTREAM_WEB_TOKEN, else web.token; "" for none."""
    return (given or os.environ.get(TOKEN_ENV) or str(config.web.token or "")).strip()


MIN_TOKEN_BITS = 56


def token_bits(token: str) -> float:
    """A rough strength figure: the token's length times the entropy of its characters' frequencies (bits).
    It cannot tell a random token from a clever guessable one, but it refuses "aaaaaaaaaaaaaaaa",
    "abababababababab" and other short runs that a length check alone accepts."""
    import math
    from collections import Counter

    counts = Counter(token)
    return -sum(n * math.log2(n / len(token)) for n in counts.values()) if token else 0.0


def check_binding(host: str, token: str) -> None:
    """Refuse to serve faces beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise WebError(
            f"refusing to serve the web view on {host} without a token: anyone who can reach it would see the "
            f"cameras and could change the gallery. Set {TOKEN_ENV} (or web.token, or --token), or serve on "
            "127.0.0.1 and reach it through an SSH tunnel"
        )
    if token and (len(token) < 16 or token_bits(token) < MIN_TOKEN_BITS):
        raise WebError(
            f"the web token is too short or too regular (about {token_bits(token):.0f} bits; at least "
            f"{MIN_TOKEN_BITS} needed): use at least 16 random characters, e.g. `openssl rand -hex 16`"
        )


# ------------------------------------------------------------------------------------------------
# live state: what the feed thread hears, what the pages read


@dataclass
class UnknownTrack:
    """An unknown track seen live: its best faces (by quality, then detector score) as the sink sent them."""

    stream_id: str
    track_id: int
    faces: list[dict[str, Any]] = field(default_factory=list)  # + "descriptor" (np), "chip" (PNG bytes | None)
    identity: str | None = None  # a name once the track is identified: then it is no longer unknown
    ended: bool = False
    updated: float = 0.0


class LiveState:
    """Thread-safe: events, the newest JPEG per stream, unknown tracks, health. Readers poll sequence numbers."""

    def __init__(self, history: int = 200) -> None:
        self.lock = threading.Lock()
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(1, history))
        self.event_seq = 0
        self.frames: dict[str, tuple[int, bytes, float]] = {}
        self.frame_seq = 0
        self.unknowns: OrderedDict[tuple[str, int], UnknownTrack] = OrderedDict()
        self.unknowns_rev = 0
        self.health: dict[str, Any] | None = None
        self.health_rev = 0
        self.gallery_rev = 0
        self.closed = False
        self.pipeline = True  # False: `serve` with no pipeline to attach to (gallery management only)

    # -- writers (the feed thread, the supervisor) -------------------------------------------------

    def add_event(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.event_seq += 1
            self.events.append((self.event_seq, record))
            kind, key = record.get("event"), (str(record.get("stream_id")), record.get("track_id"))
            track = self.unknowns.get(key) if isinstance(key[1], int) else None
            if track is not None and kind == "track_identified":
                identity = record.get("identity")
                track.identity = None if identity in (None, UNKNOWN) else str(identity)
                self.unknowns_rev += 1
            elif track is not None and kind == "track_ended":
                track.ended = True

    def add_frame(self, stream_id: str, jpeg: bytes) -> None:
        with self.lock:
            self.frame_seq += 1
            self.frames[stream_id] = (self.frame_seq, jpeg, time.time())

    def add_unknown_face(self, record: dict[str, Any]) -> None:
        """One ``unknown_face`` record from the sink; ValueError when it is malformed."""
        stream_id, track_id = record.get("stream_id"), record.get("track_id")
        if not isinstance(stream_id, str) or not isinstance(track_id, int) or isinstance(track_id, bool):
            raise ValueError("unknown_face: stream_id (text) and track_id (integer) are required")
        descriptor = np.asarray(record.get("descriptor"), np.float32)
        if descriptor.shape != (128,) or not np.all(np.isfinite(descriptor)):
            raise ValueError("unknown_face: descriptor must be 128 finite numbers")
        chip = record.get("chip_png")
        face = {
            "frame_index": int(record.get("frame_index", 0)),
            "timestamp": float(record.get("timestamp") or 0.0),
            "box": record.get("box"),
            "quality": float(record.get("quality") or 0.0),
            "score": float(record.get("score") or 0.0),
            "descriptor": descriptor,
            "chip": base64.b64decode(chip, validate=True) if isinstance(chip, str) else None,
        }
        with self.lock:
            key = (stream_id, track_id)
            track = self.unknowns.pop(key, None) or UnknownTrack(stream_id, track_id)
            self.unknowns[key] = track  # most recently updated last
            track.faces = [f for f in track.faces if f["frame_index"] != face["frame_index"]] + [face]
            track.faces.sort(key=lambda f: (-f["quality"], -f["score"], f["frame_index"]))
            del track.faces[FACES_PER_TRACK:]
            track.updated = time.time()
            while len(self.unknowns) > MAX_TRACKS:
                oldest = next((k for k, t in self.unknowns.items() if t.ended), next(iter(self.unknowns)))
                del self.unknowns[oldest]
            self.unknowns_rev += 1

    def set_health(self, snapshot: dict[str, Any]) -> None:
        with self.lock:
            self.health = snapshot
            self.health_rev += 1

    def gallery_changed(self) -> None:
        with self.lock:
            self.gallery_rev += 1
            self.unknowns_rev += 1

    def forget_tracks(self, keys: list[tuple[str, int]]) -> None:
        with self.lock:
            for key in keys:
                self.unknowns.pop(key, None)
            self.unknowns_rev += 1

    # -- readers --------------------------------------------------------------------------------

    def events_after(self, seq: int) -> list[tuple[int, dict[str, Any]]]:
        with self.lock:
            return [(s, e) for s, e in self.events if s > seq]

    def frame(self, stream_id: str) -> tuple[int, bytes, float] | None:
        with self.lock:
            return self.frames.get(stream_id)

    def streams(self) -> dict[str, float]:
        with self.lock:
            return {sid: when for sid, (_, _, when) in self.frames.items()}

    def unknown_tracks(self) -> list[UnknownTrack]:
        with self.lock:
            return [UnknownTrack(t.stream_id, t.track_id, list(t.faces), t.identity, t.ended, t.updated)
                    for t in self.unknowns.values()]  # fmt: skip

    def revisions(self) -> dict[str, int]:
        with self.lock:
            return {"events": self.event_seq, "frames": self.frame_seq, "unknowns": self.unknowns_rev,
                    "health": self.health_rev, "gallery": self.gallery_rev}  # fmt: skip


class Feed:
    """A thread that SUBscribes to the pipeline's ``events`` and ``preview`` endpoints and fills a LiveState;
    in `serve` mode it also reads the supervisor's ``health.json`` every second."""

    def __init__(self, state: LiveState, endpoints: dict[str, str], health_file: Path | None = None) -> None:
        self.state, self.endpoints, self.health_file = state, endpoints, health_file
        self.stopping = threading.Event()
        self.malformed = 0
        self.thread = threading.Thread(target=self._run, name="web feed", daemon=True)

    def start(self) -> Feed:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.ident is not None:
            self.thread.join(5)

    def _run(self) -> None:
        import zmq

        from ..runtime.stages import open_socket

        context = zmq.Context()
        sockets = []
        try:
            for name in ("events", "preview"):
                if name in self.endpoints:
                    sockets.append(open_socket(context, zmq.SUB, self.endpoints[name], bind=False, hwm=1000,
                                               subscribe=b""))  # fmt: skip
            poller = zmq.Poller()
            for sub in sockets:
                poller.register(sub, zmq.POLLIN)
            next_health = 0.0
            while not self.stopping.is_set():
                for sub, _ in poller.poll(200):
                    for _ in range(256):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                if self.health_file is not None and time.monotonic() >= next_health:
                    next_health = time.monotonic() + 1.0
                    self._read_health()
        except Exception:
            log.exception("web feed stopped")
        finally:
            for sub in sockets:
                sub.close(0)
            context.destroy(0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.malformed += 1
            return
        topic, payload = frames
        try:
            if topic.startswith(b"frame:"):
                self.state.add_frame(topic[6:].decode("utf-8", "replace"), payload)
            elif topic == b"unknown_face":
                self.state.add_unknown_face(json.loads(payload))
            else:
                record = json.loads(payload)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                self.state.add_event(record)
        except (ValueError, TypeError) as error:
            self.malformed += 1
            if self.malformed <= 5:
                log.warning("web feed: dropped a malformed %r message: %s", topic[:40], error)

    def _read_health(self) -> None:
        assert self.health_file is not None
        try:
            snapshot = json.loads(self.health_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(snapshot, dict) and snapshot != self.state.health:
            self.state.set_health(snapshot)


# ------------------------------------------------------------------------------------------------
# the gallery, in one worker thread


class GalleryService:
    """Gallery reads and changes for the page, all in one worker thread (one SQLite connection, in order)."""

    def __init__(self, config: Config, path: str | Path, state: LiveState) -> None:
        self.config, self.path, self.state = config, Path(path).expanduser().absolute(), state
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web gallery")
        self._gallery: Any = None
        self._upload_lock = asyncio.Lock()  # one upload analysed at a time (each may take ~2 GB)
        self.last_upload_rss_mb: float | None = None  # the last upload process's high-water mark

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def close(self) -> None:
        def shut() -> None:
            if self._gallery is not None:
                self._gallery.close()
                self._gallery = None

        self.executor.submit(shut).result(10)
        self.executor.shutdown(wait=True)

    # everything below runs in the worker thread

    def gallery(self) -> Any:
        from ...enroll.gallery import Gallery

        if self._gallery is None:
            self._gallery = Gallery.from_config(self.config.gallery, path=self.path, threads=1)
        else:
            self._gallery.refresh()
        return self._gallery

    def thumb(self, sample_id: int) -> bytes | None:
        if not self.path.is_file():
            return None
        return self.gallery().thumbnails.read(sample_id)  # only this database's (enroll/thumbnails.py)

    def people(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        gallery = self.gallery()
        listed = []
        for person in gallery.people():
            ids = gallery.store.sample_ids(person.name, POSITIVE).tolist()  # ids only: no descriptors read
            listed.append({"name": person.name, "samples": person.samples, "negatives": person.negatives,
                           "threshold": person.threshold, "created": person.created, "sample_ids": ids,
                           "thumbnails": gallery.thumbnails.available(ids)})  # fmt: skip
        return listed

    def rename(self, old: str, new: str) -> dict[str, Any]:
        self.gallery().rename_person(old, new)
        self.state.gallery_changed()
        return {"renamed": old, "to": new}

    def delete(self, name: str) -> dict[str, Any]:
        removed = self.gallery().remove_person(name)  # and the thumbnails of its samples
        self.state.gallery_changed()
        return {"deleted": name, "samples": removed}

    async def enrol_upload(self, name: str, path: Path, filename: str) -> dict[str, Any]:
        """One uploaded photo through the same checks as `facestream enroll add` (work budget before decoding,
        one face, size, sharpness), analysed and enrolled by `upload_worker` in a process of its own, one
        upload at a time: decoding and detection never take this process's memory. OSError when that process
        fails (killed, out of memory, timed out)."""
        import sys

        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "upload").name)[:80] or "upload"
        photo = path.with_name(safe if safe != path.name else "upload")
        path.rename(photo)  # the worker reports the photo by its upload name, never by the temporary path
        request = json.dumps({"config": self.config.to_dict(), "gallery": str(self.path), "name": name,
                              "photo": str(photo), "display": safe}, default=str).encode()  # fmt: skip
        async with self._upload_lock:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "facestream.pipeline.web.upload_worker", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                out, err = await asyncio.wait_for(process.communicate(request), UPLOAD_TIMEOUT_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
                took = f"analysing the photo took longer than {UPLOAD_TIMEOUT_S:.0f} s; it was stopped"
                raise OSError(took) from None
        try:
            reply = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            reply = {}
        self.last_upload_rss_mb = reply.get("max_rss_mb")
        if "report" not in reply:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
            if process.returncode is not None and process.returncode < 0:
                tail = [f"killed by signal {-process.returncode} (out of memory?)"]
            log.warning("upload for %r: the analysis process failed: %s", name, tail[0])
            raise OSError(f"the photo could not be analysed: {reply.get('error') or tail[0]}")
        if reply["report"]["status"] == "added":
            self.state.gallery_changed()
        return reply["report"]

    def enrol_faces(self, name: str, faces: list[dict[str, Any]], force: bool = False) -> dict[str, Any]:
        """Unknown faces (dicts with descriptor, chip, stream_id, track_id, frame_index, box, quality) as samples
        of `name`. Unless `force`, nothing is written when a face now matches someone else (ValueError)."""
        if not faces:
            raise ValueError("no face to enrol (faces below the quality gate are never enrolled)")
        gallery = self.gallery()
        descriptors = np.stack([np.asarray(f["descriptor"], np.float32) for f in faces])
        matches = gallery.identify(descriptors)
        others = sorted({i for i in matches.identities if i not in (UNKNOWN, name)})
        if others and not force:
            raise ValueError(f"some of these faces match {', '.join(others)} in the gallery: check them, or force")
        ids = gallery.add_samples(
            name, descriptors,
            sources=[f"web:{f['stream_id']}#track{f['track_id']}@frame{f['frame_index']}" for f in faces],
            boxes=[f.get("box") for f in faces],
            quality=[{"weight": f.get("quality"), "score": f.get("score")} for f in faces],
            metadata={"enrolled_from": "web"},
        )  # fmt: skip
        for sample_id, face in zip(ids.tolist(), faces):
            if face.get("chip"):
                gallery.thumbnails.save(int(sample_id), face["chip"])
        self.state.gallery_changed()
        return {"name": name, "added": len(ids), "sample_ids": [int(i) for i in ids], "matched_others": others}

    def known(self, descriptors: np.ndarray) -> list[str]:
        """Who each descriptor matches in the gallery now ("unknown" for nobody)."""
        if not len(descriptors) or not self.path.is_file():
            return [UNKNOWN] * len(descriptors)
        return list(self.gallery().identify(np.asarray(descriptors, np.float32)).identities)


# ------------------------------------------------------------------------------------------------
# unknown people: live tracks and --unknowns files, clustered


class UnknownPeople:
    """The unknown faces to show: live tracks not identified since, plus faces from --unknowns files (not
    those the live feed already has), less faces that match someone in the gallery now; clustered."""

    def __init__(self, state: LiveState, gallery: GalleryService, files: list[Path], threshold: float) -> None:
        self.state, self.gallery, self.files, self.threshold = state, gallery, files, threshold
        self._file_faces: tuple[tuple[float, ...], list[dict[str, Any]]] = ((), [])

    def _from_files(self) -> list[dict[str, Any]]:
        from ..domain.unknowns import UnknownsFileError, read_unknowns

        existing = [p for p in self.files if p.is_file()]
        stamp = tuple(p.stat().st_mtime for p in existing)
        if stamp == self._file_faces[0]:
            return self._file_faces[1]
        try:
            report = read_unknowns(existing) if existing else None
        except UnknownsFileError as error:
            log.warning("%s", error)
            return self._file_faces[1]
        faces = []
        for face in report.faces if report else []:
            if face.weight is not None and face.weight <= 0:
                continue
            chip = None
            if face.chip:
                try:
                    chip = Path(face.chip).read_bytes()
                except OSError:
                    chip = None
            faces.append({"stream_id": face.stream_id, "track_id": face.track_id, "frame_index": face.frame_index,
                          "timestamp": face.timestamp, "box": None if face.box is None else list(face.box),
                          "quality": face.weight, "score": face.score, "descriptor": face.descriptor,
                          "chip": chip, "ended": True, "origin": "file"})  # fmt: skip
        self._file_faces = (stamp, faces)
        return faces

    def faces(self) -> list[dict[str, Any]]:
        """Every face to consider, each with its track's key; runs in the gallery thread."""
        faces: list[dict[str, Any]] = []
        live_keys = set()
        for track in self.state.unknown_tracks():
            if track.identity is not None:
                continue
            for face in track.faces:
                live_keys.add((track.stream_id, track.track_id, face["frame_index"]))
                faces.append({**face, "stream_id": track.stream_id, "track_id": track.track_id,
                              "ended": track.ended, "origin": "live"})  # fmt: skip
        faces += [f for f in self._from_files() if (f["stream_id"], f["track_id"], f["frame_index"]) not in live_keys]
        if faces:
            known = self.gallery.known(np.stack([f["descriptor"] for f in faces]))
            faces = [f for f, who in zip(faces, known) if who == UNKNOWN]
        return faces

    def listing(self) -> dict[str, Any]:
        """Clusters as JSON-ready dicts: "unknown person N" with its tracks (each a snapshot), most tracks first."""
        from ...enroll.clustering import UnknownFace, cluster_unknowns

        faces = self.faces()
        records = [UnknownFace(descriptor=f["descriptor"], stream_id=f["stream_id"], frame_index=f["frame_index"],
                               timestamp=f["timestamp"], track_id=f["track_id"],
                               box=None if f["box"] is None else tuple(f["box"]), score=f["score"],
                               weight=f["quality"]) for f in faces]  # fmt: skip
        clusters = cluster_unknowns(records, self.threshold) if records else []
        out = []
        for cluster in clusters:
            tracks: dict[tuple[str, int], dict[str, Any]] = {}
            for i in cluster.faces:
                face = faces[i]
                key = (face["stream_id"], face["track_id"])
                entry = tracks.setdefault(key, {"stream_id": key[0], "track_id": key[1], "faces": 0,
                                                "first_frame": face["frame_index"], "last_frame": face["frame_index"],
                                                "timestamp": face["timestamp"], "chip_frame": None,
                                                "best_quality": -1.0, "ended": face["ended"],
                                                "origin": face["origin"]})  # fmt: skip
                entry["faces"] += 1
                entry["first_frame"] = min(entry["first_frame"], face["frame_index"])
                entry["last_frame"] = max(entry["last_frame"], face["frame_index"])
                quality = face["quality"] or 0.0
                if face["chip"] is not None and quality > entry["best_quality"]:
                    entry["chip_frame"], entry["best_quality"] = face["frame_index"], quality
            for entry in tracks.values():
                entry["chip"] = (f"api/unknowns/chip/{entry['stream_id']}/{entry['track_id']}/{entry['chip_frame']}"
                                 if entry["chip_frame"] is not None else None)  # fmt: skip
                del entry["best_quality"], entry["chip_frame"]
            out.append({"number": cluster.number, "label": cluster.label, "id": cluster.key(records),
                        "faces": len(cluster.faces), "tracks": list(tracks.values())})  # fmt: skip
        return {"clusters": out, "threshold": self.threshold}

    def chip(self, stream_id: str, track_id: int, frame_index: int) -> bytes | None:
        for track in self.state.unknown_tracks():
            if (track.stream_id, track.track_id) == (stream_id, track_id):
                for face in track.faces:
                    if face["frame_index"] == frame_index:
                        return face["chip"]
        for face in self._file_faces[1]:
            if (face["stream_id"], face["track_id"], face["frame_index"]) == (stream_id, track_id, frame_index):
                return face["chip"]
        return None

    def enrol(self, name: str, tracks: list[tuple[str, int]], force: bool = False) -> dict[str, Any]:
        """Every shown face of these tracks as samples of `name`; the tracks leave the unknown list."""
        wanted = set(tracks)
        faces = [f for f in self.faces() if (f["stream_id"], f["track_id"]) in wanted]
        if not faces:
            raise LookupError("none of these tracks has an unknown face to enrol (already enrolled or matched?)")
        result = self.gallery.enrol_faces(name, faces, force)
        self.state.forget_tracks(sorted(wanted))
        return {**result, "tracks": len({(f["stream_id"], f["track_id"]) for f in faces})}


# ------------------------------------------------------------------------------------------------
# the HTTP app


class Guard:
    """ASGI middleware: the token on every request (when set), the Host header on loopback, and the
    X-Facestream header on every request that changes something."""

    def __init__(self, app: Any, token: str, hosts: set[str] | None) -> None:
        self.app, self.token, self.hosts = app, token, hosts
        self.failures: dict[str, deque[float]] = {}  # client address -> times of its wrong tokens

    def _limited(self, client: str) -> float:
        """Seconds until `client` may try a token again (0: now): at most FAILURES_ALLOWED wrong tokens a
        FAILURE_WINDOW_S, so a token cannot be guessed by trying."""
        times = self.failures.get(client)
        now = time.monotonic()
        while times and times[0] < now - FAILURE_WINDOW_S:
            times.popleft()
        if times is not None and not times:
            del self.failures[client]
            return 0.0
        return FAILURE_WINDOW_S - (now - times[0]) if times and len(times) >= FAILURES_ALLOWED else 0.0

    def _failed(self, client: str) -> None:
        if len(self.failures) > 10_000:  # bounded: forget the oldest clients
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(client, deque()).append(time.monotonic())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self._guarded(scope, receive, send_with_headers)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.requests import Request
        from starlette.responses import JSONResponse, RedirectResponse

        headers = Headers(scope=scope)
        if self.hosts is not None and headers.get("host", "").lower() not in self.hosts:
            await JSONResponse({"error": "unknown Host header"}, status_code=421)(scope, receive, send)
            return
        if self.token:
            request = Request(scope, receive)
            client = (scope.get("client") or ("?", 0))[0]
            wait = self._limited(client)
            if wait:
                text = f"too many wrong tokens from {client}: try again in {wait:.0f} s"
                await JSONResponse({"error": text}, status_code=429, headers={"Retry-After": str(int(wait) + 1)})(
                    scope, receive, send
                )
                return
            if scope["path"] == "/login":
                await self._login(request, send, client)
                return
            bearer = headers.get("authorization", "")
            given = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if given and not hmac.compare_digest(given.encode(), self.token.encode()):
                self._failed(client)
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                if scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):  # a person at the page: the form
                    await RedirectResponse("/login", status_code=303)(scope, receive, send)
                    return
                text = "a token is required: sign in at /login once, or send Authorization: Bearer <token>"
                await JSONResponse({"error": text}, status_code=401)(scope, receive, send)
                return
        if scope["method"] not in ("GET", "HEAD") and CHANGE_HEADER not in headers:
            await JSONResponse({"error": f"changes need the {CHANGE_HEADER} header"}, status_code=403)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    async def _login(self, request: Any, send: Any, client: str) -> None:
        """GET: the sign-in form (or ``?token=`` for scripts); POST (the form): the token. Right: a cookie
        (HttpOnly, SameSite=Strict) and back to the page; wrong: 401 and the form again."""
        from urllib.parse import parse_qs

        from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

        given = request.query_params.get("token")
        if request.method == "POST":
            try:
                body = await read_body(request.receive, request.headers, MAX_FORM_BYTES)
            except BodyTooLargeError as problem:
                await JSONResponse({"error": str(problem)}, status_code=413)(request.scope, request.receive, send)
                return
            given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0]
        if given is None:  # GET without a token: show the form
            await HTMLResponse(LOGIN_PAGE.format(message=""))(request.scope, request.receive, send)
            return
        if hmac.compare_digest(given.strip().encode(), self.token.encode()):
            response: Any = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        else:
            self._failed(client)
            response = HTMLResponse(LOGIN_PAGE.format(message="<p class=error>Wrong token.</p>"), status_code=401)
        await response(request.scope, request.receive, send)


FAILURES_ALLOWED = 10  # wrong tokens from one client address ...
FAILURE_WINDOW_S = 60.0  # ... within this many seconds; then 429 until the oldest is this old
# Every response: never framed by another site (clickjacking), scripts and styles from this server only
# (the page and the sign-in form use an inline <style>), no MIME sniffing, no Referer with the URL.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facestream: sign in</title>
<style>body{{font:15px system-ui,sans-serif;margin:4em auto;max-width:26em}}.error{{color:#b22}}</style></head>
<body><h1>facestream</h1>{message}<form method="post" action="/login">
<label>Token <input type="password" name="token" autofocus required autocomplete="current-password"></label>
<button type="submit">Sign in</button></form>
<p>The token is the one the server was started with ($FACESTREAM_WEB_TOKEN, web.token or --token).</p>
</body></html>"""


def _summary_health(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """The page's health table: per stage rate, latency p50/p99, queue, drops; per stream counts."""
    if not snapshot:
        return None
    main_latency = {"source": "frame", "detect": "detect", "embed": "embed_face", "sink": "capture_to_result"}
    stages = {}
    for role, info in (snapshot.get("stages") or {}).items():
        latency = info.get("latency", {})
        name = main_latency.get(role)
        figures = latency.get(name) or (latency.get("process") if role == "sink" else None)
        counters = info.get("counters", {})
        stages[role] = {"processes": info.get("processes"), "per_second": info.get("recent_per_second"),
                        "unit": info.get("unit"), "total": info.get("total"),
                        "latency": None if not figures else {"name": name if latency.get(name) else "process",
                                                             "p50_ms": figures.get("p50_ms"),
                                                             "p99_ms": figures.get("p99_ms")},
                        "queue": info.get("queue_depth"),
                        "drops": {k: counters[k] for k in ("malformed", "duplicates", "late", "stale",
                                                           "preview_dropped") if counters.get(k)}}  # fmt: skip
    streams = {sid: {k: v for k, v in info.items() if isinstance(v, int | float | str | bool)}
               for sid, info in (snapshot.get("streams") or {}).items()}  # fmt: skip
    return {"time": snapshot.get("time"), "elapsed_s": snapshot.get("elapsed_s"), "stages": stages,
            "streams": streams, "processes": snapshot.get("processes", [])}  # fmt: skip


def create_app(state: LiveState, gallery: GalleryService, unknowns: UnknownPeople, *, token: str = "",
               hosts: set[str] | None = None, history: int = 200,
               metrics: Callable[[], dict[str, Any] | None] | None = None) -> Any:  # fmt: skip
    """The Starlette app (wrapped in `Guard`). ``/metrics``: Prometheus text of `metrics()` (the supervisor's
    figures), else of the health snapshot (`facestream serve`)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(status: int, text: str) -> JSONResponse:
        return JSONResponse({"error": text}, status_code=status)

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def script(_: Request) -> Response:
        return FileResponse(STATIC / "app.js", media_type="text/javascript", headers={"Cache-Control": "no-store"})

    async def recent_events(request: Request) -> Response:
        after = request.query_params.get("after", "0") or "0"
        if not after.isdigit():
            return error(400, "after: expected an event number (a non-negative integer)")
        return JSONResponse([{"seq": s, **e} for s, e in state.events_after(int(after))])

    async def health(_: Request) -> Response:
        return JSONResponse({"health": _summary_health(state.health), "raw": state.health,
                             "pipeline": state.pipeline})  # fmt: skip

    async def streams(_: Request) -> Response:
        return JSONResponse({sid: {"last_frame": when} for sid, when in state.streams().items()})

    async def live(request: Request) -> Response:
        """Server-sent events: every pipeline event ("fs-event"), and "health", "unknowns", "gallery",
        "streams" when those change."""

        async def stream() -> AsyncIterator[bytes]:
            def message(kind: str, data: Any, seq: int | None = None) -> bytes:
                head = f"id: {seq}\n" if seq is not None else ""
                return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

            last_id = request.headers.get("last-event-id", "")
            seq = int(last_id) if last_id.isdigit() else 0
            seen = {"health": -1, "unknowns": -1, "gallery": -1}
            stream_ids: list[str] = []
            quiet_since = time.monotonic()
            yield b"retry: 1000\n\n"
            yield message("mode", {"pipeline": state.pipeline})  # the page's badge: live, or gallery only
            while not state.closed:
                sent = False
                for event_seq, record in state.events_after(seq)[-history:]:
                    seq = event_seq
                    yield message("fs-event", record, event_seq)
                    sent = True
                revisions = state.revisions()
                if revisions["health"] != seen["health"]:
                    seen["health"] = revisions["health"]
                    yield message("health", _summary_health(state.health))
                    sent = True
                for kind in ("unknowns", "gallery"):
                    if revisions[kind] != seen[kind]:
                        seen[kind] = revisions[kind]
                        yield message(kind, revisions[kind])
                        sent = True
                current = sorted(state.streams())
                if current != stream_ids:
                    stream_ids = current
                    yield message("streams", current)
                    sent = True
                if sent:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 15:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                await asyncio.sleep(POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

    async def mjpeg(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        if state.frame(stream_id) is None:
            return error(404, f"no frames from stream {stream_id!r} (yet)")

        async def frames() -> AsyncIterator[bytes]:
            last = -1
            while not state.closed:
                current = state.frame(stream_id)
                if current is not None and current[0] != last:
                    last, jpeg = current[0], current[1]
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                           + b"\r\n\r\n" + jpeg + b"\r\n")  # fmt: skip
                await asyncio.sleep(0.05)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    async def snapshot(request: Request) -> Response:
        current = state.frame(request.path_params["stream_id"])
        if current is None:
            return error(404, "no frame from this stream (yet)")
        return Response(current[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def people(_: Request) -> Response:
        return JSONResponse({"people": await gallery.call(gallery.people), "gallery": str(gallery.path)})

    async def thumb(request: Request) -> Response:
        data = await gallery.call(gallery.thumb, int(request.path_params["sample_id"]))
        if data is None:
            return error(404, "no thumbnail for this sample")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def gallery_change(function: Callable[..., Any], *args: Any) -> Response:
        from ...enroll.store import DuplicatePersonError, GalleryError, UnknownPersonError

        try:
            return JSONResponse(await gallery.call(function, *args))
        except (GalleryError, ValueError, KeyError) as problem:
            status = 404 if isinstance(problem, UnknownPersonError) else 400
            if isinstance(problem, DuplicatePersonError) or "match" in str(problem):
                status = 409  # a name taken; faces that match someone else (the page offers to force)
            return error(status, str(problem.args[0] if problem.args else problem))

    async def json_body(request: Request) -> dict[str, Any]:
        """The JSON object of a request, at most MAX_JSON_BYTES (BodyTooLargeError beyond)."""
        raw = await read_body(request.receive, request.headers, MAX_JSON_BYTES)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        return body

    async def rename(request: Request) -> Response:
        try:
            new = str((await json_body(request)).get("name") or "").strip()
        except BodyTooLargeError as problem:
            return error(413, str(problem))
        except ValueError as problem:
            return error(400, str(problem))
        return await gallery_change(gallery.rename, request.path_params["name"], new)

    async def delete(request: Request) -> Response:
        return await gallery_change(gallery.delete, request.path_params["name"])

    async def upload(request: Request) -> Response:
        """The photo is streamed to a private temporary file (413 past MAX_UPLOAD_BYTES, never held whole) and
        analysed in a process of its own (`upload_worker`): the server never decodes it."""
        name = request.path_params["name"].strip()
        with tempfile.TemporaryDirectory(prefix="facestream-upload-") as folder:  # 0700
            path = Path(folder) / "photo"
            try:
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                    await read_body(request.receive, request.headers, MAX_UPLOAD_BYTES, handle.write)
            except BodyTooLargeError:
                return error(413, f"the photo is larger than {MAX_UPLOAD_BYTES >> 20} MB")
            if path.stat().st_size == 0:
                return error(400, "send the photo's bytes as the request body")
            try:
                report = await gallery.enrol_upload(name, path, request.headers.get("x-filename", "upload"))
            except (ValueError, OSError) as problem:
                return error(400 if isinstance(problem, ValueError) else 503, str(problem))
        return JSONResponse(report, status_code=200 if report["status"] == "added" else 422)

    async def unknown_list(_: Request) -> Response:
        return JSONResponse(await gallery.call(unknowns.listing))

    async def unknown_chip(request: Request) -> Response:
        params = request.path_params
        data = unknowns.chip(params["stream_id"], int(params["track_id"]), int(params["frame_index"]))
        if data is None:
            return error(404, "no snapshot of this face")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def unknown_enrol(request: Request) -> Response:
        try:
            body = await json_body(request)
            name = str(body.get("name") or "").strip()
            tracks = [(str(t[0]), int(t[1])) for t in body.get("tracks") or []]
        except BodyTooLargeError as problem:
            return error(413, str(problem))
        except (ValueError, TypeError, IndexError) as problem:
            return error(400, f'expected {{"name": ..., "tracks": [[stream_id, track_id], ...]}}: {problem}')
        if not name or not tracks:
            return error(400, "a name and at least one track are needed")
        try:
            return await gallery_change(unknowns.enrol, name, tracks, bool(body.get("force")))
        except LookupError as problem:
            return error(404, str(problem))

    async def metrics_text(_: Request) -> Response:
        from ..integrations.metrics import CONTENT_TYPE, render

        return Response(render(metrics() if metrics is not None else state.health), media_type=CONTENT_TYPE)

    routes = [
        Route("/", page),
        Route("/metrics", metrics_text),
        Route("/app.js", script),
        Route("/api/live", live),
        Route("/api/events", recent_events),
        Route("/api/health", health),
        Route("/api/streams", streams),
        Route("/api/streams/{stream_id}/video", mjpeg),
        Route("/api/streams/{stream_id}/frame.jpg", snapshot),
        Route("/api/people", people),
        # {name:path}: a name may hold "/" (sent as %2F, which the server decodes before routing)
        Route("/api/people/{name:path}/rename", rename, methods=["POST"]),
        Route("/api/people/{name:path}/photos", upload, methods=["POST"]),
        Route("/api/people/{name:path}", delete, methods=["DELETE"]),
        Route("/api/thumbnails/{sample_id:int}", thumb),
        Route("/api/unknowns", unknown_list),
        Route("/api/unknowns/chip/{stream_id}/{track_id:int}/{frame_index:int}", unknown_chip),
        Route("/api/unknowns/enrol", unknown_enrol, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), token, hosts)


# ------------------------------------------------------------------------------------------------
# the server


class WebServer:
    """The web view on one address: the feed thread, the gallery thread and uvicorn (in a thread, or in the
    foreground with `serve_forever`)."""

    def __init__(self, config: Config, endpoints: dict[str, str], *, address: str | None = None,
                 token: str | None = None, gallery: str | Path | None = None, unknowns: list[str] | None = None,
                 health_file: Path | None = None) -> None:  # fmt: skip
        self.host, self.port = parse_address(address or str(config.web.address))
        self.token = resolve_token(config, token)
        check_binding(self.host, self.token)
        self.state = LiveState(int(config.web.history))
        self.state.pipeline = bool(endpoints) or health_file is not None
        self.gallery = GalleryService(config, gallery or config.gallery.path, self.state)
        self.unknowns = UnknownPeople(self.state, self.gallery, [Path(p) for p in unknowns or []],
                                      float(config.gallery.distance_threshold))  # fmt: skip
        self.feed = Feed(self.state, endpoints, health_file)
        self.socket: socket.socket | None = None
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.metrics: Callable[[], dict[str, Any] | None] | None = None  # /metrics source (set by the supervisor)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise WebError(f"cannot serve the web view on {self.host}:{self.port}: {error.strerror or error}") from None
        sock.listen(64)
        self.port = sock.getsockname()[1]  # port 0: the one the system chose
        return sock

    def _server(self) -> Any:
        import uvicorn

        hosts = None
        if is_loopback(self.host):
            names = {self.host, "localhost", "127.0.0.1", "[::1]"}
            hosts = {f"{name}:{self.port}" for name in names}
        app = create_app(self.state, self.gallery, self.unknowns, token=self.token, hosts=hosts,
                         history=int(self.state.events.maxlen or 200), metrics=self.metrics)  # fmt: skip
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)  # fmt: skip
        return uvicorn.Server(config)

    def start(self) -> str:
        """Bind (WebError when the address cannot be used) and serve in background threads; the URL."""
        self.socket = self._bind()
        self.feed.start()
        self.server = self._server()
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="web view",
                                       daemon=True)  # fmt: skip
        self.thread.start()
        return self.url

    def serve_forever(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve until Ctrl-C or SIGTERM, then stop cleanly (open pages are disconnected, the gallery closed)."""
        import signal

        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            url = self.start()
            if announce is not None:
                announce(url)
            while not stop.is_set() and self.thread is not None and self.thread.is_alive():
                stop.wait(0.5)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def set_health(self, snapshot: dict[str, Any]) -> None:
        self.state.set_health(snapshot)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.state.closed = True
        if self.thread is not None:
            self.thread.join(5)
        self._close()

    def _close(self) -> None:
        if self.state.closed and self.socket is None:
            return
        self.state.closed = True
        self.feed.stop()
        self.gallery.close()
        if self.socket is not None:
            self.socket.close()
            self.socket = None


__all__ = ["LiveState", "WebError", "WebServer", "check_binding", "create_app", "parse_address", "resolve_token"]
