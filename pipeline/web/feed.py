"""The web view's feed thread: the pipeline's ``events`` and ``preview`` sockets (and, for `serve`, its
``health.json``) into the LiveState."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from .live import LiveState

log = logging.getLogger(__name__)


class Feed:
    """A thread that SUBscribes to the pipeline's ``events`` and ``preview`` endpoints and fills a LiveState;
    in `serve` mode it also reads the supervisor's ``health.json`` every second."""

    def __init__(self, state: LiveState, endpoints: dict[str, str], health_file: Path | None = None) -> None:
        self.state, self.endpoints, self.health_file = state, endpoints, health_file
        self.stopping = threading.Event()
        self.malformed = 0
        self.thread = threading.Thread(target=self._run, name="web feed", daemon=True)

    def start(self) -> Feed:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.ident is not None:
            self.thread.join(5)

    def _run(self) -> None:
        import zmq

        from ..runtime.stages import open_socket

        context = zmq.Context()
        sockets = []
        try:
            for name in ("events", "preview"):
                if name in self.endpoints:
                    sockets.append(open_socket(context, zmq.SUB, self.endpoints[name], bind=False, hwm=1000,
                                               subscribe=b""))  # fmt: skip
            poller = zmq.Poller()
            for sub in sockets:
                poller.register(sub, zmq.POLLIN)
            next_health = 0.0
            while not self.stopping.is_set():
                for sub, _ in poller.poll(200):
                    for _ in range(256):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                if self.health_file is not None and time.monotonic() >= next_health:
                    next_health = time.monotonic() + 1.0
                    self._read_health()
        except Exception:
            log.exception("web feed stopped")
        finally:
            for sub in sockets:
                sub.close(0)
            context.destroy(0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.malformed += 1
            return
        topic, payload = frames
        try:
            if topic.startswith(b"frame:"):
                self.state.add_frame(topic[6:].decode("utf-8", "replace"), payload)
            elif topic == b"unknown_face":
                self.state.add_unknown_face(json.loads(payload))
            else:
                record = json.loads(payload)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                self.state.add_event(record)
        except (ValueError, TypeError) as error:
            self.malformed += 1
            if self.malformed <= 5:
                log.warning("web feed: dropped a malformed %r message: %s", topic[:40], error)

    def _read_health(self) -> None:
        assert self.health_file is not None
        try:
            snapshot = json.loads(self.health_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(snapshot, dict) and snapshot != self.state.health:
            self.state.set_health(snapshot)
