"""Unknown people: ``/api/unknowns`` (the clusters), a face's snapshot, and enrolling tracks under a name."""

from __future__ import annotations

from typing import Any

from ..bodies import BodyTooLargeError, error, json_body
from ..gallery_service import GalleryService
from ..unknown_people import UnknownPeople
from .gallery import gallery_change


def unknown_routes(gallery: GalleryService, unknowns: UnknownPeople) -> list[Any]:
    """``/api/unknowns``, ``/api/unknowns/chip/...`` and ``/api/unknowns/enrol``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

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
            return await gallery_change(gallery, unknowns.enrol, name, tracks, bool(body.get("force")))
        except LookupError as problem:
            return error(404, str(problem))

    return [
        Route("/api/unknowns", unknown_list),
        Route("/api/unknowns/chip/{stream_id}/{track_id:int}/{frame_index:int}", unknown_chip),
        Route("/api/unknowns/enrol", unknown_enrol, methods=["POST"]),
    ]
