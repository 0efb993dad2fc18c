"""Prometheus metrics (prometheus-client) from the supervisor's figures.

The figures are a *snapshot*: the same dictionary ``--stats`` writes (``stages``, ``streams``, ``restarts``)
plus ``integrations`` (delivery counts per output), ``identifications`` ({stream: {person: n}}) and
``gallery_people``. A scrape renders the latest snapshot (the supervisor refreshes it every second and once
more at the end), so ``/metrics`` and ``--stats`` show the same numbers. Served on the web view's
``/metrics`` and, without the web view, by ``run --metrics HOST:PORT`` (prometheus-client's own server);
``metrics.textfile`` also writes it to a file (node_exporter's textfile collector), finally at the end of
the run.

Metrics (all prefixed ``facestream_``):

``stage_items_total{stage,unit}``: frames sent (source), frames detected, faces embedded, frames written (sink);
``stage_counter_total{stage,counter}``: every counter of every stage (received, sent, malformed, late, ...);
``stage_processes{stage}``, ``queue_depth{stage}``: processes per stage, messages waiting for it;
``stream_frames_total{stream,what}``: per stream sent / resent / processed / dropped (live) / reconnects;
``stream_pending{stream,what}``: per stream frames in flight and results waiting for an earlier frame;
``latency_seconds{stage,name}`` (histogram): e.g. source ``frame`` (sent -> result), sink
``capture_to_result`` (live), detect ``detect``, embed ``embed_face``;
``worker_restarts_total{process}``; ``gallery_people``;
``identifications_total{stream,person}``: tracks identified per person (at most ``metrics.max_people`` people
per stream; the others count as ``person="_other"``);
``delivery_total{output,outcome}`` (delivered, failed, dropped, retries) and ``delivery_queued{output}`` for the
MQTT and webhook outputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..runtime.stages import HISTOGRAM_BOUNDS_MS

GAUGE_STREAM_FIELDS = ("in_flight", "waiting")


def _numbers(mapping: dict[str, Any]) -> Iterator[tuple[str, float]]:
    for key, value in mapping.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, float(value)


def families(snapshot: dict[str, Any] | None) -> list[Any]:
    """The metric families of one snapshot (empty families when there is none yet)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    snapshot = snapshot or {}
    items = CounterMetricFamily("facestream_stage_items", "Items through each stage (frames; faces for embed)",
                                labels=["stage", "unit"])  # fmt: skip
    counters = CounterMetricFamily("facestream_stage_counter", "Every counter of every stage",
                                   labels=["stage", "counter"])  # fmt: skip
    processes = GaugeMetricFamily("facestream_stage_processes", "Processes per stage", labels=["stage"])
    queues = GaugeMetricFamily("facestream_queue_depth", "Messages sent to a stage and not yet received by it",
                               labels=["stage"])  # fmt: skip
    latency = HistogramMetricFamily("facestream_latency_seconds", "Latency per stage and measurement",
                                    labels=["stage", "name"], unit="")  # fmt: skip
    for stage, info in sorted((snapshot.get("stages") or {}).items()):
        items.add_metric([stage, str(info.get("unit", ""))], float(info.get("total", 0)))
        processes.add_metric([stage], float(info.get("processes", 0)))
        if "queue_depth" in info:
            queues.add_metric([stage], float(info["queue_depth"]))
        for counter, value in sorted(_numbers(info.get("counters") or {})):
            counters.add_metric([stage, counter], value)
        for name, histogram in sorted((info.get("histograms") or {}).items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*HISTOGRAM_BOUNDS_MS, float("inf")], histogram["counts"]):
                cumulative += int(count)
                buckets.append(("+Inf" if bound == float("inf") else repr(bound / 1000.0), cumulative))
            latency.add_metric([stage, name], buckets, float(histogram["sum_ms"]) / 1000.0)
    stream_frames = CounterMetricFamily("facestream_stream_frames", "Frames per stream", labels=["stream", "what"])
    stream_pending = GaugeMetricFamily("facestream_stream_pending", "Frames pending per stream",
                                       labels=["stream", "what"])  # fmt: skip
    for stream, info in sorted((snapshot.get("streams") or {}).items()):
        for key, value in sorted(_numbers(info)):
            (stream_pending if key in GAUGE_STREAM_FIELDS else stream_frames).add_metric([stream, key], value)
    restarts = CounterMetricFamily("facestream_worker_restarts", "Restarts per worker slot", labels=["process"])
    for name, count in sorted((snapshot.get("restarts") or {}).items()):
        restarts.add_metric([name], float(count))
    people = GaugeMetricFamily("facestream_gallery_people", "People enrolled in the gallery the sink uses")
    if snapshot.get("gallery_people") is not None:
        people.add_metric([], float(snapshot["gallery_people"]))
    identified = CounterMetricFamily("facestream_identifications", "Tracks identified per person",
                                     labels=["stream", "person"])  # fmt: skip
    for stream, counts in sorted((snapshot.get("identifications") or {}).items()):
        for person, count in sorted(counts.items()):
            identified.add_metric([stream, person], float(count))
    delivery = CounterMetricFamily("facestream_delivery", "Integration deliveries by outcome",
                                   labels=["output", "outcome"])  # fmt: skip
    queued = GaugeMetricFamily("facestream_delivery_queued", "Messages waiting for delivery", labels=["output"])
    for output, counts in sorted((snapshot.get("integrations") or {}).items()):
        for outcome in ("delivered", "failed", "dropped", "retries"):
            if outcome in counts:
                delivery.add_metric([output, outcome], float(counts[outcome]))
        queued.add_metric([output], float(counts.get("queued", 0)))
    return [items, counters, processes, queues, latency, stream_frames, stream_pending, restarts, people, identified,
            delivery, queued]  # fmt: skip


class SnapshotCollector:
    """A prometheus-client collector over whatever `source()` returns at scrape time."""

    def __init__(self, source: Callable[[], dict[str, Any] | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from families(self.source())


def registry_for(source: Callable[[], dict[str, Any] | None]) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return registry


def render(snapshot: dict[str, Any] | None) -> bytes:
    """The Prometheus text exposition of one snapshot."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(lambda: snapshot))


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """``run --metrics HOST:PORT``: prometheus-client's HTTP server (``/metrics``) in a thread."""

    def __init__(self, host: str, port: int, source: Callable[[], dict[str, Any] | None]) -> None:
        self.host, self.port, self.source = host, port, source
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind and serve; the URL. OSError when the address cannot be used."""
        from prometheus_client import start_http_server

        self.server, self.thread = start_http_server(self.port, addr=self.host, registry=registry_for(self.source))
        self.port = int(self.server.server_port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
