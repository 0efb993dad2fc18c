"""The streams' annotated frames: ``/api/streams`` (which streams, when their last frame came), each stream's
MJPEG video and its newest frame as one JPEG."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..bodies import error
from ..live import LiveState


def stream_routes(state: LiveState) -> list[Any]:
    """``/api/streams``, ``/api/streams/{stream_id}/video`` and ``/api/streams/{stream_id}/frame.jpg``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def streams(_: Request) -> Response:
        return JSONResponse({sid: {"last_frame": when} for sid, when in state.streams().items()})

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

    return [
        Route("/api/streams", streams),
        Route("/api/streams/{stream_id}/video", mjpeg),
        Route("/api/streams/{stream_id}/frame.jpg", snapshot),
    ]
