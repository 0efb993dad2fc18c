"""MQTT output (paho-mqtt 2.x): the pipeline's events on a broker, for Home Assistant, Node-RED and the like.

Topics, under ``outputs.mqtt.prefix`` (default ``facestream``; names pass through `topic_part`):

* ``<prefix>/<stream>/events``: every event as JSON (QoS 1, not retained);
* ``<prefix>/<stream>/access``: kiosk decisions (``access_decision`` events) on their own topic;
* ``<prefix>/<stream>/people/<name>``: retained presence, ``ON`` while a track of that person is on screen,
  ``OFF`` ``presence_off_s`` after the last one ended; ``.../attributes`` (retained JSON) holds the last-seen
  time, frame and distance;
* ``<prefix>/<stream>/last_person`` (+ ``/attributes``): the last person recognised (retained);
* ``<prefix>/<stream>/snapshot`` (with ``snapshots: true``): the annotated frame of the last identification,
  JPEG, retained: the first annotated frame of that stream to arrive after the ``track_identified`` event
  (the sink publishes a frame after its events, at ``web.preview_fps``), else after 2 s the latest one;
* ``<prefix>/availability``: ``online`` (retained) while connected, ``offline`` on a clean stop and, as the
  last will, when the connection is lost;
* Home Assistant discovery configs (`homeassistant`), when ``discovery`` is on.

Delivery never blocks the caller: `publish` hands the message to paho, whose outgoing queue holds QoS 1
messages until the broker acknowledges them and re-sends them after a reconnect (paho's network thread
reconnects with back-off from ``reconnect_min_s`` to ``reconnect_max_s``). That queue is bounded
(``queue``); a message beyond it is dropped and counted. Credentials come from the config or
``FACESTREAM_MQTT_USERNAME`` / ``FACESTREAM_MQTT_PASSWORD`` and are never logged (URLs are shown redacted).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import ConfigError
from .homeassistant import (
    Discovery,
    GalleryPeople,
    availability_topic,
    last_person_topic,
    presence_topic,
    topic_part,
)

log = logging.getLogger(__name__)

ENV_USERNAME, ENV_PASSWORD = "FACESTREAM_MQTT_USERNAME", "FACESTREAM_MQTT_PASSWORD"
UNKNOWN = "unknown"


class MqttConfigError(ConfigError):
    """A bad ``outputs.mqtt`` section or ``--mqtt`` URL."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = None

    def __repr__(self) -> str:  # never show the password, not even in a traceback
        return f"BrokerAddress(host={self.host!r}, port={self.port}, tls={self.tls}, username={self.username!r})"


def parse_broker_url(url: str, environ: dict[str, str] | None = None,
                     section: dict[str, Any] | None = None) -> BrokerAddress:  # fmt: skip
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883). User and password from the
    URL, else ``outputs.mqtt.username``/``password``, else the environment."""
    environ = os.environ if environ is None else environ
    section = section or {}
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttConfigError(f"MQTT broker {redact_url(url)}: the URL must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise MqttConfigError(f"MQTT broker {redact_url(url)}: no host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise MqttConfigError(f"MQTT broker {redact_url(url)}: bad port") from None
    username = unquote(parts.username) if parts.username else (section.get("username") or environ.get(ENV_USERNAME))
    password = unquote(parts.password) if parts.password else (section.get("password") or environ.get(ENV_PASSWORD))
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts", username or None, password or None)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _now_iso(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).isoformat(timespec="seconds")


class Presence:
    """Who is on screen per stream, from track events: a person is ON while any of their tracks is identified
    as them, and OFF `off_after_s` after the last such track ended or changed identity (a person who comes
    back within that time stays ON). Pure bookkeeping: `observe` and `due` return the changes to publish as
    (stream, person, "ON"/"OFF")."""

    def __init__(self, off_after_s: float) -> None:
        self.off_after_s = float(off_after_s)
        self.track_identity: dict[tuple[str, int], str] = {}
        self.active: dict[tuple[str, str], set[int]] = {}
        self.off_at: dict[tuple[str, str], float] = {}
        self.on: set[tuple[str, str]] = set()

    def _leave(self, stream_id: str, track_id: int, now: float) -> None:
        person = self.track_identity.pop((stream_id, track_id), None)
        if person is None:
            return
        tracks = self.active.get((stream_id, person), set())
        tracks.discard(track_id)
        if not tracks:
            self.active.pop((stream_id, person), None)
            self.off_at[(stream_id, person)] = now + self.off_after_s

    def observe(self, record: dict[str, Any], now: float) -> list[tuple[str, str, str]]:
        kind, stream_id, track_id = record.get("event"), str(record.get("stream_id")), record.get("track_id")
        if kind not in ("track_identified", "track_ended") or not isinstance(track_id, int):
            return []
        self._leave(stream_id, track_id, now)
        identity = record.get("identity")
        if kind == "track_ended" or not isinstance(identity, str) or identity == UNKNOWN:
            return []
        key = (stream_id, identity)
        self.track_identity[(stream_id, track_id)] = identity
        self.active.setdefault(key, set()).add(track_id)
        self.off_at.pop(key, None)
        if key in self.on:
            return []
        self.on.add(key)
        return [(stream_id, identity, "ON")]

    def due(self, now: float) -> list[tuple[str, str, str]]:
        """OFF for every person whose delay is over (all of them with now = inf)."""
        changes = []
        for key, when in list(self.off_at.items()):
            if when <= now:
                del self.off_at[key]
                if key in self.on:
                    self.on.discard(key)
                    changes.append((key[0], key[1], "OFF"))
        return changes


class MqttOutput:
    """Events to an MQTT broker; `handle` and `tick` never block (see the module docstring)."""

    name = "mqtt"

    def __init__(self, section: dict[str, Any], streams: list[str], gallery: str | None = None,
                 url: str | None = None) -> None:  # fmt: skip
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.section = section
        self.url = url or str(section.get("url") or "")
        self.address = parse_broker_url(self.url, section=section)
        self.prefix = str(section.get("prefix") or "facestream").strip("/")
        self.qos = int(section.get("qos", 1))
        self.presence = Presence(float(section.get("presence_off_s", 30.0)))
        self.discovery = (
            Discovery(self.prefix, str(section.get("discovery_prefix") or "homeassistant"), streams,
                      cameras=bool(section.get("snapshots")))
            if section.get("discovery")
            else None
        )
        self.people = GalleryPeople(gallery) if self.discovery is not None and gallery else None
        self.next_gallery_poll = 0.0
        self.gallery_poll_s = float(section.get("gallery_poll_s", 5.0))
        self.counts = {"published": 0, "delivered": 0, "dropped": 0, "failed": 0, "connects": 0, "disconnects": 0,
                       "snapshots": 0}  # fmt: skip
        self.lock = threading.Lock()
        self.last_seen: dict[tuple[str, str], dict[str, Any]] = {}
        self.retained: dict[str, bytes] = {}  # the latest retained state, re-published after a reconnect
        self.republish_due = threading.Event()
        self.connected = threading.Event()
        self.closing = False
        self.wants_frames = bool(section.get("snapshots"))  # the bridge then feeds `frame` (annotated JPEGs)
        self.latest_frame: dict[str, bytes] = {}
        self.snapshot_due: dict[str, float] = {}  # stream -> when to fall back to the latest frame

        client_id = str(section.get("client_id") or f"facestream-{os.getpid()}")
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if self.address.username:
            self.client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            self.client.tls_set(ca_certs=str(section.get("ca_file") or "") or None)
        self.client.will_set(availability_topic(self.prefix), b"offline", qos=1, retain=True)
        self.client.max_queued_messages_set(max(1, int(section.get("queue", 10000))))
        self.client.reconnect_delay_set(max(1, int(section.get("reconnect_min_s", 1))),
                                        max(1, int(section.get("reconnect_max_s", 60))))  # fmt: skip
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.where = f"{'mqtts' if self.address.tls else 'mqtt'}://{self.address.host}:{self.address.port}"

    # -- connection (paho's network thread) ----------------------------------------------------------

    def start(self) -> MqttOutput:
        """Connect in the background (a broker that is down now is retried with back-off)."""
        keepalive = int(self.section.get("keepalive_s", 30))
        self.client.connect_async(self.address.host, self.address.port, keepalive=keepalive)
        self.client.loop_start()
        self.tick(time.monotonic())  # the first discovery configs go into the queue at once
        return self

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused the connection: %s", self.where, reason)
            return
        self.counts["connects"] += 1
        log.info("MQTT: connected to %s", self.where)
        self.connected.set()
        self._publish(availability_topic(self.prefix), b"online", retain=True)
        if self.counts["connects"] > 1:  # a broker restarted without persistence lost the retained state
            self.republish_due.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if self.connected.is_set() and not self.closing:
            self.counts["disconnects"] += 1
            log.warning("MQTT: lost the broker %s (%s): reconnecting with back-off; events are queued", self.where,
                        reason)  # fmt: skip
        self.connected.clear()

    def _on_publish(self, _client: Any, _userdata: Any, _mid: int, _reason: Any, _properties: Any) -> None:
        with self.lock:
            self.counts["delivered"] += 1

    # -- publishing ---------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False, remember: bool = True) -> None:
        import paho.mqtt.client as paho

        if retain and remember:
            with self.lock:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
        info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        outcome = "published" if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) else "failed"
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            outcome = "dropped"
        with self.lock:  # the bridge thread and paho's network thread (re-publishing after a reconnect) both count
            self.counts[outcome] += 1
            dropped = self.counts["dropped"]
        if outcome == "dropped" and (dropped in (1, 10, 100) or dropped % 1000 == 0):
            log.warning("MQTT: the outgoing queue is full (%d messages): %d dropped so far",
                        self.client.max_queued_messages, dropped)  # fmt: skip

    def _presence(self, changes: list[tuple[str, str, str]]) -> None:
        for stream_id, person, state in changes:
            topic = presence_topic(self.prefix, stream_id, person)
            attributes = {"state": state, "person": person, "stream_id": stream_id,
                          **self.last_seen.get((stream_id, person), {})}  # fmt: skip
            self._publish(f"{topic}/attributes", json.dumps(attributes).encode(), retain=True)
            self._publish(topic, state.encode(), retain=True)

    def _seen(self, record: dict[str, Any]) -> None:
        """When and where a person was last seen (their presence attributes, ON and OFF alike)."""
        identity = record.get("identity")
        if record.get("event") in ("track_identified", "track_ended") and isinstance(identity, str) \
                and identity != UNKNOWN:  # fmt: skip
            self.last_seen[(str(record.get("stream_id")), identity)] = {
                "last_seen": _now_iso(), **{k: record.get(k) for k in ("frame_index", "timestamp", "track_id")}}

    def handle(self, record: dict[str, Any]) -> None:
        """One pipeline event."""
        stream = topic_part(str(record.get("stream_id", "all")))
        payload = json.dumps(record, separators=(",", ":")).encode()
        kind = record.get("event")
        self._publish(f"{self.prefix}/{stream}/{'access' if kind == 'access_decision' else 'events'}", payload)
        identity = record.get("identity")
        if kind == "track_identified" and isinstance(identity, str) and identity != UNKNOWN:
            topic = last_person_topic(self.prefix, str(record.get("stream_id")))
            attributes = {"person": identity, "last_seen": _now_iso(), "distance": record.get("distance"),
                          "frame_index": record.get("frame_index"), "track_id": record.get("track_id")}  # fmt: skip
            self._publish(f"{topic}/attributes", json.dumps(attributes).encode(), retain=True)
            self._publish(topic, identity.encode(), retain=True)
            if self.wants_frames:
                self.snapshot_due.setdefault(str(record.get("stream_id")), time.monotonic() + 2.0)
        self._seen(record)
        self._presence(self.presence.observe(record, time.monotonic()))

    def frame(self, stream_id: str, jpeg: bytes) -> None:
        """An annotated frame of a stream (JPEG): the snapshot of an identification waiting for one."""
        self.latest_frame[stream_id] = jpeg
        if self.snapshot_due.pop(stream_id, None) is not None:
            self._snapshot(stream_id, jpeg)

    def _snapshot(self, stream_id: str, jpeg: bytes) -> None:
        self.counts["snapshots"] += 1
        self._publish(f"{self.prefix}/{topic_part(stream_id)}/snapshot", jpeg, retain=True, remember=False)

    def _republish_retained(self) -> None:
        """The retained state again after a reconnect, once paho's queue has been delivered: the queue is sent
        after the reconnect, so a state re-published at once would arrive before older queued states of its
        topic (a subscriber would see OFF, ON, OFF)."""
        if not self.republish_due.is_set() or not self.connected.is_set() or self.pending:
            return
        self.republish_due.clear()
        with self.lock:
            retained = list(self.retained.items())
        for topic, payload in retained:
            self._publish(topic, payload, retain=True, remember=False)

    def tick(self, now: float) -> None:
        """Presence turning OFF; late snapshots; the gallery's people for discovery (every ``gallery_poll_s``);
        the retained state after a reconnect."""
        self._republish_retained()
        self._presence(self.presence.due(now))
        for stream_id, due in list(self.snapshot_due.items()):
            if now >= due:
                del self.snapshot_due[stream_id]
                if stream_id in self.latest_frame:
                    self._snapshot(stream_id, self.latest_frame[stream_id])
        if self.discovery is None or now < self.next_gallery_poll:
            return
        self.next_gallery_poll = now + self.gallery_poll_s
        try:
            people = self.people.poll() if self.people is not None else ([] if not self.discovery.announced else None)
        except Exception as error:  # a gallery being rewritten: try again at the next poll
            log.warning("MQTT discovery: cannot read the gallery: %s", error)
            return
        if people is not None:
            for topic, payload in self.discovery.update(people):
                self._publish(topic, payload, retain=True)

    @property
    def pending(self) -> int:
        return max(0, self.counts["published"] - self.counts["delivered"])

    def close(self, timeout: float = 5.0) -> None:
        """Presence OFF for everyone still ON, availability offline, then wait (at most `timeout`) until the
        broker has acknowledged what is queued, and disconnect."""
        deadline = time.monotonic() + timeout
        while self.republish_due.is_set() and self.connected.is_set() and time.monotonic() < deadline:
            self._republish_retained()
            time.sleep(0.02)
        self._presence(self.presence.due(float("inf")))
        self._publish(availability_topic(self.prefix), b"offline", retain=True, remember=False)
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.pending:
            log.warning("MQTT: %d messages not acknowledged by %s when the run stopped", self.pending, self.where)
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()
        if self.people is not None:
            self.people.close()

    def stats(self) -> dict[str, int]:
        return {**self.counts, "queued": self.pending}
