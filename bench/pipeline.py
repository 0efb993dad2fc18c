"""End to end: `facestream run` on the demo clip against a face_recognition-style dlib loop.

    python bench/pipeline.py [--detect-every 1 2] [--dlib-frames 4] [--workers N]
                             [--live-detect-every 1 2] [--live-passes 3] [--json]

1. ours: the gallery tests/data/video/gallery is enrolled into a temporary database
   (`facestream enroll import`), then `facestream run --no-progress` processes the whole demo clip
   (tests/data/video/short_hamilton_clip.mp4, 275 frames, 640x360) once per --detect-every K, as a
   subprocess: wall time from launch to exit, frames/s = frames / wall. Start-up (launch until the
   last worker logged "ready", i.e. models loaded) comes from the run's log lines, the run's own
   elapsed time and per-stage latencies from its --stats JSON.
2. dlib: the loop of face_recognition's video example in this process, on --dlib-frames frames
   spread over the clip: cv2 decode -> cnn_face_detection_model_v1(img, 1) -> shape_predictor (5
   points) -> compute_face_descriptor -> nearest gallery person at distance <= 0.6 (gallery encoded
   the same way with dlib). dlib takes seconds per frame here, so each frame is timed once.
3. ratio ours fps / dlib fps per K, and identity agreement of our --detections (each face's track
   identity) with dlib's every-frame result (tests/data/golden/dlib-20.0.1-video-up1-every-frame.jsonl):
   per frame the set of names other than "unknown" on each side.

4. live: the clip played as a camera would deliver it (`--source loop:VIDEO`, paced at its native
   29.97 frames/s, --live-passes times over, `--max-frames`), per --live-detect-every K. Frames the
   pipeline cannot keep up with are dropped at the source (counted). Latency from frame capture
   (wall clock when the capture thread got the frame) to its result and events at the sink
   (`capture_to_result` in the run's --stats, every processed frame): p50, p99, max. Identity
   agreement as in 3, on the frames that were processed (frame index modulo the clip length).

Runs are sequential (never both at once): the machine's cores go to one side at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, machine

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
VIDEO = DATA / "video" / "short_hamilton_clip.mp4"
GALLERY_DIR = DATA / "video" / "gallery"
GOLDEN = DATA / "golden" / "dlib-20.0.1-video-up1-every-frame.jsonl"
TRUTH_FILE = DATA / "video" / "truth.json"  # who is on screen per frame range, checked by eye


def load_truth() -> dict[int, set[str]]:
    """Per frame, the names it is right to give (present or optional in the truth file)."""
    truth: dict[int, set[str]] = {}
    for segment in json.loads(TRUTH_FILE.read_text())["segments"]:
        first, last = segment["frames"]
        for frame in range(first, last + 1):
            truth[frame] = set(segment.get("present") or []) | set(segment.get("optional") or [])
    return truth


TRUTH = load_truth()
CLIP_FRAMES = 275
UNKNOWN = "unknown"
TOLERANCE = 0.6
READY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*: ready \(")


def facestream_command() -> list[str]:
    script = Path(sys.executable).parent / "facestream"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "facestream.pipeline.cli.main"]


def enroll(gallery: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*facestream_command(), "enroll", "import", str(GALLERY_DIR), "--gallery", str(gallery)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return time.perf_counter() - started


def startup_seconds(log_text: str, launched_epoch: float) -> float | None:
    """Launch until the last process logged "ready" (models loaded), from the log's local timestamps."""
    stamps = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log_text.splitlines()
        if (m := READY.match(line))
    ]
    return max(stamps) - launched_epoch if stamps else None


def run_ours(k: int, gallery: Path, work: Path, workers: int | None, live_passes: int = 0) -> dict:
    """One `facestream run` of the clip; live_passes > 0: played as a live camera that many times over."""
    tag = f"k{k}-live" if live_passes else f"k{k}"
    out = {name: work / f"{name}-{tag}.{ext}" for name, ext in (("events", "jsonl"), ("detections", "jsonl"),
                                                                 ("stats", "json"))}  # fmt: skip
    source = f"loop:{VIDEO}" if live_passes else str(VIDEO)
    command = [*facestream_command(), "run", "--no-progress", "--source", source,
               "--events", str(out["events"]), "--detections", str(out["detections"]), "--stats", str(out["stats"]),
               "--gallery", str(gallery), "--detect-every", str(k)]  # fmt: skip
    if workers:
        command += ["--workers", str(workers)]
    if live_passes:
        command += ["--max-frames", str(live_passes * CLIP_FRAMES)]
    launched_epoch, started = time.time(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"facestream run --detect-every {k} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stats = json.loads(out["stats"].read_text())
    lines = [json.loads(line) for line in out["detections"].read_text().splitlines() if line.strip()]
    frames = len(lines)
    stages = stats.get("stages", {})
    latency = {f"{role}.{name}": figures for role, info in stages.items()
               for name, figures in (info.get("latency") or {}).items()}  # fmt: skip
    startup = startup_seconds(done.stderr, launched_epoch)
    if live_passes:
        stream = next(iter(stats.get("streams", {}).values()), {})
        by_frame: dict[int, dict] = {}
        for line in lines:  # later passes overwrite earlier ones: agreement counts each clip frame once
            by_frame[line["frame_index"] % CLIP_FRAMES] = line
        return {
            "detect_every": k,
            "passes": live_passes,
            "captured": stream.get("read", 0) + stream.get("dropped", 0),
            "processed": frames,
            "dropped_at_source": stream.get("dropped"),
            "stale_at_detector": stages.get("detect", {}).get("counters", {}).get("stale", 0),
            "wall_s": wall,
            "capture_to_result_ms": stages.get("sink", {}).get("latency", {}).get("capture_to_result"),
            "detections": by_frame,
        }
    return {
        "detect_every": k,
        "frames": frames,
        "wall_s": wall,
        "fps": frames / wall,
        "startup_s": startup,
        "fps_after_startup": frames / (wall - startup) if startup is not None else None,
        "elapsed_s_stats": stats.get("elapsed_s"),
        "detector_runs": stages.get("detect", {}).get("total"),
        "faces_embedded": stages.get("embed", {}).get("total"),
        "latency_ms": latency,
        "detections": {line["frame_index"]: line for line in lines},
    }


def run_dlib(indices: list[int]) -> dict:
    import cv2
    import dlib
    import numpy as np

    from facestream.engines.models import model_path

    t0 = time.perf_counter()
    detector = dlib.cnn_face_detection_model_v1(str(model_path("detector")))
    predictor = dlib.shape_predictor(str(model_path("landmarks")))
    embedder = dlib.face_recognition_model_v1(str(model_path("embedder")))
    load_s = time.perf_counter() - t0

    def encode(rgb: np.ndarray) -> tuple[list, list[np.ndarray], dict[str, float]]:
        t = time.perf_counter()
        detections = detector(rgb, 1)
        t_detect = time.perf_counter() - t
        t = time.perf_counter()
        descriptors = [np.array(embedder.compute_face_descriptor(rgb, predictor(rgb, d.rect))) for d in detections]
        return detections, descriptors, {"detect_s": t_detect, "landmarks_embed_s": time.perf_counter() - t}

    names, known = [], []
    for person in sorted(p for p in GALLERY_DIR.iterdir() if p.is_dir()):
        for image in sorted(person.iterdir()):
            rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
            detections, descriptors, _ = encode(rgb)
            if descriptors:  # face_recognition's example: the first face of each known image
                names.append(person.name)
                known.append(descriptors[0])
    known_array = np.array(known)

    capture = cv2.VideoCapture(str(VIDEO))
    wanted, results, index = set(indices), {}, 0
    while wanted - results.keys():
        t = time.perf_counter()
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        decode_s = time.perf_counter() - t
        if index in wanted:
            started = time.perf_counter()
            detections, descriptors, parts = encode(rgb)
            faces = []
            for d, descriptor in zip(detections, descriptors):
                distances = np.linalg.norm(known_array - descriptor, axis=1)
                best = int(np.argmin(distances))
                label = names[best] if distances[best] <= TOLERANCE else UNKNOWN
                r = d.rect
                faces.append({"box": [r.left(), r.top(), r.right(), r.bottom()], "label": label,
                              "distance": float(distances[best])})  # fmt: skip
            seconds = decode_s + time.perf_counter() - started
            results[index] = {"frame": index, "seconds": seconds, "decode_s": decode_s, **parts, "faces": faces}
        index += 1
    capture.release()
    total = sum(r["seconds"] for r in results.values())
    frames = [results[i] for i in sorted(results)]
    return {"model_load_s": load_s, "gallery_people": sorted(set(names)), "frames": frames,
            "seconds": total, "fps": len(frames) / total if total else None}  # fmt: skip


def golden() -> dict[int, dict]:
    return {(record := json.loads(line))["frame"]: record for line in GOLDEN.read_text().splitlines() if line.strip()}


def agreement(detections: dict[int, dict], reference: dict[int, dict], only_processed: bool = False) -> dict:
    """Per frame: names other than unknown, ours (each face's track identity) against dlib's labels."""
    agree, false_names, missed, wrong = 0, [], [], []
    ours_counts: dict[str, int] = {}
    dlib_counts: dict[str, int] = {}
    frames = sorted(f for f in reference if f in detections) if only_processed else sorted(reference)
    for frame in frames:
        ours = {f["identity"] for f in detections.get(frame, {}).get("faces", [])} - {UNKNOWN}
        theirs = {f["label"] for f in reference[frame]["faces"]} - {UNKNOWN}
        for name in ours:
            ours_counts[name] = ours_counts.get(name, 0) + 1
        for name in theirs:
            dlib_counts[name] = dlib_counts.get(name, 0) + 1
        agree += ours == theirs
        if ours - theirs:
            false_names.append(frame)
        allowed = TRUTH.get(frame)
        if allowed is not None and ours - allowed:
            wrong.append(frame)
        if theirs - ours:
            missed.append(frame)
    return {
        "frames": len(frames),
        "frames_missing_in_ours": sum(f not in detections for f in frames),
        "agree": agree,
        "false_name_frames": len(false_names),
        "wrong_person_frames": len(wrong),
        "wrong_person_examples": wrong[:12],
        "missed_name_frames": len(missed),
        "false_name_examples": false_names[:12],
        "missed_name_examples": missed[:12],
        "ours_frames_per_identity": dict(sorted(ours_counts.items())),
        "dlib_frames_per_identity": dict(sorted(dlib_counts.items())),
    }


def spread(count: int, total: int) -> list[int]:
    return sorted({int((i + 0.5) * total / count) for i in range(count)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1, 2], metavar="K")
    parser.add_argument("--dlib-frames", type=int, default=4, help="frames dlib processes (spread over the clip)")
    parser.add_argument("--workers", type=int, default=None, help="facestream run --workers (default: config)")
    parser.add_argument(
        "--live-detect-every",
        type=int,
        nargs="*",
        default=[1, 2],
        metavar="K",
        help="live runs (clip played at its 29.97 fps as a camera), per K; none to skip",
    )
    parser.add_argument("--live-passes", type=int, default=3, help="times the clip is played in each live run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    reference = golden()
    total_frames = len(reference)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        gallery = work / "gallery.db"
        enroll_s = enroll(gallery)
        ours = [run_ours(k, gallery, work, args.workers) for k in args.detect_every]
        live = [run_ours(k, gallery, work, args.workers, args.live_passes) for k in args.live_detect_every]
    dlib_run = run_dlib(spread(args.dlib_frames, total_frames)) if args.dlib_frames > 0 else None

    dlib_vs_golden = []
    if dlib_run:
        for record in dlib_run["frames"]:
            want = reference[record["frame"]]
            dlib_vs_golden.append(
                sorted(f["label"] for f in record["faces"]) == sorted(f["label"] for f in want["faces"])
                and sorted(f["box"] for f in record["faces"]) == sorted(f["box"] for f in want["faces"])
            )
    rows = []
    for run in ours:
        detections = run.pop("detections")
        run["ratio_vs_dlib"] = run["fps"] / dlib_run["fps"] if dlib_run and dlib_run["fps"] else None
        run["identity_agreement"] = agreement(detections, reference)
        rows.append(run)
    for run in live:
        run["identity_agreement"] = agreement(run.pop("detections"), reference, only_processed=True)
    result = {"benchmark": "pipeline", "machine": machine(), "video": str(VIDEO.relative_to(ROOT)),
              "frames": total_frames, "enroll_s": enroll_s, "ours": rows, "live": live, "dlib": dlib_run,
              "dlib_matches_golden_on_sampled_frames": dlib_vs_golden}  # fmt: skip

    table = [f"pipeline end to end: {result['video']} ({total_frames} frames), gallery enrolled in {enroll_s:.1f} s"]
    if dlib_run:
        frames = dlib_run["frames"]
        table.append(
            f"dlib (face_recognition-style loop, upsample 1) on frames {[f['frame'] for f in frames]}: "
            f"{dlib_run['fps']:.3f} frames/s ({dlib_run['seconds'] / len(frames):.1f} s/frame; models loaded in "
            f"{dlib_run['model_load_s']:.1f} s, not counted); same boxes+labels as the golden file on "
            f"{sum(dlib_vs_golden)}/{len(dlib_vs_golden)} of them"
        )
        for f in frames:
            labels = ", ".join(f"{x['label']} {x['distance']:.3f}" for x in f["faces"]) or "no face"
            table.append(f"  frame {f['frame']:>3}: {f['seconds']:.2f} s (decode {f['decode_s'] * 1000:.0f} ms, "
                         f"detect {f['detect_s']:.2f} s, landmarks+descriptors {f['landmarks_embed_s']:.2f} s): "
                         f"{labels}")  # fmt: skip
    table.append(f"{'K':>3} {'wall s':>7} {'start s':>8} {'fps':>6} {'fps w/o start':>14} {'vs dlib':>8} "
                 f"{'det runs':>9} {'agree':>9} {'extra':>6} {'missed':>7} {'wrong':>6}")  # fmt: skip
    for r in rows:
        a = r["identity_agreement"]
        start = "n/a" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        no_start = "n/a" if r["fps_after_startup"] is None else f"{r['fps_after_startup']:.2f}"
        ratio = "n/a" if r["ratio_vs_dlib"] is None else f"{r['ratio_vs_dlib']:.1f}x"
        table.append(f"{r['detect_every']:>3} {r['wall_s']:>7.1f} {start:>8} {r['fps']:>6.2f} {no_start:>14} "
                     f"{ratio:>8} {r['detector_runs']:>9} {a['agree']:>5}/{a['frames']:<3} "
                     f"{a['false_name_frames']:>6} {a['missed_name_frames']:>7} "
                     f"{a['wrong_person_frames']:>6}")  # fmt: skip
    table.append(
        "agree: frames whose set of names (unknown excluded) equals dlib's every-frame golden; extra: frames "
        "where we name someone dlib leaves unknown; missed: frames where dlib names someone we do not; wrong: "
        "frames where we name someone who is not on screen (tests/data/video/truth.json)"
    )
    for r in rows:
        a = r["identity_agreement"]
        table.append(f"K={r['detect_every']} frames per identity: ours {a['ours_frames_per_identity']}, "
                     f"dlib {a['dlib_frames_per_identity']}; extra-name frames e.g. {a['false_name_examples']}, "
                     f"missed e.g. {a['missed_name_examples']}, wrong e.g. {a['wrong_person_examples']}")  # fmt: skip
    table.append(
        "file-mode latency from --stats (ms, p50 / p99; source.frame = sent to the detectors -> result "
        "acknowledged by the sink, queueing behind the in-flight window included):"
    )
    for r in rows:
        parts = [f"{name} {v['p50_ms']:.0f} / {v['p99_ms']:.0f}" for name, v in r["latency_ms"].items()]
        table.append(f"  K={r['detect_every']}: " + "; ".join(parts))
    if live:
        table.append(
            f"live: the clip played {args.live_passes}x as a camera at its native 29.97 frames/s "
            "(`--source loop:VIDEO`); latency = frame capture -> its result and events at the sink"
        )
        table.append(f"{'K':>3} {'captured':>9} {'processed':>10} {'dropped':>8} {'p50 ms':>7} {'p99 ms':>7} "
                     f"{'max ms':>7} {'agree':>9} {'extra':>6} {'missed':>7} {'wrong':>6}")  # fmt: skip
        for r in live:
            a, lat = r["identity_agreement"], r["capture_to_result_ms"] or {}
            table.append(f"{r['detect_every']:>3} {r['captured']:>9} {r['processed']:>10} "
                         f"{r['dropped_at_source'] or 0:>8} {lat.get('p50_ms', float('nan')):>7.0f} "
                         f"{lat.get('p99_ms', float('nan')):>7.0f} {lat.get('max_ms', float('nan')):>7.0f} "
                         f"{a['agree']:>5}/{a['frames']:<3} {a['false_name_frames']:>6} "
                         f"{a['missed_name_frames']:>7} {a['wrong_person_frames']:>6}")  # fmt: skip
        table.append("live agree: over the clip frames that were processed at least once (latest pass counts)")
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
