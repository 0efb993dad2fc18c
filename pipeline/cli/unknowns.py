"""`facestream unknowns`: the unknown faces a run saw, grouped into people, and one-step enrolment.

Wired into the `facestream` command by pipeline/cli/main.py (``add_unknowns_commands(commands)``). The work
is done by two functions a web page can call as well: `list_clusters` (files -> clusters as JSON-ready
dicts) and `enroll_cluster` (one cluster -> gallery samples).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...enroll.clustering import UnknownCluster, UnknownFace, cluster_unknowns
from ..config import Config
from ..domain.unknowns import ReadReport, UnknownsFileError, read_unknowns

log = logging.getLogger("facestream")

EPILOG = """\
examples:
  facestream unknowns out/unknowns.jsonl                       # who came by, most visits first
  facestream unknowns out/unknowns.jsonl --json                # one JSON line per cluster, then a summary
  facestream unknowns out/unknowns.jsonl --enroll 2 "Jane Doe" --gallery gallery.db
  facestream unknowns out/unknowns.jsonl --enroll 3fa2c1d9e0b4 "Jane Doe"   # by the cluster's id
  facestream unknowns photos.jsonl --add-images party/*.jpg    # collect unknown faces from photos first

The file holds one JSON line per track that ended unknown (its best faces, with descriptors):
`facestream run ... --unknowns FILE` writes it. Faces are grouped with dlib's chinese whispers over the
graph of faces closer than --threshold (unknowns.cluster_threshold, 0.5 as in dlib's clustering
example: at 0.6 a single link chains two people), exactly as dlib.chinese_whispers_clustering does, and numbered
by visits (tracks), most first.

Faces below the run's quality gate (blurred, small) are left out unless --all-faces: blurred faces of
different people lie close together and chain into one cluster.

Numbers can change when the file grows (a running pipeline appends to it); each cluster's id names
exactly the faces listed, so `--enroll ID` enrols what you were shown or fails. Enrolment refuses a
cluster whose faces now match someone else in the gallery (unless --force), and skips faces already
enrolled for that person.
"""


def below_gate(face: UnknownFace) -> bool:
    """The run's quality gate rejected this face (weight 0: blurred, small or a low detector score)."""
    return face.weight is not None and face.weight <= 0


@dataclass
class Listing:
    """Clusters of the unknown faces in some files. `faces` are the faces clustered (cluster indices point
    into it); `left_out` those below the quality gate that were not (see `list_clusters`)."""

    report: ReadReport
    clusters: list[UnknownCluster]
    threshold: float
    faces: list[UnknownFace]
    left_out: list[UnknownFace]

    def find(self, which: str | int) -> UnknownCluster:
        """A cluster by number (1-based) or id; KeyError with a clear message."""
        text = str(which).strip()
        if text.isdigit():
            number = int(text)
            if not 1 <= number <= len(self.clusters):
                raise KeyError(f"no unknown person {number}: there are {len(self.clusters)}")
            return self.clusters[number - 1]
        for cluster in self.clusters:
            if cluster.key(self.faces) == text.lower():
                return cluster
        raise KeyError(f"no cluster with id {text!r} (the file may have changed: list the clusters again)")

    def summary(self) -> dict[str, Any]:
        return {
            "faces": len(self.faces),
            "tracks": self.report.tracks,
            "left_out_below_quality_gate": len(self.left_out),
            "left_out_tracks": len({face.visit for face in self.left_out}),
            "clusters": len(self.clusters),
            "threshold": self.threshold,
            "skipped_lines": len(self.report.problems),
        }

    def to_records(self) -> list[dict[str, Any]]:
        return [cluster.to_record(self.faces) for cluster in self.clusters]


def _progress_bar(total_faces: int) -> tuple[Callable[[int, int], None] | None, Any]:
    """(progress callback, tqdm bar to close) for chinese whispers on big inputs at a terminal, else (None, None)."""
    if total_faces < 2000 or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=1, unit="update", unit_scale=True, file=sys.stderr, leave=False, desc="clustering")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


def list_clusters(
    paths: str | Path | Sequence[str | Path], threshold: float = 0.6, *, all_faces: bool = False
) -> Listing:
    """Read unknowns files and cluster their faces. UnknownsFileError when a file cannot be read;
    malformed lines are skipped and listed in ``listing.report.problems``.

    Faces below the run's quality gate are left out unless `all_faces`: blurred faces of different people
    lie close together (in the demo clip's out-of-focus audience, different people as close as 0.47), so
    they chain into one cluster and would merge real visitors with it.
    """
    report = read_unknowns(paths)
    faces = report.faces if all_faces else [face for face in report.faces if not below_gate(face)]
    left_out = [] if all_faces else [face for face in report.faces if below_gate(face)]
    progress, bar = _progress_bar(len(faces))
    try:
        clusters = cluster_unknowns(faces, threshold, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    return Listing(report, clusters, float(threshold), faces, left_out)


def _representative_order(cluster: UnknownCluster, faces: Sequence[UnknownFace]) -> list[int]:
    """The cluster's faces, nearest its mean descriptor first."""
    members = np.array(cluster.faces)
    vectors = np.stack([np.asarray(faces[i].descriptor, np.float64) for i in members])
    distance = np.sqrt(((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1))
    return members[np.lexsort((members, distance))].tolist()


def enroll_cluster(
    gallery: Any,
    listing: Listing,
    which: str | int,
    name: str,
    *,
    max_samples: int = 0,
    force: bool = False,
    source: str = "unknowns",
) -> dict[str, Any]:
    """Add one cluster's faces to `gallery` (an `enroll.gallery.Gallery`) as samples of `name`.

    Faces are taken nearest the cluster's mean first (all of them, or `max_samples`); faces the run's
    quality gate rejected (weight 0: blurred, small, low score) are left out. Faces already enrolled for
    `name` (an identical descriptor) are skipped. Unless `force`, nothing is written (ValueError saying
    why) when some faces now match another enrolled person or when no face passed the quality gate;
    `force` enrols them all anyway. Returns what was done.
    """
    cluster = listing.find(which)
    faces = listing.faces
    chosen = _representative_order(cluster, faces)
    gated = [i for i in chosen if below_gate(faces[i])]
    if not force:
        if len(gated) == len(chosen):
            raise ValueError(
                f"{cluster.label} ({cluster.key(faces)}): none of its {len(chosen)} faces passed the quality gate "
                "(blurred, small or a low detector score); pass --force to enrol them anyway"
            )
        chosen = [i for i in chosen if i not in set(gated)]
    if max_samples > 0:
        chosen = chosen[:max_samples]
    descriptors = np.stack([np.asarray(faces[i].descriptor, np.float32) for i in chosen])
    matches = gallery.identify(descriptors)
    others = sorted({identity for identity in matches.identities if identity not in ("unknown", name)})
    if others and not force:
        raise ValueError(
            f"{cluster.label} ({cluster.key(faces)}): some faces now match {', '.join(others)} in the gallery; "
            "check the cluster, or pass --force to enrol it anyway"
        )
    duplicate = np.array(
        [match_name == name and distance == 0.0 for match_name, distance in zip(matches.names, matches.distances)]
    )
    keep = [i for i, dup in zip(chosen, duplicate.tolist()) if not dup]
    record: dict[str, Any] = {
        "cluster": cluster.number,
        "id": cluster.key(faces),
        "name": name,
        "faces": len(cluster.faces),
        "tracks": len(cluster.tracks),
        "added": 0,
        "skipped_already_enrolled": int(duplicate.sum()),
        "skipped_below_quality_gate": 0 if force else len(gated),
        "matched_others": others,
    }
    if keep:
        ids = gallery.add_samples(
            name,
            np.stack([np.asarray(faces[i].descriptor, np.float32) for i in keep]),
            sources=[f"{source}:{faces[i].stream_id}#track{faces[i].track_id}@frame{faces[i].frame_index}"
                     for i in keep],
            boxes=[None if faces[i].box is None else list(faces[i].box) for i in keep],
            quality=[{"weight": faces[i].weight, "score": faces[i].score} for i in keep],
            metadata={"enrolled_from": source, "cluster_id": cluster.key(faces)},
        )  # fmt: skip
        record["added"] = len(ids)
        record["sample_ids"] = [int(v) for v in ids]
        record["thumbnails"] = 0
        for sample_id, i in zip(ids.tolist(), keep):  # the face's saved chip is the sample's thumbnail
            if faces[i].chip:
                try:
                    gallery.thumbnails.save(int(sample_id), Path(faces[i].chip).read_bytes())
                    record["thumbnails"] += 1
                except OSError as error:  # the sample is enrolled; only its picture is missing
                    log.warning("%s: no thumbnail for sample %d: %s", faces[i].chip, sample_id, error.strerror or error)
    return record


# ------------------------------------------------------------------------------------------------
# the command


def _describe(cluster: dict[str, Any]) -> list[str]:
    from ..sinks.records import format_time  # m:ss.ss into a file, the time of day for live sources

    def when(seen: dict[str, Any]) -> str:
        clock = format_time(seen["timestamp"])
        return f"{seen['stream_id']} frame {seen['frame_index']} ({clock}, track {seen['track_id']})"

    gated = f" ({cluster['below_quality_gate']} below the quality gate)" if cluster["below_quality_gate"] else ""
    lines = [
        f"{cluster['label']} [id {cluster['id']}]: {cluster['tracks']} track{'s' if cluster['tracks'] != 1 else ''}, "
        f"{cluster['faces']} face{'s' if cluster['faces'] != 1 else ''}{gated}; first seen "
        f"{when(cluster['first_seen'])}, last seen {when(cluster['last_seen'])}"
    ]
    for face in cluster["representatives"]:
        chip = f", chip {face['chip']}" if face["chip"] else ""
        box = f" box {face['box']}" if face["box"] else ""
        lines.append(f"    {face['stream_id']} frame {face['frame_index']} track {face['track_id']}{box}{chip}")
    return lines


def _add_images(args: argparse.Namespace, config: Config) -> int:
    """Analyse photos and append their unknown faces to the file (each face its own track): each named by its
    photo (stream id = the file name), weighed by the pipeline's quality gate (faces it rejects get weight 0,
    so clustering leaves them out unless --all-faces), its chip saved in FILE.chips/ like `run --unknowns`."""
    from ...engines.faces import FaceAnalyzer
    from ...engines.imageio import ImageError, read_image
    from ...engines.quality import face_quality
    from ..domain.tracker import QualityGate
    from ..domain.unknowns import chips_dir, save_chip, unknowns_from_faces, write_records
    from .enroll import open_gallery

    section = config.tracker
    gate = QualityGate(float(section.min_face_size), float(section.min_sharpness), float(section.min_score))
    chips = chips_dir(args.files[0])

    analyzer = FaceAnalyzer.from_config(config)
    failures, records = 0, []
    gallery_path = Path(args.gallery or config.gallery.path)
    gallery = open_gallery(args, config) if gallery_path.is_file() else None
    if gallery is None:
        log.info("no gallery at %s: every face counts as unknown", gallery_path)
    try:
        for index, path in enumerate(args.add_images):
            try:
                image = read_image(path, config.detector.max_image_pixels)
            except ImageError as error:
                failures += 1
                log.error("%s", error)
                continue
            faces = analyzer.analyze(image)
            matches = gallery.identify(faces.descriptors) if gallery is not None and len(faces) else None
            weights = gate.weights(face_quality(faces.chips, faces.boxes, faces.scores), faces.scores)
            found = unknowns_from_faces(faces, matches, stream_id=Path(path).name, frame_index=index,
                                        source=str(path), first_track_id=1000 * index, weights=weights)  # fmt: skip
            for record in found:
                face = record["faces"][0]
                i = record["track_id"] - 1000 * index
                face["chip"] = save_chip(chips, f"{record['stream_id']}-{index}-{i}", faces.chips[i])
            gated = sum(1 for record in found if not record["faces"][0]["weight"])
            log.info("%s: %d faces, %d unknown (%d below the quality gate)", path, len(faces), len(found), gated)
            records.extend(found)
    finally:
        if gallery is not None:
            gallery.close()
    written = write_records(args.files[0], records, append=True)
    log.info("%s: %d unknown faces added", args.files[0], written)
    return 1 if failures else 0


def cmd_unknowns(args: argparse.Namespace, config: Config) -> int:
    if args.threshold is not None and not 0 < args.threshold < 4:
        log.error("--threshold must be between 0 and 4 (0.5: dlib's clustering example; 0.6: its same-person rule)")
        return 2
    threshold = args.threshold if args.threshold is not None else float(config.unknowns.cluster_threshold)
    status = 0
    if args.add_images:
        status = _add_images(args, config)
    try:
        listing = list_clusters(args.files, threshold, all_faces=args.all_faces)
    except UnknownsFileError as error:
        log.error("%s", error)
        return 2
    for problem in listing.report.problems:
        log.warning("skipped %s", problem)

    if args.enroll:
        which, name = args.enroll
        from .enroll import open_gallery

        try:
            with open_gallery(args, config, create=True) as gallery:
                result = enroll_cluster(gallery, listing, which, name, max_samples=args.max_samples, force=args.force)
        except (KeyError, ValueError) as error:
            log.error("%s", error.args[0] if error.args else error)
            return 2
        if args.json:
            print(json.dumps(result))
        else:
            print(f"unknown person {result['cluster']} [id {result['id']}] enrolled as {name}: {result['added']} "
                  f"sample{'s' if result['added'] != 1 else ''} added ({result['faces']} faces, {result['tracks']} "
                  f"tracks; {result['skipped_already_enrolled']} already enrolled, "
                  f"{result['skipped_below_quality_gate']} below the quality gate)")  # fmt: skip
        return status

    records = [r for r in listing.to_records() if r["tracks"] >= args.min_tracks]
    if args.json:
        for record in records:
            print(json.dumps(record))
        print(json.dumps({"summary": listing.summary()}))
        return status
    summary = listing.summary()
    print(f"{summary['faces']} unknown faces clustered ({summary['tracks']} tracks in the file) -> "
          f"{summary['clusters']} unknown people (threshold {threshold:g})")  # fmt: skip
    for record in records:
        for line in _describe(record):
            print(line)
    hidden = len(listing.clusters) - len(records)
    if hidden:
        print(f"({hidden} seen in fewer than {args.min_tracks} tracks not shown)")
    if listing.left_out:
        print(f"({summary['left_out_below_quality_gate']} faces of {summary['left_out_tracks']} tracks below the "
              "quality gate left out: blurred faces chain people together; --all-faces includes them)")  # fmt: skip
    return status


def add_unknowns_commands(commands: argparse._SubParsersAction) -> None:
    """Add `unknowns` to the `facestream` sub-commands."""
    parser = commands.add_parser(
        "unknowns",
        help="group the unknown faces a run saw into people; enrol one in one step",
        description="Cluster the unknown faces of one or more unknowns files (written by `facestream run "
        "--unknowns FILE`) into 'unknown person 1, 2, ...', most visits first, with counts and first/last seen. "
        "With --enroll, add one cluster's faces to the gallery under a name.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="unknowns files (JSON lines)")
    parser.add_argument("--threshold", type=float, metavar="D",
                        help="faces closer than this are linked (default unknowns.cluster_threshold: 0.5)")  # fmt: skip
    parser.add_argument("--json", action="store_true",
                        help='one JSON line per cluster {"number","id","label","faces","below_quality_gate",'
                             '"tracks","streams","first_seen","last_seen","spread","representatives"}, then '
                             '{"summary": ...}; '
                             "with --enroll one JSON object")  # fmt: skip
    parser.add_argument("--all-faces", action="store_true",
                        help="also cluster faces below the run's quality gate (blurred ones chain people)")  # fmt: skip
    parser.add_argument("--min-tracks", type=int, default=1, metavar="N",
                        help="list only people seen in at least N tracks (default 1)")  # fmt: skip
    parser.add_argument("--enroll", nargs=2, metavar=("N|ID", "NAME"),
                        help="enrol unknown person N (or the cluster with this id) as NAME")  # fmt: skip
    parser.add_argument("--gallery", metavar="PATH", help="gallery database (default: gallery.path in config.yaml)")
    parser.add_argument("--max-samples", type=int, default=0, metavar="M",
                        help="with --enroll: at most M faces, nearest the mean first (default all)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="with --enroll: enrol even when some faces now match another enrolled person")  # fmt: skip
    parser.add_argument("--add-images", nargs="+", metavar="IMAGE",
                        help="first append the unknown faces of these photos to the first FILE")  # fmt: skip
    parser.set_defaults(handler=cmd_unknowns)


__all__ = ["Listing", "add_unknowns_commands", "enroll_cluster", "list_clusters"]
