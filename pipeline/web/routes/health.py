"""Health and metrics: ``/api/health`` (the page's health table and the raw snapshot) and ``/metrics``
(Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..live import LiveState


def summary_health(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
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


def health_routes(state: LiveState, metrics: Callable[[], dict[str, Any] | None] | None) -> list[Any]:
    """``/api/health`` and ``/metrics``: Prometheus text of `metrics()` (the supervisor's figures), else of the
    health snapshot (`facestream serve`)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def health(_: Request) -> Response:
        return JSONResponse({"health": summary_health(state.health), "raw": state.health,
                             "pipeline": state.pipeline})  # fmt: skip

    async def metrics_text(_: Request) -> Response:
        from ...integrations.metrics import CONTENT_TYPE, render

        return Response(render(metrics() if metrics is not None else state.health), media_type=CONTENT_TYPE)

    return [Route("/metrics", metrics_text), Route("/api/health", health)]
