"""Events: ``/api/events`` (the recent ones after a number) and ``/api/live``, the server-sent events stream the
page listens to."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..bodies import error
from ..live import LiveState
from .health import summary_health

POLL_S = 0.1


def sse_message(kind: str, data: Any, seq: int | None = None) -> bytes:
    """One server-sent event: `kind` with `data` as JSON, and its id when it has one."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def live_messages(state: LiveState, history: int, last_id: str) -> AsyncIterator[bytes]:
    """Every pipeline event after `last_id` ("fs-event", at most `history` at once), and "health", "unknowns",
    "gallery", "streams" when those change; a keep-alive comment after 15 quiet seconds; until the server
    closes."""
    seq = int(last_id) if last_id.isdigit() else 0
    seen = {"health": -1, "unknowns": -1, "gallery": -1}
    stream_ids: list[str] = []
    quiet_since = time.monotonic()
    yield b"retry: 1000\n\n"
    yield sse_message("mode", {"pipeline": state.pipeline})  # the page's badge: live, or gallery only
    while not state.closed:
        sent = False
        for event_seq, record in state.events_after(seq)[-history:]:
            seq = event_seq
            yield sse_message("fs-event", record, event_seq)
            sent = True
        revisions = state.revisions()
        if revisions["health"] != seen["health"]:
            seen["health"] = revisions["health"]
            yield sse_message("health", summary_health(state.health))
            sent = True
        for kind in ("unknowns", "gallery"):
            if revisions[kind] != seen[kind]:
                seen[kind] = revisions[kind]
                yield sse_message(kind, revisions[kind])
                sent = True
        current = sorted(state.streams())
        if current != stream_ids:
            stream_ids = current
            yield sse_message("streams", current)
            sent = True
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 15:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(POLL_S)


def event_routes(state: LiveState, history: int) -> list[Any]:
    """``/api/live`` and ``/api/events``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def recent_events(request: Request) -> Response:
        after = request.query_params.get("after", "0") or "0"
        if not after.isdigit():
            return error(400, "after: expected an event number (a non-negative integer)")
        return JSONResponse([{"seq": s, **e} for s, e in state.events_after(int(after))])

    async def live(request: Request) -> Response:
        """Server-sent events (`live_messages`), resumed after the Last-Event-ID a reconnecting page sends."""
        messages = live_messages(state, history, request.headers.get("last-event-id", ""))
        return StreamingResponse(messages, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

    return [Route("/api/live", live), Route("/api/events", recent_events)]
