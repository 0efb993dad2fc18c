"""Live monitoring on this machine: followers and scans (detector.follow live) against today's full-frame path.

    python bench/live.py [--passes 2] [--frames N] [--file-frames N] [--skip-720p] [--json]

Runs, one after the other (never two at once), each `facestream run --source loop:VIDEO` playing a video
as a camera would (paced at 29.97 frames/s by the source; frames the pipeline cannot keep up with are
dropped), for --passes passes of the clip (or --frames captured frames):

* ``follow-360p``: the demo clip (tests/data/video/short_hamilton_clip.mp4, 640x360), detector.follow live;
* ``follow-720p``: the same clip upscaled x2 to 1280x720 (made here with cv2.resize, INTER_LINEAR, FFV1),
  detector.follow live;
* ``full-360p``: the demo clip with detector.follow off (full-frame detection of every frame it takes);
* ``file-*``: `facestream run` on the clip file (every frame, in order), follow off and follow all: frames/s
  over the wall time from launch to exit less the start-up (launch until the last "ready" log line, as
  bench/pipeline.py measures it).

Per live run:

* ``frames_with_result / frames_captured`` (captured: every frame the paced capture read, whether processed
  or dropped);
* ``detected_on_own_frame``: of the face boxes in --detections, the share whose box_source is "scan" or
  "region" (a detector ran for it on that very frame) rather than "carried";
* ``capture_to_result_ms``: p50 / p99 of the sink's capture-to-result latency over the frames it processed;
* ``time_to_name_s``: per appearance of an enrolled person (a truth.json segment start, each pass), from the
  capture time of its first frame to the capture time of the frame whose result first named that person
  on a track (the event's own timestamp); add capture_to_result for the moment the event left the sink;
* ``agrees_with_full_frame``: processed frames whose set of boxes equals dlib's full-frame boxes of that
  clip frame (tests/data/golden/dlib-20.0.1-video-up1-every-frame.jsonl; 640x360 only: there is no
  full-frame reference for the upscaled clip, reported as null);
* against tests/data/video/truth.json (`enroll.evaluation.score_identification`, per pass, summed):
  ``recall`` (frames where a present enrolled person was named / frames where they are present; frames
  without a result count as not named) and ``wrong_person_frames``.

Ratios here are at *unequal* work: followers run the detector on regions, not on the whole frame; the
full-frame run is today's path at equal work per processed frame.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import CLIP_FRAMES, GOLDEN, TRUTH_FILE, VIDEO, enroll, facestream_command, startup_seconds

from common import emit, machine

FPS = 29.97


def upscale(source: Path, target: Path, size: tuple[int, int] = (1280, 720)) -> Path:
    """The clip resized to `size` (lossless FFV1, 29.97 frames/s)."""
    capture = cv2.VideoCapture(str(source))
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"FFV1"), FPS, size)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
    writer.release()
    capture.release()
    return target


def run(name: str, source: str, follow: str, gallery: Path, work: Path, max_frames: int) -> dict:
    out = work / name
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"detector": {"follow": follow}}))
    command = [*facestream_command(), "--config", str(out / "config.yaml"), "run", "--no-progress",
               "--source", f"clip={source}", "--gallery", str(gallery), "--events", str(out / "events.jsonl"),
               "--detections", str(out / "detections.jsonl"), "--stats", str(out / "stats.json")]  # fmt: skip
    if max_frames:
        command += ["--max-frames", str(max_frames)]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    wall = time.time() - launched
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    return {
        "stats": stats,
        "records": records,
        "events": events,
        "startup_s": startup_seconds(done.stderr, launched),
        "wall_s": wall,
    }


def golden_boxes() -> dict[int, list[list[int]]]:
    lines = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    return {g["frame"]: sorted(f["box"] for f in g["faces"]) for g in lines}


def truth_scores(records: list[dict]) -> dict:
    """Recall and wrong-person frames against truth.json, each pass of the loop scored on its own, summed."""
    from facestream.enroll.evaluation import parse_truth, predictions_from_records, score_identification

    truth = parse_truth(json.loads(TRUTH_FILE.read_text()), str(TRUTH_FILE))
    passes: dict[int, list[dict]] = {}
    for record in records:
        passes.setdefault(record["frame_index"] // CLIP_FRAMES, []).append(
            {**record, "frame_index": record["frame_index"] % CLIP_FRAMES}
        )
    present = named = wrong = 0
    for pass_records in passes.values():
        score = score_identification(truth, predictions_from_records(pass_records))
        present += sum(s.truth_frames for s in score.identities.values())
        named += sum(s.correct_frames for s in score.identities.values())
        wrong += score.frames_with_false_identification
    return {"recall": round(named / present, 4) if present else None, "wrong_person_frames": wrong,
            "passes_scored": len(passes)}  # fmt: skip


def time_to_name(records: list[dict], events: list[dict], captured: int) -> dict:
    """Seconds from an enrolled person's first frame on screen (truth segment start) to the first event naming
    them on a track at or after it, per appearance and pass (capture times; see the module docstring)."""
    if not records:
        return {"appearances": 0}
    start = float(np.median([r["timestamp"] - r["frame_index"] / FPS for r in records]))  # capture of frame 0
    segments = json.loads(TRUTH_FILE.read_text())["segments"]
    named = [e for e in events if e["event"] == "track_identified"]
    delays, never = [], 0
    for first_pass_frame in range(0, captured, CLIP_FRAMES):
        for segment in segments:
            first, last = segment["frames"]
            for person in segment.get("present") or []:
                begin, end = first_pass_frame + first, first_pass_frame + last
                if begin >= captured:
                    continue
                hits = [e for e in named if e["identity"] == person and begin <= e["frame_index"] <= end]
                if hits:
                    delays.append(min(e["timestamp"] for e in hits) - (start + begin / FPS))
                else:
                    never += 1
    return {"appearances": len(delays) + never, "never_named": never,
            "median_s": round(float(np.median(delays)), 3) if delays else None,
            "max_s": round(float(max(delays)), 3) if delays else None}  # fmt: skip


def summarise(result: dict, reference: dict[int, list[list[int]]] | None) -> dict:
    stats, records, events = result["stats"], result["records"], result["events"]
    stream = next(iter(stats.get("streams", {}).values()), {})
    captured = int(stream.get("read", 0)) + int(stream.get("dropped", 0))
    sources = [f["box_source"] for r in records for f in r["faces"]]
    own = sum(s in ("scan", "region") for s in sources)
    latency = stats.get("stages", {}).get("sink", {}).get("latency", {}).get("capture_to_result", {})
    agree = None
    if reference is not None:
        compared = [r for r in records if r["detected"] or not r["faces"]]
        agree = sum(sorted(f["box"] for f in r["faces"]) == reference[r["frame_index"] % CLIP_FRAMES]
                    for r in compared)  # fmt: skip
    return {
        "frames_captured": captured,
        "frames_with_result": len(records),
        "result_share": round(len(records) / captured, 4) if captured else None,
        "faces": len(sources),
        "box_sources": {name: sources.count(name) for name in ("scan", "region", "carried")},
        "detected_on_own_frame": round(own / len(sources), 4) if sources else None,
        "capture_to_result_ms": {"p50": latency.get("p50_ms"), "p99": latency.get("p99_ms")},
        "time_to_name_s": time_to_name(records, events, captured),
        "agrees_with_full_frame": agree,
        "agreement_frames": len(records) if reference is not None else None,
        **truth_scores(records),
        "follow": stats.get("stages", {}).get("detect", {}).get("counters", {}),
    }


def file_run(name: str, follow: str, gallery: Path, work: Path, frames: int) -> dict:
    result = run(name, str(VIDEO), follow, gallery, work, frames)
    elapsed = result["wall_s"] - (result["startup_s"] or 0.0)  # models loaded -> process exit
    processed = len(result["records"])
    return {"frames": processed, "elapsed_s": round(elapsed, 2), "startup_s": result["startup_s"],
            "frames_per_s": round(processed / elapsed, 2) if elapsed else None,
            "box_sources": {n: sum(f["box_source"] == n for r in result["records"] for f in r["faces"])
                            for n in ("scan", "region", "carried")},
            **truth_scores(result["records"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=2, help="passes of the clip per live run (default 2)")
    parser.add_argument("--frames", type=int, default=0, help="captured frames per live run instead of --passes")
    parser.add_argument("--file-frames", type=int, default=CLIP_FRAMES, help="frames of the file-mode runs")
    parser.add_argument("--skip-720p", action="store_true", help="leave out the 1280x720 live run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    live_frames = args.frames or args.passes * CLIP_FRAMES
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        work = Path(tmp)
        gallery = work / "gallery.db"
        enroll(gallery)
        reference = golden_boxes()
        runs: dict[str, dict] = {}
        runs["follow-360p"] = summarise(run("follow-360p", f"loop:{VIDEO}", "live", gallery, work, live_frames),
                                        reference)  # fmt: skip
        if not args.skip_720p:
            big = upscale(VIDEO, work / "clip-720p.avi")
            runs["follow-720p"] = summarise(run("follow-720p", f"loop:{big}", "live", gallery, work, live_frames),
                                            None)  # fmt: skip
        runs["full-360p"] = summarise(run("full-360p", f"loop:{VIDEO}", "off", gallery, work, live_frames), reference)
        files = {
            "file-full": file_run("file-full", "off", gallery, work, args.file_frames),
            "file-follow": file_run("file-follow", "all", gallery, work, args.file_frames),
        }
    result = {"benchmark": "live", "machine": machine(), "fps": FPS, "live_frames": live_frames,
              "live": runs, "file": files}  # fmt: skip
    table = [f"{'run':<12} {'result/captured':>16} {'own-frame boxes':>16} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'name s':>7} {'recall':>7} {'wrong':>6} {'agree':>9}"]  # fmt: skip
    for name, r in runs.items():
        agree = "-" if r["agrees_with_full_frame"] is None else f"{r['agrees_with_full_frame']}/{r['agreement_frames']}"
        table.append(
            f"{name:<12} {r['frames_with_result']:>7}/{r['frames_captured']:<8} {r['detected_on_own_frame']!s:>16} "
            f"{r['capture_to_result_ms']['p50']!s:>8} {r['capture_to_result_ms']['p99']!s:>8} "
            f"{r['time_to_name_s'].get('max_s')!s:>7} {r['recall']!s:>7} {r['wrong_person_frames']:>6} {agree:>9}"
        )
    for name, r in files.items():
        table.append(f"{name:<12} {r['frames']} frames, {r['frames_per_s']} frames/s, recall {r['recall']}, "
                     f"wrong-person frames {r['wrong_person_frames']}")  # fmt: skip
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
