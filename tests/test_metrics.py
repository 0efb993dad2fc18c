"""Prometheus metrics: scraped from a real `facestream run --metrics` while it runs (parsed with
prometheus_client's own parser), and its final figures equal to ``--stats``. The same run has two webhooks, one
signed, one whose receiver hangs: the run is not held up, Lin-Manuel Miranda's identification arrives signed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_webhooks import SECRET, Receiver

from facestream.pipeline.integrations.metrics import render

DATA = Path(__file__).parent / "data"
CLIP = DATA / "video" / "short_hamilton_clip.mp4"
FACESTREAM = [sys.executable, "-m", "facestream.pipeline.cli.main"]
LIN = "Lin_Manuel_Miranda"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def expected_from_stats(stats: dict) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counter samples the metrics must show, computed from the --stats JSON by the documented mapping."""
    expected = {}
    for stage, info in stats["stages"].items():
        expected[("facestream_stage_items_total", (("stage", stage), ("unit", info["unit"])))] = info["total"]
        for counter, value in info["counters"].items():
            expected[("facestream_stage_counter_total", (("counter", counter), ("stage", stage)))] = value
        for name, histogram in info["histograms"].items():
            key = ("facestream_latency_seconds_count", (("name", name), ("stage", stage)))
            expected[key] = sum(histogram["counts"])
    for stream, info in stats["streams"].items():
        for what, value in info.items():
            if isinstance(value, int) and not isinstance(value, bool) and what not in ("in_flight", "waiting"):
                expected[("facestream_stream_frames_total", (("stream", stream), ("what", what)))] = value
    for process, count in stats["restarts"].items():
        expected[("facestream_worker_restarts_total", (("process", process),))] = count
    for output, counts in stats["integrations"].items():
        for outcome in ("delivered", "failed", "dropped", "retries"):
            if outcome in counts:
                expected[("facestream_delivery_total", (("outcome", outcome), ("output", output)))] = counts[outcome]
    for stream, people in stats["identifications"].items():
        for person, count in people.items():
            expected[("facestream_identifications_total", (("person", person), ("stream", stream)))] = count
    return expected


def test_render_is_valid_prometheus_text_even_before_any_figure() -> None:
    assert list(text_string_to_metric_families(render(None).decode()))  # families, no samples
    snapshot = {"stages": {"detect": {"unit": "frames", "total": 3, "processes": 1, "queue_depth": 2,
                                      "counters": {"frames": 3},
                                      "histograms": {"detect": {"counts": [0] * 9 + [2, 1, 0, 0, 0, 0],
                                                                "sum_ms": 2500.0}}}}}  # fmt: skip
    parsed = samples(render(snapshot).decode())
    labels = (("name", "detect"), ("stage", "detect"))
    # Cumulative buckets: two values <= 1 s, the third <= 2 s.
    assert parsed[("facestream_latency_seconds_bucket", (("le", "0.5"), *labels))] == 0
    assert parsed[("facestream_latency_seconds_bucket", (("le", "1.0"), *labels))] == 2
    assert parsed[("facestream_latency_seconds_bucket", (("le", "2.0"), *labels))] == 3
    assert parsed[("facestream_latency_seconds_bucket", (("le", "+Inf"), *labels))] == 3
    assert parsed[("facestream_latency_seconds_sum", labels)] == 2.5
    assert parsed[("facestream_queue_depth", (("stage", "detect"),))] == 2


def test_stage_histograms_count_each_value_in_its_bucket_and_add_up_over_processes() -> None:
    from facestream.pipeline.runtime.reports import StatsBoard
    from facestream.pipeline.runtime.stages import HISTOGRAM_BOUNDS_MS, StageStats

    board = StatsBoard()
    for instance, values_ms in (("detect-1:1", [0.5, 1.0, 1.5, 40000.0]), ("detect-1:2", [1.0, 250.0])):
        stats = StageStats(window=2)  # the percentile window is short; the histogram covers the whole life
        for value in values_ms:
            stats.latency("detect", value / 1000.0)
        board.update({"instance": instance, "name": "detect-1", "role": "detect", **stats.snapshot()})
    histogram = board.stages()["detect"]["histograms"]["detect"]
    expected = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
    for value in (0.5, 1.0, 1.5, 40000.0, 1.0, 250.0):  # a value equal to a bound belongs to that bucket
        bucket = next((i for i, bound in enumerate(HISTOGRAM_BOUNDS_MS) if value <= bound), len(HISTOGRAM_BOUNDS_MS))
        expected[bucket] += 1
    assert histogram["counts"] == expected and expected[0] == 3 and expected[-1] == 1
    assert histogram["sum_ms"] == pytest.approx(0.5 + 1.0 + 1.5 + 40000.0 + 1.0 + 250.0)


def test_identification_labels_are_bounded() -> None:
    from facestream.pipeline.integrations.bridge import Identifications

    counts = Identifications(max_people=2)
    for person in ("a", "b", "c", "d", "a", "unknown"):
        counts.observe({"event": "track_identified", "stream_id": "s", "identity": person})
    assert counts.snapshot() == {"s": {"a": 2, "b": 1, "_other": 2}}


def test_a_run_serves_metrics_that_agree_with_stats_and_webhooks_do_not_hold_it_up(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery.db"
    enrolled = subprocess.run([*FACESTREAM, "enroll", "import", str(DATA / "video" / "gallery"), "--gallery",
                               str(gallery)], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    clip = tmp_path / "clip.avi"  # frames 0-9 of the demo clip, lossless: Lin-Manuel Miranda
    capture = cv2.VideoCapture(str(CLIP))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 29.97, (640, 360))
    for _ in range(10):
        writer.write(capture.read()[1])
    writer.release()
    capture.release()
    receiver = Receiver()
    run_dir = tempfile.mkdtemp(prefix="fs-", dir="/tmp")
    config = {
        "pipeline": {"run_dir": run_dir, "report_interval_s": 2.0},
        "metrics": {"textfile": str(tmp_path / "facestream.prom")},
        "outputs": {"webhook_queue": 2, "webhooks": [
            {"url": receiver.url("/ok"), "secret": SECRET, "events": ["track_identified"]},
            {"url": receiver.url("/hang"), "events": ["*"], "timeout_s": 2, "retries": 0},
        ]},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([*FACESTREAM, "--config", str(tmp_path / "config.yaml"), "run", "--source",
                                    f"clip={clip}", "--gallery", str(gallery), "--events", "events.jsonl", "--stats",
                                    "stats.json", "--metrics", "127.0.0.1:0", "--no-progress"], cwd=tmp_path,
                                   stdout=stderr, stderr=stderr)  # fmt: skip
        try:
            url, during = None, None
            deadline = time.monotonic() + 240
            while process.poll() is None and time.monotonic() < deadline:
                found = re.search(r"metrics: (http://\S+)", stderr_path.read_text())
                url = found.group(1) if found else None
                if url:
                    try:
                        text = urllib.request.urlopen(url, timeout=5).read().decode()
                    except OSError:
                        text = ""
                    key = ("facestream_stage_items_total", (("stage", "sink"), ("unit", "frames")))
                    if text and 0 < samples(text).get(key, 0) < 10:
                        during = samples(text)  # a scrape with the run half-way
                time.sleep(0.2)
            assert process.wait(240) == 0, stderr_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            receiver.close()
    log = stderr_path.read_text()
    assert url is not None, log
    assert during is not None, "no scrape while frames were being processed"
    stats = json.loads((tmp_path / "stats.json").read_text())
    expected = expected_from_stats(stats)
    final = samples((tmp_path / "facestream.prom").read_text())  # written from the same figures as --stats
    assert expected and {k: final.get(k) for k in expected} == expected
    for key, value in during.items():  # counters only grow: the mid-run scrape is below the final figures
        if key in expected:
            assert value <= expected[key], key
    assert final[("facestream_gallery_people", ())] == 2
    assert final[("facestream_identifications_total", (("person", LIN), ("stream", "clip")))] >= 1
    # The webhooks: Lin-Manuel Miranda's identification signed; the hanging receiver cost nothing but its queue.
    signed = [json.loads(r["body"]) for r in receiver.on("/ok") if r["valid"]]
    assert any(r["identity"] == LIN for r in signed)
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    hooks = stats["integrations"]["webhooks"]
    identified = sum(json.loads(line)["event"] == "track_identified" for line in events)
    assert hooks["delivered"] == identified, hooks  # only the signed hook's events were delivered
    # Every event for the hanging hook failed (timed out) or was dropped (queue full, or left at the stop); one
    # may still have been in flight when the stop's time limit ended.
    assert len(events) - 1 <= hooks["dropped"] + hooks["failed"] <= len(events), hooks
    assert stats["stages"]["sink"]["total"] == 10


@pytest.mark.parametrize("health", [None, {"stages": {"sink": {"unit": "frames", "total": 4, "counters": {}}}}])
def test_the_web_view_serves_metrics(tmp_path: Path, health: dict | None) -> None:
    """`facestream serve` (no supervisor): /metrics from the health snapshot it reads."""
    from facestream.pipeline.config import load_config
    from facestream.pipeline.web.server import WebServer

    server = WebServer(load_config(None), {}, address="127.0.0.1:0", gallery=tmp_path / "g.db")
    if health is not None:
        server.set_health(health)
    url = server.start()
    try:
        request = urllib.request.Request(url + "metrics", headers={"Host": f"127.0.0.1:{server.port}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            parsed = samples(response.read().decode())
    finally:
        server.stop()
    key = ("facestream_stage_items_total", (("stage", "sink"), ("unit", "frames")))
    assert parsed.get(key) == (4 if health else None)
