"""Webhooks against real local HTTP receivers: the signature, retries after a 500, and a receiver that hangs
never holding up the caller. (A whole `facestream run` with a signed and a hanging webhook: test_metrics.py.)"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

from facestream.pipeline.integrations.webhooks import (
    SIGNATURE_HEADER,
    WebhookConfigError,
    WebhookOutput,
    WebhookSpec,
    signature,
)

SECRET = "correct horse battery staple"


class Receiver:
    """A local HTTP server. /ok checks the signature (401 when wrong), /flaky answers 500 to its first request,
    /hang never answers (until the test ends)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), expected)
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "body": body, "valid": valid,
                                              "event": self.headers.get("X-Facestream-Event")})  # fmt: skip
                    attempts = sum(r["path"] == self.path for r in receiver.requests)
                if self.path == "/hang":
                    receiver.release.wait(60)
                    status = 200
                elif self.path == "/flaky":
                    status = 500 if attempts == 1 else 200
                else:
                    status = 200 if valid else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


EVENT = {"event": "track_identified", "stream_id": "door", "track_id": 3, "identity": "Ann", "distance": 0.41}


def test_signed_events_of_the_chosen_types_and_a_wrong_secret_refused(receiver: Receiver) -> None:
    output = WebhookOutput([
        {"url": receiver.url("/ok"), "secret": SECRET, "events": ["track_identified"]},
        {"url": receiver.url("/ok?token=x"), "secret": "not the secret", "events": ["track_identified"], "retries": 2},
    ]).start()  # fmt: skip
    output.handle({"event": "track_started", "stream_id": "door", "track_id": 3})  # not chosen: never sent
    output.handle(EVENT)
    wait_for(lambda: len(receiver.requests) == 2, "both deliveries")
    output.close(5)
    good = receiver.on("/ok")[0]
    assert good["valid"] and json.loads(good["body"]) == EVENT and good["event"] == "track_identified"
    assert good["body"] and signature(SECRET.encode(), good["body"]) == "sha256=" + hmac.new(
        SECRET.encode(), good["body"], hashlib.sha256).hexdigest()  # fmt: skip
    assert not receiver.on("/ok?token=x")[0]["valid"]
    # 401 is the receiver's answer to a bad signature: not retried, counted failed.
    assert len(receiver.on("/ok?token=x")) == 1
    assert output.stats() == {"delivered": 1, "failed": 1, "dropped": 0, "retries": 0, "queued": 0}


def test_a_500_is_retried_with_back_off(receiver: Receiver) -> None:
    output = WebhookOutput([{"url": receiver.url("/flaky"), "secret": SECRET, "backoff_s": 0.2}]).start()
    started = time.monotonic()
    output.handle(EVENT)
    wait_for(lambda: output.stats()["delivered"] == 1, "the retried delivery")
    assert time.monotonic() - started >= 0.2  # it waited before the retry
    output.close(5)
    attempts = receiver.on("/flaky")
    assert len(attempts) == 2 and attempts[0]["body"] == attempts[1]["body"] and all(a["valid"] for a in attempts)
    assert output.stats()["retries"] == 1 and output.stats()["failed"] == 0


def test_a_hanging_receiver_never_blocks_the_caller_and_the_queue_stays_bounded(receiver: Receiver) -> None:
    output = WebhookOutput([{"url": receiver.url("/hang"), "events": ["*"], "timeout_s": 30, "retries": 0}],
                           queue_size=50).start()  # fmt: skip
    output.handle(EVENT)
    wait_for(lambda: receiver.on("/hang"), "the receiver to be hanging on the first event")
    started = time.monotonic()
    for i in range(5000):
        output.handle({**EVENT, "track_id": i})
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"handing 5000 events over took {elapsed:.2f} s"
    stats = output.stats()
    assert stats["queued"] == 50 and stats["dropped"] == 5000 - 50, stats
    started = time.monotonic()
    output.close(1.0)  # the stop gives up after its time limit, counting what was left
    assert time.monotonic() - started < 3.0
    assert output.stats()["dropped"] == 5000


def test_bad_webhook_entries_are_refused_clearly() -> None:
    with pytest.raises(WebhookConfigError, match=r"outputs.webhooks\[0\]: url"):
        WebhookOutput([{"url": "ftp://x"}])
    with pytest.raises(WebhookConfigError, match="unknown key 'secrett'"):
        WebhookOutput([{"url": "http://x", "secrett": "s"}])
    with pytest.raises(WebhookConfigError, match="FACESTREAM_TEST_UNSET_SECRET is not set"):
        WebhookSpec.from_config({"url": "http://x", "secret_env": "FACESTREAM_TEST_UNSET_SECRET"}, 0, environ={})
    spec = WebhookSpec.from_config({"url": "https://h/p?token=abc", "secret_env": "S"}, 0, environ={"S": "k3y"})
    assert spec.secret == b"k3y" and "k3y" not in repr(spec) and "abc" not in repr(spec)
