"""The web view's gate (ASGI middleware): the token on every request (Bearer or the sign-in cookie, with a
limit on wrong tokens), the Host header on loopback, the X-Facestream header on changes, and the security
headers on every response."""

from __future__ import annotations

import hmac
import time
from collections import deque
from typing import Any

from .bodies import MAX_FORM_BYTES, BodyTooLargeError, read_body

COOKIE = "facestream_token"
CHANGE_HEADER = "x-facestream"


class Guard:
    """ASGI middleware: the token on every request (when set), the Host header on loopback, and the
    X-Facestream header on every request that changes something."""

    def __init__(self, app: Any, token: str, hosts: set[str] | None) -> None:
        self.app, self.token, self.hosts = app, token, hosts
        self.failures: dict[str, deque[float]] = {}  # client address -> times of its wrong tokens

    def _limited(self, client: str) -> float:
        """Seconds until `client` may try a token again (0: now): at most FAILURES_ALLOWED wrong tokens a
        FAILURE_WINDOW_S, so a token cannot be guessed by trying."""
        times = self.failures.get(client)
        now = time.monotonic()
        while times and times[0] < now - FAILURE_WINDOW_S:
            times.popleft()
        if times is not None and not times:
            del self.failures[client]
            return 0.0
        return FAILURE_WINDOW_S - (now - times[0]) if times and len(times) >= FAILURES_ALLOWED else 0.0

    def _failed(self, client: str) -> None:
        if len(self.failures) > 10_000:  # bounded: forget the oldest clients
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(client, deque()).append(time.monotonic())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self._guarded(scope, receive, send_with_headers)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.requests import Request
        from starlette.responses import JSONResponse, RedirectResponse

        headers = Headers(scope=scope)
        if self.hosts is not None and headers.get("host", "").lower() not in self.hosts:
            await JSONResponse({"error": "unknown Host header"}, status_code=421)(scope, receive, send)
            return
        if self.token:
            request = Request(scope, receive)
            client = (scope.get("client") or ("?", 0))[0]
            wait = self._limited(client)
            if wait:
                text = f"too many wrong tokens from {client}: try again in {wait:.0f} s"
                await JSONResponse({"error": text}, status_code=429, headers={"Retry-After": str(int(wait) + 1)})(
                    scope, receive, send
                )
                return
            if scope["path"] == "/login":
                await self._login(request, send, client)
                return
            bearer = headers.get("authorization", "")
            given = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if given and not hmac.compare_digest(given.encode(), self.token.encode()):
                self._failed(client)
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                if scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):  # a person at the page: the form
                    await RedirectResponse("/login", status_code=303)(scope, receive, send)
                    return
                text = "a token is required: sign in at /login once, or send Authorization: Bearer <token>"
                await JSONResponse({"error": text}, status_code=401)(scope, receive, send)
                return
        if scope["method"] not in ("GET", "HEAD") and CHANGE_HEADER not in headers:
            await JSONResponse({"error": f"changes need the {CHANGE_HEADER} header"}, status_code=403)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    async def _login(self, request: Any, send: Any, client: str) -> None:
        """GET: the sign-in form (or ``?token=`` for scripts); POST (the form): the token. Right: a cookie
        (HttpOnly, SameSite=Strict) and back to the page; wrong: 401 and the form again."""
        from urllib.parse import parse_qs

        from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

        given = request.query_params.get("token")
        if request.method == "POST":
            try:
                body = await read_body(request.receive, request.headers, MAX_FORM_BYTES)
            except BodyTooLargeError as problem:
                await JSONResponse({"error": str(problem)}, status_code=413)(request.scope, request.receive, send)
                return
            given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0]
        if given is None:  # GET without a token: show the form
            await HTMLResponse(LOGIN_PAGE.format(message=""))(request.scope, request.receive, send)
            return
        if hmac.compare_digest(given.strip().encode(), self.token.encode()):
            response: Any = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        else:
            self._failed(client)
            response = HTMLResponse(LOGIN_PAGE.format(message="<p class=error>Wrong token.</p>"), status_code=401)
        await response(request.scope, request.receive, send)


FAILURES_ALLOWED = 10  # wrong tokens from one client address ...
FAILURE_WINDOW_S = 60.0  # ... within this many seconds; then 429 until the oldest is this old
# Every response: never framed by another site (clickjacking), scripts and styles from this server only
# (the page and the sign-in form use an inline <style>), no MIME sniffing, no Referer with the URL.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facestream: sign in</title>
<style>body{{font:15px system-ui,sans-serif;margin:4em auto;max-width:26em}}.error{{color:#b22}}</style></head>
<body><h1>facestream</h1>{message}<form method="post" action="/login">
<label>Token <input type="password" name="token" autofocus required autocomplete="current-password"></label>
<button type="submit">Sign in</button></form>
<p>The token is the one the server was started with ($FACESTREAM_WEB_TOKEN, web.token or --token).</p>
</body></html>"""
