"""The bridge: a thread of the supervisor that SUBscribes to the sink's ``events`` PUB socket and hands each
event to the integrations (MQTT, webhooks) and to the identification counts of the metrics.

The sink publishes without waiting (PUB drops for a subscriber that does not keep up, at 100 000 queued
messages); the outputs only queue (see mqtt.py, webhooks.py), so neither the sink nor this thread waits on
the network. At the end of a run `stop` first reads what the sink published last (until the socket has been
quiet for a moment), then closes each output, which flushes what it can within its time limit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

OTHER = "_other"


class EventOutput(Protocol):
    name: str

    def handle(self, record: dict[str, Any]) -> None: ...

    def tick(self, now: float) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...

    def stats(self) -> dict[str, int]: ...


class Identifications:
    """Tracks identified per stream and person (``track_identified`` with an identity); at most `max_people`
    people per stream get their own count (label cardinality of the metrics), the rest add up in ``_other``."""

    def __init__(self, max_people: int) -> None:
        self.max_people = max(0, int(max_people))
        self.counts: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()

    def observe(self, record: dict[str, Any]) -> None:
        identity = record.get("identity")
        if record.get("event") != "track_identified" or not isinstance(identity, str) or identity == "unknown":
            return
        with self.lock:
            counts = self.counts.setdefault(str(record.get("stream_id")), {})
            named = len(counts) - (OTHER in counts)
            key = identity if identity in counts or named < self.max_people else OTHER
            counts[key] = counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {stream: dict(counts) for stream, counts in self.counts.items()}


class EventBridge:
    """The SUB thread: events in, `handle` of every output; `tick` of each every 100 ms."""

    def __init__(self, endpoint: str, outputs: list[EventOutput], identifications: Identifications,
                 close_timeout_s: float = 5.0, preview: str | None = None) -> None:  # fmt: skip
        self.endpoint, self.outputs, self.identifications = endpoint, outputs, identifications
        # Annotated frames (the sink's preview socket, topics "frame:<stream>" only: never the unknown faces'
        # chips) for the outputs that want them (MQTT snapshots).
        self.framed = [o for o in outputs if getattr(o, "wants_frames", False)]
        self.preview = preview if self.framed else None
        self.close_timeout_s = close_timeout_s
        self.stopping = threading.Event()
        self.malformed = 0
        self.received = 0
        self.thread = threading.Thread(target=self._run, name="integrations", daemon=True)
        self.subscribed = threading.Event()

    def start(self) -> EventBridge:
        self.thread.start()
        self.subscribed.wait(5)
        return self

    def _run(self) -> None:
        import zmq

        from ..runtime.stages import open_socket

        context = zmq.Context()
        try:
            socket = open_socket(context, zmq.SUB, self.endpoint, bind=False, hwm=100_000, subscribe=b"")
            poller = zmq.Poller()
            poller.register(socket, zmq.POLLIN)
            if self.preview:
                frames_socket = open_socket(context, zmq.SUB, self.preview, bind=False, hwm=8, subscribe=b"frame:")
                poller.register(frames_socket, zmq.POLLIN)
            self.subscribed.set()
            quiet_since: float | None = None
            while True:
                ready = dict(poller.poll(100))
                if self.preview and frames_socket in ready:
                    self._frames(frames_socket)
                if socket in ready:
                    quiet_since = None
                    for _ in range(1000):
                        try:
                            frames = socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                elif self.stopping.is_set():  # the sink has exited: stop once the socket has been quiet a moment
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= 0.2:
                        break
                now = time.monotonic()
                for output in self.outputs:
                    output.tick(now)
        except Exception:
            log.exception("integrations: the event bridge stopped")
        finally:
            self.subscribed.set()
            context.destroy(0)

    def _frames(self, sub: Any) -> None:
        import zmq

        for _ in range(64):
            try:
                topic, jpeg = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # not two frames
                continue
            for output in self.framed:
                output.frame(topic[6:].decode("utf-8", "replace"), jpeg)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise ValueError(f"{len(frames)} frames")
            record = json.loads(frames[1])
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as error:
            self.malformed += 1
            if self.malformed <= 5:
                log.warning("integrations: dropped a malformed event: %s", error)
            return
        self.received += 1
        self.identifications.observe(record)
        for output in self.outputs:
            try:
                output.handle(record)
            except Exception:  # one output's bug must not starve the others
                log.exception("integrations: %s failed on an event", output.name)

    def stop(self) -> None:
        """Read the last events, then close every output (each flushes within `close_timeout_s`)."""
        self.stopping.set()
        self.thread.join(10)
        for output in self.outputs:
            try:
                output.close(self.close_timeout_s)
            except Exception:
                log.exception("integrations: closing %s failed", output.name)

    def stats(self) -> dict[str, dict[str, int]]:
        return {output.name: output.stats() for output in self.outputs}


def start_integrations(config: Config, endpoints: dict[str, str], streams: list[str],
                       gallery: str | None, mqtt_url: str | None = None) -> EventBridge:  # fmt: skip
    """The bridge with every output the config (or ``--mqtt URL``) asks for, started. ValueError for a bad
    section (nothing started then)."""
    outputs: list[Any] = []
    section = config.outputs
    mqtt = dataclasses.asdict(section.mqtt)
    if mqtt_url or mqtt["url"]:
        from .mqtt import MqttOutput

        outputs.append(MqttOutput(mqtt, streams, gallery=gallery, url=mqtt_url))
    if section.webhooks:
        from .webhooks import WebhookOutput

        outputs.append(WebhookOutput(section.webhooks, section.webhook_queue))
    for output in outputs:
        output.start()
        where = getattr(output, "where", None)
        log.info("integrations: %s%s", output.name, f" -> {where}" if where else "")
    identifications = Identifications(config.metrics.max_people)
    return EventBridge(endpoints["events"], outputs, identifications, preview=endpoints.get("preview"),
                       close_timeout_s=section.delivery_timeout_s).start()
