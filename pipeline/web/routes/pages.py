"""The page itself: ``/`` (index.html) and ``/app.js`` from `pipeline/web/static/`, never cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent.parent / "static"


def page_routes() -> list[Any]:
    """``/`` and ``/app.js``."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Route

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def script(_: Request) -> Response:
        return FileResponse(STATIC / "app.js", media_type="text/javascript", headers={"Cache-Control": "no-store"})

    return [Route("/", page), Route("/app.js", script)]
