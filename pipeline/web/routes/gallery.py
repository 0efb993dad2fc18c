"""The gallery's endpoints: ``/api/people`` (list), rename, delete, photo uploads and sample thumbnails."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bodies import MAX_UPLOAD_BYTES, BodyTooLargeError, error, json_body, read_body
from ..gallery_service import GalleryService

if TYPE_CHECKING:
    from starlette.responses import Response


async def gallery_change(gallery: GalleryService, function: Callable[..., Any], *args: Any) -> Response:
    """`function(*args)` in the gallery thread, its result as JSON; the gallery's refusals as 404 (no such
    person), 409 (a name taken, or faces that match someone else: the page offers to force) or 400."""
    from starlette.responses import JSONResponse

    from ....enroll.records import DuplicatePersonError, UnknownPersonError
    from ....errors import GalleryError

    try:
        return JSONResponse(await gallery.call(function, *args))
    except (GalleryError, ValueError, KeyError) as problem:
        status = 404 if isinstance(problem, UnknownPersonError) else 400
        if isinstance(problem, DuplicatePersonError) or "match" in str(problem):
            status = 409  # a name taken; faces that match someone else (the page offers to force)
        return error(status, str(problem.args[0] if problem.args else problem))


def gallery_routes(gallery: GalleryService) -> list[Any]:
    """``/api/people`` and its changes, ``/api/thumbnails/{sample_id}``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def people(_: Request) -> Response:
        return JSONResponse({"people": await gallery.call(gallery.people), "gallery": str(gallery.path)})

    async def thumb(request: Request) -> Response:
        data = await gallery.call(gallery.thumb, int(request.path_params["sample_id"]))
        if data is None:
            return error(404, "no thumbnail for this sample")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def rename(request: Request) -> Response:
        try:
            new = str((await json_body(request)).get("name") or "").strip()
        except BodyTooLargeError as problem:
            return error(413, str(problem))
        except ValueError as problem:
            return error(400, str(problem))
        return await gallery_change(gallery, gallery.rename, request.path_params["name"], new)

    async def delete(request: Request) -> Response:
        return await gallery_change(gallery, gallery.delete, request.path_params["name"])

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

    return [
        Route("/api/people", people),
        # {name:path}: a name may hold "/" (sent as %2F, which the server decodes before routing)
        Route("/api/people/{name:path}/rename", rename, methods=["POST"]),
        Route("/api/people/{name:path}/photos", upload, methods=["POST"]),
        Route("/api/people/{name:path}", delete, methods=["DELETE"]),
        Route("/api/thumbnails/{sample_id:int}", thumb),
    ]
