"""`facestream enroll ...` and `facestream identify`: the gallery from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...enroll.records import check_name, check_threshold
from ...errors import GalleryError
from ..config import Config

# The models, the gallery and the enrolment rules are imported where a command needs them: building the
# parser (every `facestream` command, `--help` too) would otherwise import numba and ONNX Runtime (~0.8 s).
if TYPE_CHECKING:
    from ...enroll.gallery import Gallery
    from ..domain.enrolment import EnrolmentPolicy, ImageReport

log = logging.getLogger("facestream")


def open_gallery(args: argparse.Namespace, config: Config, create: bool = False) -> Gallery:
    """The gallery of --gallery or gallery.path. Only enrolling commands `create` a missing one (and say so);
    the others refuse it (GalleryNotFoundError: exit 2, nothing created), so a mistyped path is an error, not
    an empty gallery."""
    from ...enroll.gallery import Gallery

    path = args.gallery or config.gallery.path
    gallery = Gallery.from_config(config.gallery, path=path, threads=config.engine.threads, create=create)
    if gallery.store.created:
        log.warning("created a new, empty gallery: %s", gallery.path)
    return gallery


def _policy(args: argparse.Namespace, config: Config) -> EnrolmentPolicy:
    from ..domain.enrolment import policy_from_config

    return policy_from_config(config, bool(getattr(args, "largest", False)))


def _printer(as_json: bool, name: str | None = None):
    def show(report: ImageReport) -> None:
        if as_json:
            print(json.dumps({"person": name, **report.to_json()}), flush=True)
        else:
            mark = {"added": "+", "skipped": "=", "failed": "!"}[report.status]
            print(f"{mark} {report.path}: {report.reason}", flush=True)

    return show


def _finish(reports: list[ImageReport], as_json: bool) -> int:
    from ..domain.enrolment import summarise

    counts = summarise(reports)
    if as_json:
        print(json.dumps({"summary": counts}))
    else:
        print(f"{counts['added']} added, {counts['skipped']} skipped, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _with_progress(paths: list[Path], as_json: bool) -> Any:
    if as_json or len(paths) < 5 or not sys.stderr.isatty():
        return paths
    from tqdm import tqdm

    return tqdm(paths, unit="image", file=sys.stderr, leave=False)


def cmd_add(args: argparse.Namespace, config: Config, negative: bool = False) -> int:
    check_name(args.name)  # before the models load: a bad name is exit 2 at once (InvalidNameError)
    from ...engines.faces import FaceAnalyzer
    from ..domain.enrolment import enrol_images

    analyzer = FaceAnalyzer.from_config(config)
    with open_gallery(args, config, create=True) as gallery:
        paths = [Path(p) for p in args.images]
        reports = enrol_images(gallery, analyzer, args.name, _with_progress(paths, args.json), _policy(args, config),
                               negative=negative, on_report=_printer(args.json, args.name))  # fmt: skip
    return _finish(reports, args.json)


def cmd_reject(args: argparse.Namespace, config: Config) -> int:
    return cmd_add(args, config, negative=True)


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from ...engines.faces import FaceAnalyzer
    from ..domain.enrolment import enrol_images, folder_people

    try:
        people = folder_people(Path(args.folder))
    except ValueError as error:
        log.error("%s", error)
        return 2
    for name in people:
        check_name(name)  # every folder name before the models load
    analyzer = FaceAnalyzer.from_config(config)
    reports: list[ImageReport] = []
    with open_gallery(args, config, create=True) as gallery:
        for name, paths in people.items():
            reports += enrol_images(gallery, analyzer, name, _with_progress(paths, args.json), _policy(args, config),
                                    on_report=_printer(args.json, name))  # fmt: skip
    return _finish(reports, args.json)


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    with open_gallery(args, config) as gallery:
        people = gallery.people()
        if args.json:
            for person in people:
                print(json.dumps({"name": person.name, "created": person.created, "samples": person.samples,
                                  "negatives": person.negatives, "threshold": person.threshold,
                                  "metadata": person.metadata}))  # fmt: skip
            return 0
        if not people:
            print(f"{gallery.path}: nobody enrolled")
        for person in people:
            threshold = f", threshold {person.threshold}" if person.threshold is not None else ""
            negatives = f", {person.negatives} negative" if person.negatives else ""
            print(f"{person.name}: {person.samples} sample{'s' if person.samples != 1 else ''}{negatives}{threshold}")
    return 0


def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    with open_gallery(args, config) as gallery:
        removed = gallery.remove_person(args.name)
    print(f"removed {args.name} ({removed} samples)")
    return 0


def cmd_rename(args: argparse.Namespace, config: Config) -> int:
    with open_gallery(args, config) as gallery:
        gallery.rename_person(args.old, args.new)
    print(f"renamed {args.old} to {args.new}")
    return 0


def cmd_threshold(args: argparse.Namespace, config: Config) -> int:
    value = None if args.value.lower() in ("none", "default") else check_threshold(args.value)
    with open_gallery(args, config) as gallery:
        gallery.set_threshold(args.name, value)
    print(f"{args.name}: threshold {value if value is not None else 'default'}")
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    with open_gallery(args, config) as gallery:
        counts = gallery.export(args.file)
    print(json.dumps({"exported": str(args.file), **counts}))
    return 0


def cmd_import_file(args: argparse.Namespace, config: Config) -> int:
    with open_gallery(args, config, create=True) as gallery:
        counts = gallery.import_file(args.file)
    print(json.dumps({"imported": str(args.file), **counts}))
    return 0


def cmd_calibrate(args: argparse.Namespace, config: Config) -> int:
    outsiders = None
    if args.not_enrolled:
        import numpy as np

        from ...engines.faces import FaceAnalyzer
        from ...engines.imageio import ImageError, read_image

        analyzer = FaceAnalyzer.from_config(config)
        rows = []
        for path in sorted(p for p in Path(args.not_enrolled).rglob("*") if p.is_file()):
            try:
                rows.append(analyzer.analyze(read_image(path)).descriptors)
            except ImageError as error:
                log.warning("%s", error)
        outsiders = np.concatenate(rows) if rows else np.zeros((0, 128), np.float32)
        log.info("%d faces known not to be enrolled", len(outsiders))
    with open_gallery(args, config) as gallery:
        report = gallery.calibrate(args.target_far, outsiders)
    if args.json:
        print(json.dumps(report))
        return 0
    far, target = report["far"], report["threshold_for_target_far"]
    print(f"{report['people']} people, {report['samples']} samples, {report['impostor_pairs']} impostor pairs")
    print(f"false-accept rate at the current threshold {report['threshold']:.3f}: {far:.2e} (per pair)")
    ident = report["identification"]
    print(f"open-set: {ident['far']:.2e} of {ident['probes']} probes would match someone else at that threshold")
    print(f"threshold for a false-accept rate of {report['target_far']:g}: "
          f"{'not reachable' if target is None else f'{target:.3f}'}")  # fmt: skip
    print(f"note: {report['note']}")
    return 0


def cmd_identify(args: argparse.Namespace, config: Config) -> int:
    from ...engines.faces import FaceAnalyzer
    from ...engines.imageio import ImageError, read_image

    if args.upsample is not None:
        config.set("detector.upsample", args.upsample, "--upsample")
    failures = 0
    with open_gallery(args, config) as gallery:  # first: a missing gallery is refused before models load
        analyzer = FaceAnalyzer.from_config(config)
        for path in args.images:
            try:
                image = read_image(path, config.detector.max_image_pixels, upsample=config.detector.upsample,
                                   max_work=config.detector.max_work_pixels)  # fmt: skip
            except ImageError as error:
                failures += 1
                print(json.dumps({"image": str(path), "error": str(error)}) if args.json else f"{error}", flush=True)
                continue
            faces = analyzer.analyze(image)
            matches = gallery.identify(faces.descriptors)
            records = []
            for i, match in enumerate(matches.to_records()):
                runner_up = None
                if match["runner_up"] is not None:
                    runner_up = {"identity": match["runner_up"], "distance": match["runner_up_distance"]}
                records.append({"box": [int(v) for v in faces.boxes[i]], "identity": match["identity"],
                                "distance": match["distance"], "runner_up": runner_up,
                                "reason": match["reason"]})  # fmt: skip
            if args.json:
                print(json.dumps({"image": str(path), "faces": records}), flush=True)
                continue
            print(f"{path}: {len(records)} face{'s' if len(records) != 1 else ''}")
            for i, record in enumerate(records):
                print(f"  face {i} {record['box']}: {matches.explain(i)}")
    return 1 if failures else 0


# Over 60 lines: a flat list of argparse options, one per line: split, a command's options would scatter.
def add_enroll_commands(commands: argparse._SubParsersAction) -> None:
    def gallery_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gallery", metavar="PATH", help="gallery database (default: gallery.path in config.yaml)")

    def json_option(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--json", action="store_true", help=what)

    enroll = commands.add_parser(
        "enroll", help="manage the gallery of enrolled people",
        description="The gallery is a SQLite database (created owner-only: descriptors are biometric data) with "
        "a FAISS index derived from it. Running pipelines see changes without a restart.",
    )  # fmt: skip
    verbs = enroll.add_subparsers(dest="verb", metavar="VERB", required=True)

    add = verbs.add_parser(
        "add",
        help="enrol one person from photos",
        description="Each photo must hold exactly one face (or pass --largest), at least "
        "enrolment.min_face_width px wide and sharp enough. Photos already enrolled for this "
        "person are skipped. One bad photo never stops the others; exit code 1 if any failed.",
    )
    add.add_argument("name")
    add.add_argument("images", nargs="+", metavar="IMAGE")
    add.add_argument("--largest", action="store_true", help="take the largest face when a photo has several")
    json_option(add, "one JSON line per photo, then a summary line")
    add.set_defaults(handler=cmd_add)

    folder = verbs.add_parser("import", help="enrol everyone in DIR/<person name>/<photos>")
    folder.add_argument("folder", metavar="DIR")
    folder.add_argument("--largest", action="store_true", help="take the largest face when a photo has several")
    json_option(folder, "one JSON line per photo, then a summary line")
    folder.set_defaults(handler=cmd_import)

    reject = verbs.add_parser(
        "reject",
        help='record photos of faces that are NOT this person ("not Alice")',
        description="Negative examples: a face nearer to one of them than to the person's "
        "own samples (or within gallery.negative_threshold of one) is never given that name.",
    )
    reject.add_argument("name")
    reject.add_argument("images", nargs="+", metavar="IMAGE")
    reject.add_argument("--largest", action="store_true")
    json_option(reject, "one JSON line per photo, then a summary line")
    reject.set_defaults(handler=cmd_reject)

    listing = verbs.add_parser("list", help="everyone enrolled, with sample counts")
    json_option(listing, "one JSON line per person")
    listing.set_defaults(handler=cmd_list)

    remove = verbs.add_parser("remove", help="remove a person and every descriptor of theirs")
    remove.add_argument("name")
    remove.set_defaults(handler=cmd_remove)

    rename = verbs.add_parser("rename", help="rename a person")
    rename.add_argument("old")
    rename.add_argument("new")
    rename.set_defaults(handler=cmd_rename)

    threshold = verbs.add_parser("threshold", help="set a per-person distance threshold ('default' to clear)")
    threshold.add_argument("name")
    threshold.add_argument("value", metavar="VALUE|default")
    threshold.set_defaults(handler=cmd_threshold)

    export = verbs.add_parser("export", help="write the whole gallery to a JSON file (the backup path)")
    export.add_argument("file", metavar="FILE")
    export.set_defaults(handler=cmd_export)

    import_file = verbs.add_parser("import-file", help="merge a file written by `enroll export`")
    import_file.add_argument("file", metavar="FILE")
    import_file.set_defaults(handler=cmd_import_file)

    calibrate = verbs.add_parser(
        "calibrate", help="estimate false accepts at the current threshold, and the threshold for a target rate",
        description="Uses distances between samples of different enrolled people (and, with --not-enrolled, "
        "faces known not to be enrolled) as impostor comparisons.",
    )  # fmt: skip
    calibrate.add_argument("--target-far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    calibrate.add_argument("--not-enrolled", metavar="DIR", help="a folder of photos of people not enrolled")
    json_option(calibrate, "print the figures as one JSON object")
    calibrate.set_defaults(handler=cmd_calibrate)

    for parser in (add, folder, reject, listing, remove, rename, threshold, export, import_file, calibrate):
        gallery_option(parser)

    identify = commands.add_parser(
        "identify", help="who is in these images",
        description="Every face with its box, identity (or unknown), distance and the runner-up person. A face "
        "is a person when its distance is at most gallery.distance_threshold (0.6) and the other rules pass.",
    )  # fmt: skip
    identify.add_argument("images", nargs="+", metavar="IMAGE")
    identify.add_argument("--upsample", type=int, choices=range(0, 4), metavar="N", help="as in analyze")
    json_option(identify, 'one line per image: {"image", "faces": [{"box", "identity", "distance", "runner_up"}]}')
    gallery_option(identify)
    identify.set_defaults(handler=cmd_identify)


__all__ = ["GalleryError", "add_enroll_commands"]
