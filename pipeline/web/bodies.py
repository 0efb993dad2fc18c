"""Request bodies read within their endpoint's limit (never held whole past it), and the JSON error reply."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import InputError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse

MAX_UPLOAD_BYTES = 20 << 20
MAX_JSON_BYTES = 1 << 20  # the JSON endpoints' bodies (a name, a list of tracks)
MAX_FORM_BYTES = 4096  # the sign-in form


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


def error(status: int, text: str) -> JSONResponse:
    """The reply to a request that cannot be served: ``{"error": text}`` with `status`."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": text}, status_code=status)
