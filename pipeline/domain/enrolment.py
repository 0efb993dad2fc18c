"""Enrolment from image files: decode, find the face, gate on quality, store — one image at a time.

Each image is its own transaction in the gallery, so one bad image never stops a batch and a
killed run keeps every image enrolled before it. Every image gets a report line saying what
happened and why.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ...engines.faces import FaceAnalyzer
from ...engines.imageio import ImageError, decode_image
from ...engines.quality import DETECTOR_SCORE, FACE_WIDTH, QUALITY_COLUMNS, SHARPNESS, face_quality
from ...enroll.records import NEGATIVE, POSITIVE
from ...enroll.thumbnails import Thumbnails, face_thumbnail

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class GalleryWriter(Protocol):
    """What enrolment needs of `enroll.gallery.Gallery`."""

    thumbnails: Thumbnails

    def find_image(self, image_sha256: str) -> list[tuple[str, int, str]]: ...

    def add_samples(self, names: str, descriptors: np.ndarray, **details: object) -> np.ndarray: ...

    def add_negative(self, name: str, descriptors: np.ndarray, **details: object) -> np.ndarray: ...


@dataclass(frozen=True)
class EnrolmentPolicy:
    """Quality gates for enrolment photos (config.yaml `enrolment:`)."""

    largest: bool = False  # several faces: take the largest instead of refusing the image
    min_face_width: int = 50  # px; smaller faces give unreliable descriptors
    min_sharpness: float = 15.0  # variance of the Laplacian of the chip; below = blurred
    max_image_pixels: int = 40_000_000
    upsample: int = 1  # the detector's, for the work budget
    max_work_pixels: int | None = None  # detector.max_work_pixels; None: no budget
    work_key: str = "detector.max_work_pixels"  # the setting max_work_pixels came from (named in refusals)


def policy_from_config(config: Config, largest: bool = False, max_work: tuple[int, str] | None = None
                       ) -> EnrolmentPolicy:  # fmt: skip
    """The enrolment gates and the detector's budgets from a loaded config (`largest` or enrolment.largest);
    `max_work` (budget, its setting's name) tightens detector.max_work_pixels (web.upload_max_work_pixels)."""
    section, detector = config.enrolment, config.detector
    budget, key = detector.max_work_pixels, "detector.max_work_pixels"
    if max_work is not None and max_work[0] < budget:
        budget, key = max_work
    return EnrolmentPolicy(largest=bool(largest or section.largest), min_face_width=section.min_face_width,
                           min_sharpness=section.min_sharpness, max_image_pixels=detector.max_image_pixels,
                           upsample=detector.upsample, max_work_pixels=budget, work_key=key)  # fmt: skip


@dataclass
class ImageReport:
    path: str
    status: str  # "added", "skipped" or "failed"
    reason: str
    box: list[int] | None = None
    quality: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"image": self.path, "status": self.status, "reason": self.reason, "box": self.box,
                "quality": self.quality}  # fmt: skip


def _choose_face(widths: np.ndarray, largest: bool) -> tuple[int | None, str]:
    if len(widths) == 0:
        return None, "no face found"
    if len(widths) > 1 and not largest:
        return None, f"{len(widths)} faces found; enrolment needs exactly one (or --largest to take the biggest)"
    return int(np.argmax(widths)), ""


def enrol_image(gallery: GalleryWriter, analyzer: FaceAnalyzer, name: str, path: Path, policy: EnrolmentPolicy,
                negative: bool = False) -> ImageReport:  # fmt: skip
    """Enrol (or, with negative=True, reject) the one face of one image file for `name`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return ImageReport(str(path), "failed", f"cannot read: {error.strerror or error}")
    digest = hashlib.sha256(data).hexdigest()
    kind = NEGATIVE if negative else POSITIVE
    if any(person == name and taken_as == kind for person, _, taken_as in gallery.find_image(digest)):
        what = "a negative example" if negative else "enrolled"
        return ImageReport(str(path), "skipped", f"this image is already {what} for {name}")
    try:
        image = decode_image(data, str(path), policy.max_image_pixels, upsample=policy.upsample,
                             max_work=policy.max_work_pixels, work_key=policy.work_key)  # fmt: skip
    except ImageError as error:
        return ImageReport(str(path), "failed", str(error))
    boxes, scores = analyzer.detector.detect(image)
    chosen, why = _choose_face(boxes[:, 2] - boxes[:, 0] + 1, policy.largest)
    if chosen is None:
        return ImageReport(str(path), "failed", why)
    faces = analyzer.align(image, boxes[chosen : chosen + 1], scores[chosen : chosen + 1])
    quality = face_quality(faces.chips, faces.boxes, faces.scores)[0]
    figures = {column: round(float(value), 3) for column, value in zip(QUALITY_COLUMNS, quality)}
    box = [int(v) for v in faces.boxes[0]]
    if quality[FACE_WIDTH] < policy.min_face_width:
        return ImageReport(str(path), "failed", f"face is {quality[FACE_WIDTH]:.0f} px wide, below the minimum "
                           f"of {policy.min_face_width} px (enrolment.min_face_width)", box, figures)  # fmt: skip
    if quality[SHARPNESS] < policy.min_sharpness:
        return ImageReport(str(path), "failed", f"face too blurred: sharpness {quality[SHARPNESS]:.1f}, below "
                           f"{policy.min_sharpness} (enrolment.min_sharpness)", box, figures)  # fmt: skip
    descriptors = analyzer.embedder.embed_chips(faces.chips)
    add = gallery.add_negative if negative else gallery.add_samples
    (sample_id,) = add(name, descriptors, sources=[path.name], image_sha256=[digest], boxes=faces.boxes,
                       quality=[figures])  # fmt: skip
    thumbnail = face_thumbnail(image, box)
    if thumbnail is not None:
        try:
            gallery.thumbnails.save(int(sample_id), thumbnail)
        except OSError as error:  # the sample is enrolled; only its picture is missing
            log.warning("%s: cannot save the thumbnail: %s", gallery.thumbnails.folder, error.strerror or error)
    score = f", detector score {quality[DETECTOR_SCORE]:.2f}"
    what = "negative example added" if negative else "added"
    return ImageReport(str(path), "added", f"{what}: face {box}{score}", box, figures)


def enrol_images(gallery: GalleryWriter, analyzer: FaceAnalyzer, name: str, paths: Iterable[Path],
                 policy: EnrolmentPolicy, negative: bool = False,
                 on_report: Callable[[ImageReport], None] | None = None) -> list[ImageReport]:  # fmt: skip
    reports = []
    for path in paths:
        report = enrol_image(gallery, analyzer, name, Path(path), policy, negative)
        reports.append(report)
        if on_report:
            on_report(report)
    return reports


def folder_people(root: Path) -> dict[str, list[Path]]:
    """DIR/<person name>/<images> -> {name: [image paths]}; raises ValueError with the reason when unusable."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    people = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in person.iterdir() if f.is_file() and not f.name.startswith("."))
        if files:
            people[person.name] = files
    if not people:
        raise ValueError(f"{root} has no person folders with files in them (expected {root}/<person name>/<images>)")
    return people


def summarise(reports: list[ImageReport]) -> dict[str, int]:
    counts = {"added": 0, "skipped": 0, "failed": 0}
    for report in reports:
        counts[report.status] += 1
    return counts
