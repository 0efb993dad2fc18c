"""Webhooks: chosen event types POSTed as JSON to URLs, signed, retried, never blocking the pipeline.

``outputs.webhooks`` is a list of ``{url, events, secret, secret_env, timeout_s, retries, backoff_s}``:

* the body is the event's JSON (the same record as ``--events``); ``X-Facestream-Event`` names the event;
* with a secret (``secret``, or the environment variable named by ``secret_env``) the header
  ``X-Facestream-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes under that secret (check it
  with ``hmac.compare_digest`` on the raw body before parsing it);
* a timeout, a connection error, a 5xx or a 429 is retried ``retries`` times, waiting ``backoff_s``, then
  twice as long each time (at most 60 s); another 4xx is not retried; either way the event is counted failed;
* each webhook has its own sender thread and a bounded queue (``outputs.webhook_queue``): `handle` only
  appends to it; when it is full the oldest event is dropped and counted, so a receiver that hangs costs
  memory up to that bound and never delays the sink.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Facestream-Signature"
EVENT_HEADER = "X-Facestream-Event"
DEFAULT_EVENTS = ("track_identified",)


class WebhookConfigError(ConfigError):
    """A bad ``outputs.webhooks`` entry."""


def signature(secret: bytes, body: bytes) -> str:
    """The value of the signature header for this body: ``sha256=`` + HMAC-SHA256 hex digest."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def safe_url(url: str) -> str:
    """The URL without credentials or query (tokens often live there), for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    events: tuple[str, ...]
    secret: bytes | None
    timeout_s: float
    retries: int
    backoff_s: float

    def __repr__(self) -> str:  # no secret in a log or traceback
        return f"WebhookSpec(url={safe_url(self.url)!r}, events={self.events}, signed={self.secret is not None})"

    @classmethod
    def from_config(cls, entry: Any, index: int, environ: dict[str, str] | None = None) -> WebhookSpec:
        environ = os.environ if environ is None else environ
        where = f"outputs.webhooks[{index}]"
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict):
            raise WebhookConfigError(f"{where}: expected a mapping with a url, got {type(entry).__name__}")
        known = {"url", "events", "secret", "secret_env", "timeout_s", "retries", "backoff_s"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise WebhookConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        url = str(entry.get("url") or "")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise WebhookConfigError(f"{where}: url must be an http:// or https:// URL")
        events = entry.get("events") or list(DEFAULT_EVENTS)
        if isinstance(events, str):
            events = [events]
        secret = entry.get("secret") or ""
        if entry.get("secret_env"):
            secret = environ.get(str(entry["secret_env"]), "")
            if not secret:
                raise WebhookConfigError(f"{where}: the environment variable {entry['secret_env']} is not set")
        try:
            return cls(url, tuple(str(e) for e in events), str(secret).encode() if secret else None,
                       float(entry.get("timeout_s", 5.0)), int(entry.get("retries", 3)),
                       float(entry.get("backoff_s", 1.0)))  # fmt: skip
        except (TypeError, ValueError) as error:
            raise WebhookConfigError(f"{where}: {error}") from None



class Webhook:
    """One URL: a bounded queue and the thread that POSTs from it."""

    def __init__(self, spec: WebhookSpec, queue_size: int) -> None:
        self.spec = spec
        self.queue: deque[tuple[str, bytes]] = deque()
        self.queue_size = max(1, int(queue_size))
        self.cond = threading.Condition()
        self.stopping = False
        self.counts = {"delivered": 0, "failed": 0, "dropped": 0, "retries": 0}
        self.thread = threading.Thread(target=self._run, name=f"webhook {safe_url(spec.url)}", daemon=True)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def offer(self, kind: str, body: bytes) -> None:
        with self.cond:
            if len(self.queue) >= self.queue_size:
                self.queue.popleft()
                self.counts["dropped"] += 1
                if self.counts["dropped"] in (1, 10, 100) or self.counts["dropped"] % 1000 == 0:
                    log.warning("webhook %s: queue full (%d): %d events dropped so far", safe_url(self.spec.url),
                                self.queue_size, self.counts["dropped"])  # fmt: skip
            self.queue.append((kind, body))
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return
                kind, body = self.queue.popleft()
            self._deliver(kind, body)

    def _post(self, kind: str, body: bytes) -> int:
        headers = {"Content-Type": "application/json", EVENT_HEADER: kind, "User-Agent": "facestream"}
        if self.spec.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.spec.secret, body)
        request = urllib.request.Request(self.spec.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def _deliver(self, kind: str, body: bytes) -> None:
        wait = self.spec.backoff_s
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self.counts["retries"] += 1
                with self.cond:  # a stop cuts the back-off short (the attempt still happens)
                    if not self.stopping:
                        self.cond.wait(wait)
                wait = min(60.0, wait * 2)
            try:
                status = self._post(kind, body)
                problem = f"HTTP {status}"
            except (OSError, ValueError) as error:  # refused, reset, timed out, bad answer
                status, problem = 0, str(getattr(error, "reason", None) or error)
            if 200 <= status < 300:
                self.counts["delivered"] += 1
                return
            if 400 <= status < 500 and status != 429:
                break
            if self.stopping and attempt:
                break
        self.counts["failed"] += 1
        log.warning("webhook %s: %s event not delivered (%s)", safe_url(self.spec.url), kind, problem)

    def close(self, timeout: float) -> None:
        """Deliver what is queued for at most `timeout` seconds, then give up on the rest (counted dropped)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)
        with self.cond:
            if self.queue:
                self.counts["dropped"] += len(self.queue)
                log.warning("webhook %s: %d events not sent when the run stopped", safe_url(self.spec.url),
                            len(self.queue))  # fmt: skip
                self.queue.clear()


class WebhookOutput:
    """Every configured webhook; `handle` queues an event for those that want its type."""

    name = "webhooks"

    def __init__(self, entries: list[Any], queue_size: int = 1000) -> None:
        if not isinstance(entries, list):
            raise WebhookConfigError("outputs.webhooks: expected a list of {url, events, secret, ...}")
        self.hooks = [Webhook(WebhookSpec.from_config(entry, i), queue_size) for i, entry in enumerate(entries)]

    def start(self) -> WebhookOutput:
        for hook in self.hooks:
            hook.start()
        return self

    def handle(self, record: dict[str, Any]) -> None:
        kind = str(record.get("event"))
        body = None
        for hook in self.hooks:
            if kind in hook.spec.events or "*" in hook.spec.events:
                body = body or json.dumps(record, separators=(",", ":")).encode()
                hook.offer(kind, body)

    def tick(self, now: float) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for hook in self.hooks:
            hook.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        totals = {"delivered": 0, "failed": 0, "dropped": 0, "retries": 0, "queued": 0}
        for hook in self.hooks:
            for key, value in hook.counts.items():
                totals[key] += value
            totals["queued"] += len(hook.queue)
        return totals
