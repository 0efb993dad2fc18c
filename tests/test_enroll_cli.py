"""Enrolment and identification on real photos, through the `facestream` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.enroll.gallery import Gallery
from facestream.pipeline.cli.main import main

from conftest import DATA, golden_images

FACESTREAM = str(Path(sys.executable).parent / "facestream")
OBAMA = [DATA / "fr_examples/obama-480p.jpg", DATA / "fr_test_images/obama2.jpg"]


@pytest.fixture(scope="module")
def biden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Joe Biden (face_recognition's biden.jpg) at half size: the 2-megapixel original costs ~6 s per
    enrolment on two cores, and its face stays ~250 px wide."""
    image = cv2.imread(str(DATA / "fr_examples/biden.jpg"))
    path = tmp_path_factory.mktemp("biden") / "biden-half.png"
    assert cv2.imwrite(str(path), cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                                             interpolation=cv2.INTER_AREA))  # fmt: skip
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in defaults (no ./config.yaml) and one model cache for the whole run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_CACHE", str(model_cache))


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out.splitlines()


def expected_identities(relpath: str) -> list[str]:
    """Nearest enrolled person within 0.6, from dlib's golden descriptors (independent of our code)."""
    golden = golden_images()
    enrolled = {"Alex_Lacamoire": ["video/gallery/Alex_Lacamoire/alex-lacamoire.png"],
                "Lin_Manuel_Miranda": ["video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png"],
                "Barack_Obama": ["fr_examples/obama.jpg", "fr_test_images/obama2.jpg"],
                "Joe_Biden": ["fr_examples/biden.jpg"]}  # fmt: skip
    names, vectors = [], []
    for name, paths in enrolled.items():
        for path in paths:
            names.append(name)
            vectors.append(golden[path]["cnn_faces"][0]["descriptor"])
    result = []
    for face in golden[relpath]["cnn_faces"]:
        distances = np.linalg.norm(np.array(vectors) - np.array(face["descriptor"]), axis=1)
        result.append(names[int(np.argmin(distances))] if distances.min() <= 0.6 else "unknown")
    return result


def identities(capsys: pytest.CaptureFixture, gallery: Path, *images: Path) -> dict[str, list[str]]:
    code, lines = cli(capsys, "identify", "--json", "--gallery", gallery, *images)
    assert code == 0
    return {Path(r["image"]).name: [f["identity"] for f in r["faces"]] for r in map(json.loads, lines)}


def test_enrol_identify_and_remove(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gallery = tmp_path / "gallery.db"
    code, lines = cli(capsys, "enroll", "import", DATA / "video/gallery", "--gallery", gallery)
    assert code == 0 and lines[-1] == "2 added, 0 skipped, 0 failed"
    assert cli(capsys, "enroll", "add", "Barack_Obama", *OBAMA, "--gallery", gallery)[0] == 0
    # The full-size photo: the expected identities below come from dlib's descriptors of these very files.
    assert cli(capsys, "enroll", "add", "Joe_Biden", DATA / "fr_examples/biden.jpg", "--gallery", gallery)[0] == 0
    assert oct(gallery.stat().st_mode & 0o777) == "0o600"

    found = identities(capsys, gallery, DATA / "fr_examples/obama-240p.jpg",
                       DATA / "fr_test_images/obama_partial_face.jpg", DATA / "fr_examples/two_people.jpg",
                       DATA / "dlib_faces/bald_guys.jpg", DATA / "dlib_faces/Tom_Cruise_avp_2014_4.jpg")  # fmt: skip
    assert found["obama-240p.jpg"] == ["Barack_Obama"]
    assert found["obama_partial_face.jpg"] == ["Barack_Obama"]
    assert found["two_people.jpg"] == ["Barack_Obama", "Joe_Biden"]
    # None of the 25 bald celebrities is enrolled, but dlib's descriptors put one within 0.6 of
    # Lin-Manuel Miranda: the expected answer is computed here from dlib's own golden descriptors.
    assert found["bald_guys.jpg"] == expected_identities("dlib_faces/bald_guys.jpg")
    assert found["bald_guys.jpg"].count("unknown") >= 24
    assert found["Tom_Cruise_avp_2014_4.jpg"] == ["unknown"]

    code, lines = cli(capsys, "identify", "--json", "--gallery", gallery, DATA / "fr_examples/obama-240p.jpg")
    (face,) = json.loads(lines[0])["faces"]
    assert face["distance"] < 0.6 and face["runner_up"]["identity"] != "Barack_Obama"
    assert face["runner_up"]["distance"] > face["distance"]

    code, lines = cli(capsys, "enroll", "list", "--json", "--gallery", gallery)
    assert {json.loads(line)["name"]: json.loads(line)["samples"] for line in lines} == {
        "Alex_Lacamoire": 1, "Barack_Obama": 2, "Joe_Biden": 1, "Lin_Manuel_Miranda": 1}  # fmt: skip
    assert cli(capsys, "enroll", "remove", "Barack_Obama", "--gallery", gallery)[0] == 0
    assert identities(capsys, gallery, DATA / "fr_examples/obama-240p.jpg")["obama-240p.jpg"] == ["unknown"]


def test_each_enrolled_sample_gets_a_private_face_thumbnail_deleted_with_it(
    tmp_path: Path, biden: Path, capsys: pytest.CaptureFixture
) -> None:
    from facestream.engines.faces import FaceAnalyzer
    from facestream.enroll.thumbnails import face_thumbnail
    from facestream.pipeline.config import load_config

    gallery_path = tmp_path / "gallery.db"
    assert cli(capsys, "enroll", "add", "Barack_Obama", *OBAMA, "--gallery", gallery_path)[0] == 0
    assert cli(capsys, "enroll", "add", "Joe_Biden", biden, "--gallery", gallery_path)[0] == 0
    folder = tmp_path / "gallery.db.thumbs"
    with Gallery(gallery_path) as gallery:
        obama, biden_ids = (gallery.store.sample_ids(name).tolist() for name in ("Barack_Obama", "Joe_Biden"))
        assert len(obama) == 2 and len(biden_ids) == 1
        assert gallery.thumbnails.available(obama + biden_ids) == obama + biden_ids
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    # Each thumbnail is the enrolled face: the detector finds exactly one face in it, filling most of it.
    analyzer = FaceAnalyzer.from_config(load_config(None))
    for sample_id in obama + biden_ids:
        thumbnail = cv2.imdecode(np.frombuffer((folder / f"{sample_id}.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert max(thumbnail.shape[:2]) == 150
        boxes, _ = analyzer.detector.detect(np.ascontiguousarray(thumbnail[:, :, ::-1]))
        assert len(boxes) == 1 and boxes[0, 2] - boxes[0, 0] > 60
    assert face_thumbnail(np.zeros((50, 50, 3), np.uint8), [60, 60, 80, 80]) is None  # a box outside the image

    assert cli(capsys, "enroll", "remove", "Barack_Obama", "--gallery", gallery_path)[0] == 0
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{biden_ids[0]}.png"]
    with Gallery(gallery_path) as gallery:
        assert gallery.remove_samples(biden_ids) == 1
    assert list(folder.glob("*.png")) == []


def test_quality_gates_report_every_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gallery = tmp_path / "gallery.db"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(OBAMA[0].read_bytes()[:5000])
    images = [OBAMA[0], DATA / "dlib_faces/dogs.jpg", DATA / "fr_examples/two_people.jpg", broken, OBAMA[0],
              DATA / "dlib_faces/2008_004176.jpg"]  # fmt: skip
    code, lines = cli(capsys, "enroll", "add", "Barack_Obama", "--json", "--gallery", gallery, *images)
    assert code == 1  # something failed
    reports = [json.loads(line) for line in lines]
    assert [r["status"] for r in reports[:-1]] == ["added", "failed", "failed", "failed", "skipped", "failed"]
    assert "no face" in reports[1]["reason"]
    assert "2 faces found" in reports[2]["reason"]
    assert "truncated" in reports[3]["reason"]
    assert "already enrolled" in reports[4]["reason"]
    assert "faces found" in reports[5]["reason"]  # a group photo of small faces
    assert reports[-1] == {"summary": {"added": 1, "skipped": 1, "failed": 4}}
    # --largest takes the bigger face; a 40 px face fails the size gate.
    code, lines = cli(capsys, "enroll", "add", "Someone", "--largest", "--json", "--gallery", gallery,
                      DATA / "fr_examples/two_people.jpg", DATA / "dlib_faces/2008_004176.jpg")  # fmt: skip
    first, second = (json.loads(line) for line in lines[:2])
    assert first["status"] == "added" and first["box"] == [226, 44, 396, 213]
    assert second["status"] == "failed" and "below the minimum" in second["reason"]


def test_empty_folder_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "people").mkdir()
    assert main(["enroll", "import", str(tmp_path / "people"), "--gallery", str(tmp_path / "g.db")]) == 2
    assert "no person folders" in caplog.text


def test_negative_example_is_honoured(tmp_path: Path, biden: Path, capsys: pytest.CaptureFixture) -> None:
    gallery = tmp_path / "gallery.db"
    cli(capsys, "enroll", "add", "Barack_Obama", *OBAMA, "--gallery", gallery)
    # A lax per-person threshold lets Biden pass as Obama (0.82 apart) ...
    assert cli(capsys, "enroll", "threshold", "Barack_Obama", "0.9", "--gallery", gallery)[0] == 0
    two_people = DATA / "fr_examples/two_people.jpg"
    assert identities(capsys, gallery, two_people)["two_people.jpg"] == ["Barack_Obama", "Barack_Obama"]
    # ... until an operator says "this face is NOT Obama".
    assert cli(capsys, "enroll", "reject", "Barack_Obama", biden, "--gallery", gallery)[0] == 0
    _code, lines = cli(capsys, "identify", "--json", "--gallery", gallery, two_people)
    faces = json.loads(lines[0])["faces"]
    assert [f["identity"] for f in faces] == ["Barack_Obama", "unknown"]
    assert faces[1]["reason"] == "negative"


def test_export_import_round_trip_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, copy, backup = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "backup.json"
    cli(capsys, "enroll", "import", DATA / "video/gallery", "--gallery", source)
    assert cli(capsys, "enroll", "export", backup, "--gallery", source)[0] == 0
    assert cli(capsys, "enroll", "import-file", backup, "--gallery", copy)[0] == 0
    with Gallery(source) as a, Gallery(copy) as b:
        assert [p.name for p in a.people()] == [p.name for p in b.people()]
        np.testing.assert_array_equal(a.store.samples().descriptors, b.store.samples().descriptors)
    _code, lines = cli(capsys, "enroll", "calibrate", "--json", "--gallery", copy)
    report = json.loads(lines[0])
    assert report["people"] == 2 and report["impostor_pairs"] == 1 and report["meaningful"] is False


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path: Path, biden: Path) -> None:
    gallery = tmp_path / "gallery.db"
    env = {**os.environ}
    jobs = [
        subprocess.Popen(
            [FACESTREAM, "-q", "enroll", "add", name, *map(str, images), "--gallery", str(gallery)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, images in (("Barack_Obama", OBAMA), ("Joe_Biden", [biden]))
    ]
    for job in jobs:
        _out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    with Gallery(gallery) as both:
        assert {p.name: p.samples for p in both.people()} == {"Barack_Obama": 2, "Joe_Biden": 1}
