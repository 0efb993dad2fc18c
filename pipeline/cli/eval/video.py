"""`facestream eval video`: identification on a video scored frame by frame against a truth file (precision,
recall, false identifications, identity switches), on a pipeline run or an earlier run's detections."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ....enroll.evaluation import TruthFormatError, parse_truth, predictions_from_records, score_identification
from ...config import Config

log = logging.getLogger("facestream")

VIDEO_EPILOG = """\
examples:
  facestream eval video --truth tests/data/video/truth.json tests/data/video/short_hamilton_clip.mp4 \\
      --gallery tests/data/video/gallery
  facestream eval video --truth truth.json --detections out/detections.jsonl       # score an earlier run
  facestream eval video --truth truth.json --detections tests/data/golden/dlib-20.0.1-video-up1-every-frame.jsonl

The truth file (JSON) says which enrolled people are visible in which frame ranges (0-based decoded
frame indices, inclusive):
  {"video": "clip.mp4", "frames": 275, "segments": [
     {"frames": [0, 19], "present": ["Lin_Manuel_Miranda"], "optional": ["Alex_Lacamoire"]},
     {"frames": [20, 42], "present": ["Alex_Lacamoire"]},
     {"frames": [211, 274], "present": [], "unknown": 4, "note": "audience"}]}
"present": enrolled people visible (naming them is right, not naming them a miss); "optional":
visible but not fairly recognisable (too small, profile): neither counted; "unknown": how many
people who are not enrolled are visible. Frames no segment covers are not scored.

Scores, per frame: per identity, precision (frames where it was named and is there / frames where it
was named) and recall (/ frames where it is there); false identifications (faces named as someone not
in the frame); frames whose names equal the truth; identity switches (a track changing from one name
to another). --label track scores the tracker's decision per track (what `facestream run` reports),
--label match each frame's own gallery answer.

Without --detections the real pipeline runs (`facestream run`, same options and config) with --gallery
(a gallery database, or a DIR/<person>/<photos> folder enrolled into a temporary one).
"""


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if not line.endswith("\n"):  # the last line of a writer killed mid-line (see sinks.writers)
                    log.warning("%s line %d: cut off (its writer was killed while writing it): skipped", path,
                                number)  # fmt: skip
                    break
                raise ValueError(f"{path} line {number}: not JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object")
            records.append(record)
    return records


def _pick_stream(records: list[dict[str, Any]], stream: str | None, path: str) -> list[dict[str, Any]]:
    streams = sorted({r["stream_id"] for r in records if "stream_id" in r})
    if stream is not None:
        if stream not in streams:
            raise ValueError(f"{path}: no stream {stream!r} (streams: {', '.join(streams) or 'none'})")
        return [r for r in records if r.get("stream_id") == stream]
    if len(streams) > 1:
        raise ValueError(f"{path} holds {len(streams)} streams ({', '.join(streams)}): pick one with --stream")
    return records


def _gallery_db(args: argparse.Namespace, config: Config, workdir: Path) -> str:
    """A gallery database path: --gallery itself, or a temporary one enrolled from a DIR/<person>/ folder."""
    source = Path(args.gallery or config.gallery.path)
    if not source.is_dir():
        if not source.is_file():
            raise ValueError(f"--gallery {source}: no such gallery database or folder")
        return str(source)
    from ....engines.faces import FaceAnalyzer
    from ....enroll.gallery import Gallery
    from ...domain.enrolment import enrol_images, folder_people, policy_from_config, summarise

    people = folder_people(source)
    path = workdir / "gallery.db"
    policy = policy_from_config(config)
    analyzer = FaceAnalyzer.from_config(config)
    reports = []
    with Gallery.from_config(config.gallery, path=str(path), threads=config.engine.threads) as gallery:
        for name, paths in people.items():
            reports += enrol_images(gallery, analyzer, name, paths, policy)
    for report in reports:
        if report.status == "failed":
            log.warning("gallery %s: %s", report.path, report.reason)
    counts = summarise(reports)
    log.info("enrolled %d people from %s (%d photos, %d failed)", len(people), source, counts["added"],
             counts["failed"])  # fmt: skip
    return str(path)


def cmd_video(args: argparse.Namespace, config: Config) -> int:
    try:
        truth = parse_truth(json.loads(Path(args.truth).read_text(encoding="utf-8")), args.truth)
    except (OSError, UnicodeDecodeError) as error:
        log.error("%s: cannot read: %s", args.truth, getattr(error, "strerror", None) or error)
        return 2
    except json.JSONDecodeError as error:
        log.error("%s: not JSON: %s (line %d)", args.truth, error.msg, error.lineno)
        return 2
    except TruthFormatError as error:
        log.error("%s", error)
        return 2
    if (args.video is None) == (args.detections is None):
        log.error("give either VIDEO (to run the pipeline) or --detections FILE (to score an earlier run)")
        return 2
    run: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="facestream-eval-") as work:
        detections = args.detections
        if detections is None:
            try:
                code, run = _run_pipeline(args, config, Path(work))
            except ValueError as error:
                log.error("%s", error)
                return 2
            if code != 0:
                log.error("the pipeline stopped with exit code %d", code)
                return code
            detections = run["detections"]
        try:
            records = _pick_stream(_read_jsonl(detections), args.stream, detections)
            frames = predictions_from_records(records, label=args.label)
            label = args.label if not records or "frame_index" in records[0] else "per-frame labels (dlib format)"
        except (OSError, ValueError) as error:
            log.error("%s", error)
            return 2
    if truth.frames is not None and frames and max(frames) >= truth.frames:
        log.warning("the predictions reach frame %d but the truth file says the video has %d frames",
                    max(frames), truth.frames)  # fmt: skip
    score = score_identification(truth, frames)
    report = {
        "truth": str(args.truth),
        "detections": args.detections or args.save_detections,
        "label": label,
        **({"run": {k: v for k, v in run.items() if k != "detections"}} if run else {}),
        **score.to_json(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(describe_video_report(report))
    return 0


def _run_pipeline(args: argparse.Namespace, config: Config, work: Path) -> tuple[int, dict[str, Any]]:
    from ...runtime.supervisor import RunOptions, run_pipeline

    if not Path(args.video).exists():
        raise ValueError(f"{args.video}: no such video file or folder")
    if args.detect_every is not None:
        config.set("pipeline.detect_every", args.detect_every, "--detect-every")
    if args.upsample is not None:
        config.set("detector.upsample", args.upsample, "--upsample")
    if args.threshold is not None:
        config.set("gallery.distance_threshold", args.threshold, "--threshold")
    gallery = _gallery_db(args, config, work)
    detections = args.save_detections or str(work / "detections.jsonl")
    quiet = bool(getattr(args, "quiet", False))
    options = RunOptions(sources=[str(args.video)], detections=detections, gallery=gallery, workers=args.workers,
                         progress=not quiet, report=False,
                         log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower())  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's on-screen summary must not mix with our output
        code = run_pipeline(config, options)
    seconds = time.perf_counter() - started
    settings = {"detect_every": config.pipeline.detect_every, "upsample": config.detector.upsample,
                "distance_threshold": config.gallery.distance_threshold, "seconds": round(seconds, 1),
                "detections": detections}  # fmt: skip
    return code, settings


def describe_video_report(report: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = []
    if "run" in report:
        run = report["run"]
        lines.append(f"pipeline: detect every {run['detect_every']}, upsample {run['upsample']}, "
                     f"threshold {run['distance_threshold']:g}, {run['seconds']} s")  # fmt: skip
    lines.append(
        f"frames scored: {report['scored_frames']} ({report['frames_without_prediction']} without a "
        f"prediction); names exactly right in {report['exact_frames']}; labels: {report['label']}"
    )
    for name, s in report["identities"].items():
        lines.append(
            f"  {name}: precision {pct(s['precision'])} ({s['correct_frames']}/{s['named_frames']} named "
            f"frames), recall {pct(s['recall'])} ({s['correct_frames']}/{s['truth_frames']} frames present)"
        )
    by = ", ".join(f"{k} {v}" for k, v in report["false_by_identity"].items())
    lines.append(
        f"false identifications: {report['false_identifications']} faces in "
        f"{report['frames_with_false_identification']} frames{f' ({by})' if by else ''}, "
        f"{report['false_in_frames_with_unknown_people']} of them where unenrolled people are visible"
    )
    lines.append(f"tracks: {report['tracks']}, identity switches: {report['identity_switches']}")
    for track in report["tracks_with_switches"]:
        lines.append(f"  track {track['track_id']} (frames {track['first_frame']}-{track['last_frame']}): "
                     f"{' -> '.join(track['identities'])}")  # fmt: skip
    return "\n".join(lines)


def add_video_parser(what: argparse._SubParsersAction) -> None:
    """Add `eval video` to the `eval` sub-commands."""
    video = what.add_parser(
        "video", help="identification on a video with ground truth: precision, recall, false ids, switches",
        description="Run the pipeline on a video (or read an earlier run's --detections) and score it "
        "frame by frame against a truth file.",
        epilog=VIDEO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    video.add_argument("video", nargs="?", metavar="VIDEO", help="video file or image folder to run the pipeline on")
    video.add_argument("--truth", required=True, metavar="FILE.json", help="who is visible when (format below)")
    video.add_argument("--gallery", metavar="DB|DIR",
                       help="gallery database, or DIR/<person>/<photos> to enrol into a temporary one "
                            "(default gallery.path)")  # fmt: skip
    video.add_argument("--detections", metavar="FILE",
                       help="score this detections file (facestream run --detections, or dlib's golden "
                            "per-frame labels) instead of running the pipeline")  # fmt: skip
    video.add_argument("--save-detections", metavar="FILE", help="keep the run's detections in FILE")
    video.add_argument("--label", choices=("track", "match"), default="track",
                       help="score the track's identity (default) or each frame's own gallery answer")  # fmt: skip
    video.add_argument("--stream", metavar="ID", help="the stream to score in a multi-stream detections file")
    video.add_argument("--detect-every", type=int, metavar="K", help="as in `facestream run`")
    video.add_argument("--workers", type=int, metavar="N", help="detect+align worker processes")
    video.add_argument("--upsample", type=int, choices=range(0, 4), metavar="N", help="detector upsampling")
    video.add_argument("--threshold", type=float, metavar="D", help="gallery.distance_threshold for this run")
    video.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    video.set_defaults(handler=cmd_video)
