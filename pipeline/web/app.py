"""The web view: live annotated streams, events, per-stage health and gallery management in a browser.
This module assembles its app (`create_app`) from the route modules in `routes/`.

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

The modules: `server.py` (WebServer: address, threads, uvicorn), `address.py` (address and token checks),
`guard.py` (token, Host and change headers; security headers), `bodies.py` (request bodies within limits),
`live.py` (LiveState), `feed.py` (the feed thread), `gallery_service.py` (the gallery thread and uploads),
`unknown_people.py` (unknown faces clustered), `routes/` (the endpoints), `upload_worker.py` (one upload's
analysis process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .gallery_service import GalleryService
from .guard import Guard
from .live import LiveState
from .routes.events import event_routes
from .routes.gallery import gallery_routes
from .routes.health import health_routes
from .routes.pages import page_routes
from .routes.streams import stream_routes
from .routes.unknowns import unknown_routes
from .unknown_people import UnknownPeople


def create_app(state: LiveState, gallery: GalleryService, unknowns: UnknownPeople, *, token: str = "",
               hosts: set[str] | None = None, history: int = 200,
               metrics: Callable[[], dict[str, Any] | None] | None = None) -> Any:  # fmt: skip
    """The Starlette app (wrapped in `Guard`). ``/metrics``: Prometheus text of `metrics()` (the supervisor's
    figures), else of the health snapshot (`facestream serve`)."""
    from starlette.applications import Starlette

    routes = [
        *page_routes(),
        *health_routes(state, metrics),
        *event_routes(state, history),
        *stream_routes(state),
        *gallery_routes(gallery),
        *unknown_routes(gallery, unknowns),
    ]
    return Guard(Starlette(routes=routes), token, hosts)
