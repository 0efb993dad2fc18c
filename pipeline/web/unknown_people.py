"""The unknown people the page shows: live tracks and --unknowns files, less faces the gallery now knows,
clustered with dlib's chinese whispers into "unknown person 1, 2, ..."."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .gallery_service import GalleryService
from .live import UNKNOWN, LiveState

log = logging.getLogger(__name__)


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
