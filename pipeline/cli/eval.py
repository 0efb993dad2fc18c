"""`facestream eval pairs` and `facestream eval video`: accuracy figures anyone can reproduce on their own data.

Wired into the `facestream` command by pipeline/cli/main.py (``add_eval_commands(commands)``). The figures
come from the pure functions of `enroll.evaluation`; this module finds the faces, keeps a descriptor
cache, runs the pipeline and writes the reports.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...enroll.evaluation import (
    PairsFile,
    PairsFormatError,
    TruthFormatError,
    accuracy,
    kfold_accuracy,
    parse_pairs,
    parse_truth,
    predictions_from_records,
    roc_curve,
    score_identification,
    tar_at_far,
)
from ..config import Config

log = logging.getLogger("facestream")

CACHE_VERSION = 1
TARGET_FARS = (1e-3, 1e-2)
DEFAULT_FALLBACK_THRESHOLD = -1.0
LFW_FACE_FRACTION = 1 / 2.2  # LFW images are the Viola-Jones face box enlarged 2.2 times, centred

PAIRS_EPILOG = f"""\
examples:
  facestream eval pairs --pairs lfw/pairs.txt --root lfw/images          # LFW View 2: 6000 pairs, 10 folds
  facestream eval pairs --pairs pairs.txt --root lfw --jitters 10 --upsample 0 --json
  facestream eval pairs --pairs pairs.txt --root lfw --threshold 0.55 --roc roc.png --csv distances.csv

The pairs file is LFW's pairs.txt: a header "FOLDS PAIRS" (10 300), then per fold PAIRS matched lines
"Name n1 n2" and PAIRS mismatched lines "Name1 n1 Name2 n2"; image n of Name is ROOT/Name/Name_%04d.jpg.
Other counts work (a header of one number is one fold).

Each image gives one descriptor: the detected face nearest the image centre (LFW centres the subject).
When the detector (detector.threshold) finds none: the nearest detection at --fallback-threshold
(default {DEFAULT_FALLBACK_THRESHOLD}), else a centred square of 1/2.2 of the shorter side (LFW crops
are the Viola-Jones box enlarged 2.2 times). How many images took each path is printed.

Figures: accuracy at --threshold (default gallery.distance_threshold, dlib's 0.6); the protocol's
k-fold accuracy (each fold at the threshold best on the other folds; mean and standard deviation);
TAR at FAR 1e-3 and 1e-2. Outputs: the ROC curve (--roc, PNG) and every pair's distance (--csv).
Descriptors are cached by image sha256 + model files + options, so a re-run or another --threshold is quick.
"""

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


# ------------------------------------------------------------------------------------------------
# descriptors for verification, cached


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DescriptorCache:
    """SQLite file in the facestream cache dir: key -> descriptor, how the face was found, box."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # owner-only, as the gallery: descriptors are biometric data
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS descriptors (key TEXT PRIMARY KEY, descriptor BLOB NOT NULL, "
            "method TEXT NOT NULL, box TEXT NOT NULL)"
        )

    def get(self, key: str) -> tuple[np.ndarray, str, list[int]] | None:
        row = self.db.execute("SELECT descriptor, method, box FROM descriptors WHERE key = ?", (key,)).fetchone()
        if row is None or len(row[0]) != 128 * 4:
            return None
        return np.frombuffer(row[0], np.float32).copy(), row[1], json.loads(row[2])

    def put(self, key: str, descriptor: np.ndarray, method: str, box: list[int]) -> None:
        self.db.execute("INSERT OR REPLACE INTO descriptors VALUES (?, ?, ?, ?)",
                        (key, np.asarray(descriptor, np.float32).tobytes(), method, json.dumps(box)))  # fmt: skip
        self.db.commit()

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class FaceOptions:
    upsample: int
    threshold: float
    fallback_threshold: float
    jitters: int

    def key(self, image_sha: str, model_shas: list[str]) -> str:
        text = json.dumps({"v": CACHE_VERSION, "image": image_sha, "models": model_shas, **vars(self)}, sort_keys=True)
        return _sha256(text.encode())


def nearest_centre(boxes: np.ndarray, height: int, width: int) -> int:
    """Index of the box whose centre is nearest the image centre."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    return int(np.argmin(np.hypot(centres[:, 0] - (width - 1) / 2.0, centres[:, 1] - (height - 1) / 2.0)))


def centred_box(height: int, width: int) -> np.ndarray:
    """[l, t, r, b] square of 1/2.2 of the shorter side, centred."""
    side = max(1, round(min(height, width) * LFW_FACE_FRACTION))
    left, top = (width - side) // 2, (height - side) // 2
    return np.array([left, top, left + side - 1, top + side - 1], dtype=np.int64)


class PairFaces:
    """One descriptor per image: the detection nearest the centre, with the documented fallbacks."""

    def __init__(self, config: Config, options: FaceOptions, use_cache: bool) -> None:
        from ...engines.cachedir import default_cache_dir
        from ...engines.models import model_path
        from ...engines.onnx_cache import sha256_file

        self.config, self.options = config, options
        models = config.models
        kinds = ("detector", "landmarks", "embedder")
        self.model_shas = [sha256_file(model_path(k, getattr(models, k))) for k in kinds]
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        self.cache = DescriptorCache(cache_dir / "eval-descriptors.sqlite") if use_cache else None
        self._analyzer: Any = None
        self.computed = self.cached = 0

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:  # loaded only when some image is not cached: a cached re-run needs no model
            from ...engines.faces import FaceAnalyzer

            started = time.perf_counter()
            self._analyzer = FaceAnalyzer.from_config(self.config)
            log.info("models loaded in %.1f s", time.perf_counter() - started)
        return self._analyzer

    def describe(self, path: Path) -> tuple[np.ndarray, str, list[int]]:
        """(descriptor, method, box); method: detected | low_threshold | centred_box. Raises ImageError."""
        from ...engines.chips import extract_face_chips
        from ...engines.detector import FaceDetector
        from ...engines.imageio import ImageError, decode_image
        from ...engines.jitter import jittered_descriptors

        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"{path}: cannot read: {error.strerror or error}") from None
        key = self.options.key(_sha256(data), self.model_shas)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cached += 1
            return hit
        image = decode_image(data, str(path), self.config.detector.max_image_pixels)
        height, width = image.shape[:2]
        analyzer = self.analyzer
        opts = self.options
        detector = FaceDetector(analyzer.detector.session, analyzer.detector.params, opts.upsample, opts.threshold)
        boxes, _ = detector.detect(image)
        method = "detected"
        if len(boxes) == 0:
            low = FaceDetector(analyzer.detector.session, analyzer.detector.params, opts.upsample,
                               opts.fallback_threshold)  # fmt: skip
            boxes, _ = low.detect(image)
            method = "low_threshold"
        box = boxes[nearest_centre(boxes, height, width)] if len(boxes) else centred_box(height, width)
        method = method if len(boxes) else "centred_box"
        landmarks = analyzer.predictor.predict(image, box[None])
        chips = extract_face_chips(image, landmarks)
        descriptor = jittered_descriptors(analyzer.embedder.embed_chips, chips, opts.jitters)[0]
        self.computed += 1
        result = (descriptor.astype(np.float32), method, [int(v) for v in box])
        if self.cache is not None:
            self.cache.put(key, *result)
        return result

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


# ------------------------------------------------------------------------------------------------
# the ROC picture, with OpenCV


def draw_roc(far: np.ndarray, tar: np.ndarray, points: list[tuple[float, float, str]], title: str,
             size: tuple[int, int] = (720, 560)) -> np.ndarray:  # fmt: skip
    """BGR image: TAR against FAR on a log axis, with marked operating points (far, tar, label) and a legend.

    FAR 0 cannot sit on a log axis: the curve starts at the left edge (one decade below the smallest
    non-zero FAR) with the best TAR reached at or below that FAR.
    """
    import cv2

    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    image = np.full((height, width, 3), 255, np.uint8)
    positive = far[far > 0]
    low_exp = min(math.floor(math.log10(positive.min())) if len(positive) else -3, -2)
    floor_far = 10.0**low_exp
    inside = far > floor_far
    start_tar = float(np.max(tar[~inside])) if (~inside).any() else 0.0
    curve_far = np.concatenate([[floor_far], far[inside]])
    curve_tar = np.concatenate([[start_tar], tar[inside]])
    tar_low = min(math.floor(float(np.nanmin(curve_tar)) * 10) / 10, 0.9)
    # up the left edge first: below the axis' smallest FAR, TAR rises from 0 to start_tar
    curve_far = np.concatenate([[floor_far], curve_far])
    curve_tar = np.concatenate([[0.0], curve_tar])

    def to_px(f: np.ndarray, t: np.ndarray) -> np.ndarray:
        x = (np.log10(np.clip(f, floor_far, 1.0)) - low_exp) / -low_exp
        y = (np.clip(t, tar_low, 1.0) - tar_low) / (1 - tar_low)
        return np.stack([left + x * (width - left - right), top + (1 - y) * (height - top - bottom)], axis=1)

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (210, 210, 210), (0, 0, 0)
    for exp in range(low_exp, 1):
        x = int(to_px(np.array([10.0**exp]), np.array([1.0]))[0, 0])
        cv2.line(image, (x, top), (x, height - bottom), grey, 1)
        cv2.putText(image, f"1e{exp}", (x - 18, height - bottom + 20), font, 0.45, black, 1, cv2.LINE_AA)
    step = 0.05 if tar_low >= 0.5 else 0.1
    for tick in np.arange(tar_low, 1.0 + step / 2, step):
        y = int(to_px(np.array([1.0]), np.array([tick]))[0, 1])
        cv2.line(image, (left, y), (width - right, y), grey, 1)
        cv2.putText(image, f"{tick:.2f}", (left - 45, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), black, 1)
    # a step curve: at each threshold TAR rises at the FAR reached so far, then FAR grows at that TAR
    steps_far = np.repeat(curve_far, 2)[1:]
    steps_tar = np.repeat(curve_tar, 2)[:-1]
    curve = to_px(steps_far, steps_tar).round().astype(np.int32)
    cv2.polylines(image, [curve.reshape(-1, 1, 2)], False, (180, 90, 20), 2, cv2.LINE_AA)
    colours = [(40, 40, 220), (30, 150, 30), (160, 40, 160), (0, 140, 230)]
    for i, (f, t, label) in enumerate(points):
        colour = colours[i % len(colours)]
        if math.isfinite(f) and math.isfinite(t):
            x, y = to_px(np.array([f]), np.array([t]))[0].round().astype(int)
            cv2.circle(image, (int(x), int(y)), 6, colour, -1, cv2.LINE_AA)
        legend_y = height - bottom - 15 - 22 * (len(points) - 1 - i)
        cv2.circle(image, (width - right - 300, legend_y - 4), 6, colour, -1, cv2.LINE_AA)
        cv2.putText(image, label, (width - right - 288, legend_y), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 25), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(image, "false accept rate (log)", (width // 2 - 80, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(image, "TAR", (8, top + 15), font, 0.5, black, 1, cv2.LINE_AA)
    return image


# ------------------------------------------------------------------------------------------------
# eval pairs


def _progress(items: list, enabled: bool, unit: str) -> Any:
    if not enabled or len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _load_pairs(path: str) -> PairsFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PairsFormatError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    return parse_pairs(text, path)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def cmd_pairs(args: argparse.Namespace, config: Config) -> int:
    from ...engines.imageio import ImageError

    try:
        pairs = _load_pairs(args.pairs)
    except PairsFormatError as error:
        log.error("%s", error)
        return 2
    if args.jitters < 0:
        log.error("--jitters must be 0 or more, got %d", args.jitters)
        return 2
    root = Path(args.root)
    images = pairs.images()
    missing = [name for name in images if not (root / name).is_file()]
    if missing:
        log.error("%d of %d images are missing under %s, e.g. %s", len(missing), len(images), root,
                  ", ".join(missing[:3]))  # fmt: skip
        return 2
    threshold = float(config.gallery.distance_threshold if args.threshold is None else args.threshold)
    options = FaceOptions(
        upsample=int(config.detector.upsample if args.upsample is None else args.upsample),
        threshold=float(config.detector.threshold),
        fallback_threshold=float(args.fallback_threshold),
        jitters=int(args.jitters),
    )
    faces = PairFaces(config, options, use_cache=not args.no_cache)
    descriptors: dict[str, np.ndarray] = {}
    methods: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for name in _progress(images, not getattr(args, "quiet", False), "image"):
            try:
                descriptors[name], methods[name], _ = faces.describe(root / name)
            except ImageError as error:
                unreadable[name] = str(error)
                log.error("%s", error)
    finally:
        faces.close()
    seconds = time.perf_counter() - started
    usable = [p for p in pairs.pairs if all(i in descriptors for i in p.images)]
    if not usable:
        log.error("no pair has two readable images")
        return 1
    first = np.stack([descriptors[p.images[0]] for p in usable])
    second = np.stack([descriptors[p.images[1]] for p in usable])
    distances = np.linalg.norm(first.astype(np.float64) - second, axis=1)
    same = np.array([p.same for p in usable])
    folds = np.array([p.fold for p in usable])
    counts = {m: sum(1 for v in methods.values() if v == m) for m in ("detected", "low_threshold", "centred_box")}
    report: dict[str, Any] = {
        "pairs_file": str(args.pairs), "root": str(root), "folds": pairs.folds, "pairs": len(pairs.pairs),
        "pairs_scored": len(usable), "matched": int(same.sum()), "mismatched": int((~same).sum()),
        "images": len(images), "faces": {**counts, "unreadable": len(unreadable)},
        "fallback": f"no detection at threshold {options.threshold}: nearest-centre detection at "
                    f"{options.fallback_threshold}, else a centred box of 1/2.2 of the shorter side",
        "options": {"upsample": options.upsample, "jitters": options.jitters, "threshold": threshold},
        "accuracy": round(accuracy(distances, same, threshold), 6),
        "kfold": None, "tar_at_far": [tar_at_far(distances, same, far).to_json() for far in TARGET_FARS],
        "descriptors": {"computed": faces.computed, "cached": faces.cached, "seconds": round(seconds, 1)},
    }  # fmt: skip
    if len(np.unique(folds)) >= 2:
        result = kfold_accuracy(distances, same, folds)
        report["kfold"] = {"mean": round(result.mean, 6), "std": round(result.std, 6),
                           "accuracies": [round(float(a), 6) for a in result.accuracies],
                           "thresholds": [round(float(t), 4) for t in result.thresholds]}  # fmt: skip
    if unreadable:
        report["unreadable"] = unreadable
    _write_pair_outputs(args, pairs_rows(usable, distances, methods), distances, same, threshold, report)
    if args.json:
        print(json.dumps(report))
    else:
        print(describe_pairs_report(report))
    return 1 if unreadable else 0


def pairs_rows(pairs: list, distances: np.ndarray, methods: dict[str, str]) -> list[list[Any]]:
    rows = []
    for pair, distance in zip(pairs, distances):
        a, b = pair.images
        rows.append([pair.fold + 1, pair.name1, pair.number1, pair.name2, pair.number2, int(pair.same),
                     f"{distance:.6f}", methods[a], methods[b]])  # fmt: skip
    return rows


def _write_pair_outputs(args: argparse.Namespace, rows: list[list[Any]], distances: np.ndarray, same: np.ndarray,
                        threshold: float, report: dict[str, Any]) -> None:  # fmt: skip
    import cv2

    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fold", "name1", "number1", "name2", "number2", "same", "distance", "face1", "face2"])
            writer.writerows(rows)
        report["csv"] = str(path)
    if args.roc:
        far, tar, _ = roc_curve(distances, same)
        at = distances <= threshold
        fixed_far = float(at[~same].mean()) if (~same).any() else math.nan
        fixed_tar = float(at[same].mean()) if same.any() else math.nan
        points = [
            (p["far"], p["tar"], f"FAR <= {p['target_far']:g}: TAR {p['tar']:.3f} at {p['threshold']:.3f}")
            for p in report["tar_at_far"]
            if None not in (p["far"], p["tar"], p["threshold"])
        ]
        points.append((fixed_far, fixed_tar, f"threshold {threshold:g}: TAR {fixed_tar:.3f}, FAR {fixed_far:.4f}"))
        kfold = report["kfold"]
        title = f"{report['pairs_scored']} pairs, accuracy {_pct(report['accuracy'])} at {threshold:g}" + (
            f", {len(kfold['accuracies'])}-fold {_pct(kfold['mean'])}" if kfold else "")  # fmt: skip
        path = Path(args.roc)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), draw_roc(far, tar, points, title)):
            raise OSError(f"{path}: could not write the ROC image (use a .png name)")
        report["roc"] = str(path)


def describe_pairs_report(report: dict[str, Any]) -> str:
    faces, options = report["faces"], report["options"]
    lines = [
        f"pairs: {report['pairs_scored']} of {report['pairs']} scored ({report['matched']} matched, "
        f"{report['mismatched']} mismatched) in {report['folds']} fold(s), {report['images']} images",
        f"faces: {faces['detected']} detected, {faces['low_threshold']} only at the lower threshold, "
        f"{faces['centred_box']} with no detection (centred box), {faces['unreadable']} unreadable",
        f"  ({report['fallback']})",
        f"options: upsample {options['upsample']}, jitters {options['jitters']}",
        f"accuracy at threshold {options['threshold']:g}: {_pct(report['accuracy'])}",
    ]
    kfold = report["kfold"]
    if kfold:
        lines.append(f"{len(kfold['accuracies'])}-fold accuracy (threshold chosen on the other folds): "
                     f"{_pct(kfold['mean'])} ± {_pct(kfold['std'])} "
                     f"(thresholds {min(kfold['thresholds']):.3f}-{max(kfold['thresholds']):.3f})")  # fmt: skip
    if report["mismatched"] and 1 / report["mismatched"] > min(TARGET_FARS):
        step = 1 / report["mismatched"]
        lines.append(f"note: {report['mismatched']} mismatched pairs resolve FAR only in steps of {step:.2g}: "
                     "below that, TAR at FAR means TAR with no impostor accepted")  # fmt: skip
    for point in report["tar_at_far"]:
        threshold = "n/a" if point["threshold"] is None else f"{point['threshold']:.3f}"
        lines.append(f"TAR at FAR {point['target_far']:g}: {_pct(point['tar'])} "
                     f"(threshold {threshold}, FAR {point['far']:.4f})")  # fmt: skip
    described = report["descriptors"]
    lines.append(f"descriptors: {described['computed']} computed, {described['cached']} from the cache, "
                 f"{described['seconds']} s")  # fmt: skip
    outputs = [f"{k}: {report[k]}" for k in ("roc", "csv") if k in report]
    if outputs:
        lines.append(", ".join(outputs))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# eval video


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
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
    from ...engines.faces import FaceAnalyzer
    from ...enroll.gallery import Gallery
    from ..domain.enrolment import enrol_images, folder_people, policy_from_config, summarise

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
    from ..runtime.supervisor import RunOptions, run_pipeline

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


# ------------------------------------------------------------------------------------------------
# the parser


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """Add `eval pairs` and `eval video` to the `facestream` sub-commands."""
    evaluate = commands.add_parser(
        "eval", help="measure accuracy: verification pairs (LFW protocol) or a video with ground truth",
        description="Accuracy you can check on your own data: `eval pairs` runs the LFW verification protocol, "
        "`eval video` scores identification on a video against a truth file.",
    )  # fmt: skip
    what = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)

    pairs = what.add_parser(
        "pairs", help="face verification on LFW-style pairs: accuracy, 10-fold accuracy, TAR at FAR, ROC",
        description="Run the LFW verification protocol on a pairs file and an image folder.",
        epilog=PAIRS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    pairs.add_argument("--pairs", required=True, metavar="FILE", help="pairs file in LFW's pairs.txt format")
    pairs.add_argument("--root", required=True, metavar="DIR", help="image folder: DIR/Name/Name_0001.jpg")
    pairs.add_argument(
        "--threshold",
        type=float,
        metavar="D",
        help="same person when the distance is at most D (default gallery.distance_threshold, 0.6)",
    )
    pairs.add_argument("--upsample", type=int, choices=range(0, 4), metavar="N",
                       help="detector upsampling (default detector.upsample, 1)")  # fmt: skip
    pairs.add_argument("--jitters", type=int, default=0, metavar="N",
                       help="dlib's num_jitters: average the descriptors of N jittered copies of each chip "
                            "(random crops, rotations, scalings and flips, exactly as dlib; 0 or 1: none)")  # fmt: skip
    pairs.add_argument("--fallback-threshold", type=float, default=DEFAULT_FALLBACK_THRESHOLD, metavar="S",
                       help="detector threshold for images with no face at detector.threshold "
                            f"(default {DEFAULT_FALLBACK_THRESHOLD})")  # fmt: skip
    pairs.add_argument("--roc", default="", metavar="FILE.png",
                       help="write the ROC curve image there (default: none)")  # fmt: skip
    pairs.add_argument(
        "--csv",
        default="",
        metavar="FILE",
        help="write every pair's distance and how its faces were found there (default: none)",
    )
    pairs.add_argument("--no-cache", action="store_true", help="compute every descriptor again, do not store them")
    pairs.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    pairs.set_defaults(handler=cmd_pairs)

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


__all__ = ["add_eval_commands"]
