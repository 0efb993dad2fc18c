"""The gallery for the web view, in one worker thread (one SQLite connection, in order): listing, thumbnails,
rename, delete, enrolment of unknown faces, and uploads analysed in a process of their own."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...enroll.records import POSITIVE
from ..config import Config
from .live import UNKNOWN, LiveState

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT_S = 300.0  # an upload's analysis process is killed after this


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
