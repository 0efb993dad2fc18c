"""Test helpers: a real MQTT broker (Debian's mosquitto, started per test) and a subscriber that records.

`make test` installs mosquitto when it runs as root on Debian (Makefile target `broker`). Elsewhere the
tests that need it skip and say why, unless FACESTREAM_REQUIRE_BROKER=1 (set by .ci/run): then they fail.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


def mosquitto_path() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_broker() -> str:
    """The mosquitto binary; skip (fail under FACESTREAM_REQUIRE_BROKER=1) when it is not installed."""
    path = mosquitto_path()
    if path is None:
        message = "mosquitto is not installed (Debian: apt-get install mosquitto; `make test` does it as root)"
        if os.environ.get("FACESTREAM_REQUIRE_BROKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


class Mosquitto:
    """One mosquitto process on 127.0.0.1:`port`; `persistence` keeps sessions and retained messages across
    a stop and start (saved on SIGTERM), as a production broker would."""

    def __init__(self, work: Path, persistence: bool = False, port: int | None = None,
                 security: list[str] | None = None) -> None:  # fmt: skip
        self.binary = require_broker()
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = work / "mosquitto.conf"
        # As root mosquitto would switch to the user "mosquitto", who cannot write the test's persistence files.
        # `security`: lines for the listener instead of anonymous access (certfile/keyfile, password_file).
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1",
                 *(security or ["allow_anonymous true"]), "log_dest stderr", "log_type error",
                 "log_type warning", "max_queued_messages 100000"]  # fmt: skip
        if persistence:
            lines += ["persistence true", f"persistence_location {work}/", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.log = open(self.work / "mosquitto.log", "a")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=self.log, stderr=self.log)

        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, (self.work / "mosquitto.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, "mosquitto to listen", 15)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()
        self.process = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


class Subscriber:
    """A paho client subscribed to `topics` (QoS 1) that records every message. ``persistent``: a fixed client
    id without clean session, so the broker keeps its messages while it is away (across a broker restart
    too, with persistence)."""

    def __init__(self, port: int, topics: list[str], client_id: str = "", persistent: bool = False) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = topics
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{id(self)}",
                                  clean_session=not persistent)  # fmt: skip
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_until(self.connected.is_set, "the test subscriber to connect", 15)

    def _on_connect(self, client, _userdata, flags, reason, _properties) -> None:
        if reason.is_failure:
            return
        if not flags.session_present:
            for topic in self.topics:
                client.subscribe(topic, qos=1)
        self.connected.set()

    def _on_message(self, _client, _userdata, message) -> None:
        with self.lock:
            received = Received(message.topic, bytes(message.payload), bool(message.retain), time.monotonic())
            self.messages.append(received)

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def topics_seen(self) -> set[str]:
        with self.lock:
            return {m.topic for m in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic_filter: str) -> dict[str, bytes]:
    """What the broker holds as retained on `topic_filter` now. The broker handles one client's packets in
    order and sends the retained messages while handling the SUBSCRIBE, so once a marker this client published
    afterwards has come back, every retained message has arrived."""
    marker = f"test-marker/{os.getpid()}/{time.monotonic_ns()}"
    subscriber = Subscriber(port, [topic_filter, marker])
    subscriber.client.publish(marker, b"x", qos=1)
    wait_until(lambda: subscriber.on(marker), "the marker message", 15)
    subscriber.close()
    return {m.topic: m.payload for m in subscriber.messages if m.retain and m.topic != marker}
