"""`facestream eval pairs`: the LFW verification protocol on a pairs file and an image folder (accuracy,
k-fold accuracy, TAR at FAR, ROC, every pair's distance)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ....enroll.evaluation import (
    PairsFile,
    PairsFormatError,
    accuracy,
    kfold_accuracy,
    parse_pairs,
    roc_curve,
    tar_at_far,
)
from ...config import Config
from .faces import FaceOptions, PairFaces
from .roc import draw_roc

log = logging.getLogger("facestream")

TARGET_FARS = (1e-3, 1e-2)
DEFAULT_FALLBACK_THRESHOLD = -1.0

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


def _describe_images(faces: PairFaces, root: Path, images: list[str], progress: bool
                     ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:  # fmt: skip
    """Every image's descriptor and how its face was found; the unreadable ones with why (logged). Closes `faces`."""
    from ....engines.imageio import ImageError

    descriptors: dict[str, np.ndarray] = {}
    methods: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    try:
        for name in _progress(images, progress, "image"):
            try:
                descriptors[name], methods[name], _ = faces.describe(root / name)
            except ImageError as error:
                unreadable[name] = str(error)
                log.error("%s", error)
    finally:
        faces.close()
    return descriptors, methods, unreadable


# Over 60 lines: the command's steps in order (read, describe, score, write), each a call.
def cmd_pairs(args: argparse.Namespace, config: Config) -> int:
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
    started = time.perf_counter()
    descriptors, methods, unreadable = _describe_images(faces, root, images, not getattr(args, "quiet", False))
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


def add_pairs_parser(what: argparse._SubParsersAction) -> None:
    """Add `eval pairs` to the `eval` sub-commands."""
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
