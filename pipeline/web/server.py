"""The web view's server: one address, the feed thread, the gallery thread and uvicorn (in a thread of `run --web`'s
supervisor, or in the foreground for `facestream serve`)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from .address import WebError, check_binding, is_loopback, parse_address, resolve_token
from .app import create_app
from .feed import Feed
from .gallery_service import GalleryService
from .live import LiveState
from .unknown_people import UnknownPeople


class WebServer:
    """The web view on one address: the feed thread, the gallery thread and uvicorn (in a thread, or in the
    foreground with `serve_forever`)."""

    def __init__(self, config: Config, endpoints: dict[str, str], *, address: str | None = None,
                 token: str | None = None, gallery: str | Path | None = None, unknowns: list[str] | None = None,
                 health_file: Path | None = None) -> None:  # fmt: skip
        self.host, self.port = parse_address(address or str(config.web.address))
        self.token = resolve_token(config, token)
        check_binding(self.host, self.token)
        self.state = LiveState(int(config.web.history))
        self.state.pipeline = bool(endpoints) or health_file is not None
        self.gallery = GalleryService(config, gallery or config.gallery.path, self.state)
        self.unknowns = UnknownPeople(self.state, self.gallery, [Path(p) for p in unknowns or []],
                                      float(config.unknowns.cluster_threshold))  # fmt: skip
        self.feed = Feed(self.state, endpoints, health_file)
        self.socket: socket.socket | None = None
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.metrics: Callable[[], dict[str, Any] | None] | None = None  # /metrics source (set by the supervisor)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise WebError(f"cannot serve the web view on {self.host}:{self.port}: {error.strerror or error}") from None
        sock.listen(64)
        self.port = sock.getsockname()[1]  # port 0: the one the system chose
        return sock

    def _server(self) -> Any:
        import uvicorn

        hosts = None
        if is_loopback(self.host):
            names = {self.host, "localhost", "127.0.0.1", "[::1]"}
            hosts = {f"{name}:{self.port}" for name in names}
        app = create_app(self.state, self.gallery, self.unknowns, token=self.token, hosts=hosts,
                         history=int(self.state.events.maxlen or 200), metrics=self.metrics)  # fmt: skip
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)  # fmt: skip
        return uvicorn.Server(config)

    def start(self) -> str:
        """Bind (WebError when the address cannot be used) and serve in background threads; the URL."""
        self.socket = self._bind()
        self.feed.start()
        self.server = self._server()
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="web view",
                                       daemon=True)  # fmt: skip
        self.thread.start()
        return self.url

    def serve_forever(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve until Ctrl-C or SIGTERM, then stop cleanly (open pages are disconnected, the gallery closed)."""
        import signal

        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            url = self.start()
            if announce is not None:
                announce(url)
            while not stop.is_set() and self.thread is not None and self.thread.is_alive():
                stop.wait(0.5)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def set_health(self, snapshot: dict[str, Any]) -> None:
        self.state.set_health(snapshot)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.state.closed = True
        if self.thread is not None:
            self.thread.join(5)
        self._close()

    def _close(self) -> None:
        if self.state.closed and self.socket is None:
            return
        self.state.closed = True
        self.feed.stop()
        self.gallery.close()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
