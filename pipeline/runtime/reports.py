"""The run's figures: every process's latest stats snapshot added up per stage (throughput, latency, queue
depth, counters) and the report lines the supervisor prints."""

from __future__ import annotations

import time
from typing import Any


def _sum_counters(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for snapshot in snapshots:
        for name, value in snapshot.get("counters", {}).items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def _mean_latency(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per latency name, the mean over processes of each figure (p50, p95, p99, max, mean, count)."""
    collected: dict[str, list[dict[str, float]]] = {}
    for snapshot in snapshots:
        for name, figures in snapshot.get("latency", {}).items():
            collected.setdefault(name, []).append(figures)
    return {
        name: {key: round(sum(f[key] for f in values) / len(values), 2) for key in values[0]}
        for name, values in collected.items()
    }


def _sum_histograms(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per latency name, the whole-life histogram of every process instance added up (Prometheus)."""
    totals: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for name, histogram in snapshot.get("histograms", {}).items():
            total = totals.setdefault(name, {"counts": [0] * len(histogram["counts"]), "sum_ms": 0.0})
            total["counts"] = [a + int(b) for a, b in zip(total["counts"], histogram["counts"])]
            total["sum_ms"] = round(total["sum_ms"] + float(histogram["sum_ms"]), 3)
    return totals


def _by_process(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counters per process name (a restarted worker's instances added up)."""
    named: dict[str, list[dict[str, Any]]] = {}
    for snapshot in snapshots:
        named.setdefault(str(snapshot.get("name")), []).append(snapshot)
    return {name: _sum_counters(group) for name, group in sorted(named.items())}


class StatsBoard:
    """The latest snapshot of every process instance (dead ones keep their last counts)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self._previous: tuple[float, dict[str, dict[str, int]]] | None = None

    def update(self, payload: dict[str, Any]) -> None:
        """Take one process's stats message (the latest per process instance is kept)."""
        instance = payload.get("instance")
        if isinstance(instance, str):
            self.snapshots[instance] = payload

    def of_role(self, role: str) -> list[dict[str, Any]]:
        """The latest stats of every process of a role."""
        return [s for s in self.snapshots.values() if s.get("role") == role]

    def stream_stats(self) -> dict[str, dict[str, Any]]:
        """Per stream: the source's and the sink's counters, merged."""
        streams: dict[str, dict[str, Any]] = {}
        for role in ("source", "sink"):
            for snapshot in self.of_role(role):
                for sid, info in snapshot.get("streams", {}).items():
                    streams.setdefault(sid, {}).update(info)
        return streams

    def summaries(self) -> dict[str, Any]:
        """The sink's per-stream summaries (each identity's on-screen intervals)."""
        found: dict[str, Any] = {}
        for snapshot in self.of_role("sink"):
            found.update(snapshot.get("summaries", {}))
        return found

    def errors(self) -> list[str]:
        """The sources' error messages (streams that could not be opened or failed)."""
        return [e for s in self.of_role("source") for e in s.get("errors", [])]

    def processed(self) -> int:
        """Frames processed by the sink, all streams."""
        return sum(info.get("processed", 0) for s in self.of_role("sink") for info in s.get("streams", {}).values())

    def stages(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per role: counters, throughput over the run and since the last call, latency, queue depth, workers."""
        now = time.monotonic() if now is None else now
        elapsed = max(1e-9, now - self.started)
        counters = {role: _sum_counters(self.of_role(role)) for role in ("source", "detect", "embed", "sink")}
        sent_frames = sum(info.get("sent", 0) for s in self.of_role("source") for info in s.get("streams", {}).values())
        queues = {
            "detect": sent_frames - counters["detect"].get("received", 0),
            "embed": counters["detect"].get("sent", 0) - counters["embed"].get("received", 0),
            "sink": counters["embed"].get("sent", 0) - counters["sink"].get("received", 0),
        }
        units = {"source": ("frames", sent_frames), "detect": ("frames", counters["detect"].get("frames", 0)),
                 "embed": ("faces", counters["embed"].get("faces", 0)),
                 "sink": ("frames", counters["sink"].get("frames", 0))}  # fmt: skip
        recent: dict[str, float] = {}
        if self._previous is not None:
            then, before = self._previous
            for role, (_, total) in units.items():
                recent[role] = (total - before.get(role, {}).get("total", 0)) / max(1e-9, now - then)
        self._previous = (now, {role: {"total": total} for role, (_, total) in units.items()})
        report = {}
        for role, (unit, total) in units.items():
            report[role] = {
                "processes": len({s.get("name") for s in self.of_role(role)}),
                "unit": unit,
                "total": total,
                "per_second": round(total / elapsed, 3),
                "recent_per_second": round(recent.get(role, total / elapsed), 3),
                "latency": _mean_latency(self.of_role(role)),
                "histograms": _sum_histograms(self.of_role(role)),
                "counters": counters[role],
                "by_process": _by_process(self.of_role(role)),
            }
            if role in queues:
                report[role]["queue_depth"] = max(0, queues[role])
        return report


def format_report(stages: dict[str, dict[str, Any]], elapsed: float, final: bool = False) -> str:
    """Per-stage throughput, latency and queue depth: one line, or (final) one line per stage, averaged over the run.

    source: frames sent to the detectors and their latency (sent -> result at the sink, queues included);
    detect, embed: their rate, time per frame / face, and the messages waiting for them; sink: frames written.
    """
    rate = "per_second" if final else "recent_per_second"

    def p50(role: str, name: str) -> float | None:
        figures = stages[role]["latency"].get(name)
        return figures["p50_ms"] if figures else None

    parts = []
    for role in ("source", "detect", "embed", "sink"):
        info = stages[role]
        name = role if role in ("source", "sink") else f"{role} x{info['processes']}"
        text = f"{name}: {info[rate]:.1f} {info['unit']}/s"
        if role == "source" and p50("source", "frame") is not None:
            figures = stages["source"]["latency"]["frame"]
            text += f", latency {figures['p50_ms'] / 1000:.2f} s p50 / {figures['p99_ms'] / 1000:.2f} s p99"
        if role == "sink" and p50("sink", "capture_to_result") is not None:
            figures = stages["sink"]["latency"]["capture_to_result"]
            text += f", capture->result {figures['p50_ms']:.0f} ms p50 / {figures['p99_ms']:.0f} ms p99"
        if role == "detect" and p50("detect", "detect") is not None:
            text += f", {p50('detect', 'detect'):.0f} ms/frame"
        if role == "embed" and p50("embed", "embed_face") is not None:
            text += f", {p50('embed', 'embed_face'):.1f} ms/face"
        if "queue_depth" in info and not final:
            text += f", queue {info['queue_depth']}"
        counters = info["counters"]
        for counter in ("malformed", "duplicates", "late", "stale"):
            if counters.get(counter):
                text += f", {counters[counter]} {counter}"
        parts.append(text)
    return f"[{elapsed:6.1f} s] " + ("\n  " if final else " | ").join(parts)
