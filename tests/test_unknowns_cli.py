"""The unknowns file (writer and reader) and `facestream unknowns`: list clusters, enrol one, real photos."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.enroll.clustering import chinese_whispers
from facestream.enroll.gallery import Gallery
from facestream.pipeline.cli.main import main
from facestream.pipeline.cli.unknowns import enroll_cluster, list_clusters
from facestream.pipeline.domain.unknowns import (
    UnknownsFileError,
    UnknownTracks,
    read_unknowns,
    track_record,
    write_records,
)

from conftest import DATA, golden_images, golden_video, require_dlib

LIN = "video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in defaults (no ./config.yaml) and one model cache for the whole run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_CACHE", str(model_cache))


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level("WARNING", logger="facestream")
    return caplog


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out.splitlines()


def golden_file(path: Path) -> list[np.ndarray]:
    """An unknowns file as a run would write it, from dlib's golden descriptors: the demo clip's frames 0-19
    (one track, Lin-Manuel Miranda) and 20-29 (one track, Alex Lacamoire) with their three best faces, and
    bald_guys.jpg's 25 faces as 25 one-face tracks of a second stream. Returns the descriptors in file order."""
    frames = golden_video()["frames"]
    records, descriptors = [], []
    for track, span in ((1, range(0, 20)), (2, range(20, 30))):
        faces = []
        for frame in list(span)[:3]:
            face = frames[str(frame)]["cnn_faces"][0]
            faces.append({"frame_index": frame, "timestamp": frame / 29.97, "box": face["rect"][:4],
                          "score": face["rect"][4], "weight": 1.0,
                          "descriptor": np.array(face["descriptor"])})  # fmt: skip
            descriptors.append(np.array(face["descriptor"], np.float32))
        records.append(track_record("clip", track, faces, first_frame=span[0], last_frame=span[-1],
                                    first_timestamp=span[0] / 29.97, last_timestamp=span[-1] / 29.97,
                                    source="short_hamilton_clip.mp4"))  # fmt: skip
    for i, face in enumerate(golden_images()["dlib_faces/bald_guys.jpg"]["cnn_faces"]):
        descriptor = np.array(face["descriptor"], np.float32)
        photo = {"frame_index": 0, "timestamp": 60.0 + i, "box": face["rect"][:4], "descriptor": descriptor}
        records.append(track_record("photos", 100 + i, [photo], first_frame=0, last_frame=0,
                                    first_timestamp=60.0 + i, last_timestamp=60.0 + i))  # fmt: skip
        descriptors.append(descriptor)
    assert write_records(path, records) == 27
    return descriptors


def dlib_partition(descriptors: list[np.ndarray]) -> list[int]:
    dlib = require_dlib()
    return list(
        dlib.chinese_whispers_clustering([dlib.vector(d.astype(np.float64).tolist()) for d in descriptors], 0.6)
    )


def partition(labels: list[int]) -> set[frozenset[int]]:
    return {frozenset(i for i, label in enumerate(labels) if label == k) for k in set(labels)}


# -- the file ----------------------------------------------------------------------------------------


def test_collector_keeps_the_best_faces_of_unknown_tracks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out, chips = tmp_path / "run" / "unknowns.jsonl", tmp_path / "run" / "chips"
    collector = UnknownTracks(out, max_faces=2, chip_dir=chips, sources={"door": "rtsp://admin:secret@camera/door"})
    descriptors = rng.normal(0, 0.1, (6, 128)).astype(np.float32)
    chip = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    weights = [0.2, 0.9, 0.0, 0.5, 0.7, 0.6]
    for i in range(4):
        collector.observe("door", 7, 10 + i, 1.0 + i / 10, [1, 2, 60, 70], 1.0, weights[i], descriptors[i], chip)
    collector.observe("door", 8, 12, 1.2, [5, 5, 50, 50], 1.0, weights[4], descriptors[4])
    collector.observe("door", 9, 12, 1.2, [5, 5, 50, 50], 0.2, 0.0, descriptors[4])  # only faces the gate rejects
    collector.observe("door", 9, 13, 1.3, [5, 5, 50, 50], 0.4, 0.0, descriptors[5])
    assert collector.end("door", 8, "Alice") is None  # known: nothing written
    blurred = collector.end("door", 9, None)  # never identified (no face passed the gate): written, weight 0
    assert blurred is not None and [(f["frame_index"], f["weight"]) for f in blurred["faces"]] == [(12, 0.0), (13, 0.0)]
    record = collector.end("door", 7, "unknown")
    collector.observe("door", 10, 20, 2.0, [5, 5, 50, 50], 1.0, 0.3, descriptors[5])
    collector.close()  # the run stopped: open tracks are written as unknown
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[1]) == record and json.loads(lines[2])["track_id"] == 10
    assert [f["frame_index"] for f in record["faces"]] == [11, 13]  # weights 0.9 and 0.5 beat 0.2 and 0.0
    assert (
        record["first_frame"] == 10
        and record["last_frame"] == 13
        and record["source"] == "rtsp://admin:***@camera/door"
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # biometric data
    for face in record["faces"]:
        assert Path(face["chip"]).is_file() and stat.S_IMODE(Path(face["chip"]).stat().st_mode) == 0o600
        assert np.array_equal(cv2.imread(face["chip"])[:, :, ::-1], chip)  # lossless, RGB
    report = read_unknowns(out)
    assert report.tracks == 3 and report.problems == []
    assert np.array_equal(report.faces[2].descriptor, descriptors[1])  # bit for bit
    assert report.faces[2].visit == ("door", 7) and report.faces[2].box == (1, 2, 60, 70)


def test_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    golden_file(path)
    good = path.read_text().splitlines()
    broken = json.loads(good[0])
    broken["faces"][0]["descriptor"] = "AAAA"
    lines = [good[0], "{not json", json.dumps({"format": "other"}), json.dumps(broken), good[1][: len(good[1]) // 2]]
    path.write_text("\n".join(lines + good[1:]) + "\n")
    report = read_unknowns(path)
    assert report.tracks == 27 and len(report.faces) == 31
    assert [p.split(":")[1] for p in report.problems] == ["2", "3", "4", "5"]
    assert "bytes" in report.problems[2] and "not JSON" in report.problems[3]
    with pytest.raises(UnknownsFileError, match="no such file"):
        read_unknowns(tmp_path / "missing.jsonl")


# -- the command -------------------------------------------------------------------------------------


def test_list_clusters_as_dlib(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "u.jsonl"
    descriptors = golden_file(path)
    code, lines = cli(capsys, "unknowns", path, "--json", "--threshold", "0.6")  # dlib's same-person rule
    assert code == 0
    *clusters, summary = map(json.loads, lines)
    assert summary["summary"] == {"faces": 31, "tracks": 27, "left_out_below_quality_gate": 0, "left_out_tracks": 0,
                                  "clusters": len(clusters), "threshold": 0.6, "skipped_lines": 0}  # fmt: skip
    listing = list_clusters(path)
    ours = [0] * len(descriptors)
    for cluster in listing.clusters:
        for i in cluster.faces:
            ours[i] = cluster.number
    assert partition(ours) == partition(dlib_partition(descriptors))
    assert [c["number"] for c in clusters] == list(range(1, len(clusters) + 1))
    assert [c["tracks"] for c in clusters] == sorted((c["tracks"] for c in clusters), reverse=True)
    lin = next(c for c in clusters if c["first_seen"]["stream_id"] == "clip" and c["first_seen"]["track_id"] == 1)
    assert lin["faces"] == 3 and lin["first_seen"]["frame_index"] == 0 and lin["last_seen"]["frame_index"] == 2
    code, lines = cli(capsys, "unknowns", path, "--threshold", "0.6")
    assert (
        code == 0
        and lines[0]
        == f"31 unknown faces clustered (27 tracks in the file) -> {len(clusters)} unknown people (threshold 0.6)"
    )
    assert any(line.startswith("unknown person 1 [id ") for line in lines)
    code, lines = cli(capsys, "unknowns", path, "--min-tracks", "2", "--threshold", "0.6")
    assert code == 0 and lines[-1].endswith("seen in fewer than 2 tracks not shown)")


def test_enroll_a_cluster_in_one_step(
    tmp_path: Path, capsys: pytest.CaptureFixture, logged: pytest.LogCaptureFixture
) -> None:
    path, db = tmp_path / "u.jsonl", tmp_path / "g.db"
    golden_file(path)
    listing = list_clusters(path)
    first = listing.clusters[0]
    code, lines = cli(capsys, "unknowns", path, "--enroll", "1", "Jane Doe", "--gallery", db, "--json")
    assert code == 0
    result = json.loads(lines[0])
    assert result["added"] == len(first.faces) and result["id"] == first.key(listing.faces)
    with Gallery(db) as gallery:
        people = {p.name: p.samples for p in gallery.people()}
        assert people == {"Jane Doe": len(first.faces)}
        assert gallery.identify(first.descriptors(listing.faces)).identities == ["Jane Doe"] * len(first.faces)
    # Again, by id: nothing new (already enrolled), nothing lost.
    code, lines = cli(capsys, "unknowns", path, "--enroll", first.key(listing.faces), "Jane Doe", "--gallery", db)
    assert code == 0 and "0 samples added" in lines[0] and f"{len(first.faces)} already enrolled" in lines[0]
    # A cluster id that is not (or no longer) there: a clear error, nothing written.
    code, _ = cli(capsys, "unknowns", path, "--enroll", "0123456789ab", "X", "--gallery", db)
    assert code == 2 and "no cluster with id" in logged.text
    code, _ = cli(capsys, "unknowns", path, "--enroll", "99", "X", "--gallery", db)
    assert code == 2 and "no unknown person 99" in logged.text


def test_enroll_refuses_a_cluster_that_matches_someone_else(
    tmp_path: Path, capsys: pytest.CaptureFixture, logged: pytest.LogCaptureFixture
) -> None:
    path, db = tmp_path / "u.jsonl", tmp_path / "g.db"
    golden_file(path)
    with Gallery(db) as gallery:
        gallery.add_samples("Lin_Manuel_Miranda", np.array([golden_images()[LIN]["cnn_faces"][0]["descriptor"]]))
    listing = list_clusters(path)
    lin = next(c for c in listing.clusters if ("clip", 1) in c.tracks)
    code, _ = cli(capsys, "unknowns", path, "--enroll", lin.number, "Someone", "--gallery", db)
    assert code == 2 and "now match Lin_Manuel_Miranda" in logged.text
    with Gallery(db) as gallery:
        assert [p.name for p in gallery.people()] == ["Lin_Manuel_Miranda"]  # nothing written
        result = enroll_cluster(gallery, listing, lin.number, "Someone", force=True, max_samples=2)
        assert result["added"] == 2 and result["matched_others"] == ["Lin_Manuel_Miranda"]


def test_missing_file_and_bad_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture, logged: pytest.LogCaptureFixture
) -> None:
    code, _ = cli(capsys, "unknowns", tmp_path / "none.jsonl")
    assert code == 2 and "no such file" in logged.text
    code, _ = cli(capsys, "unknowns", tmp_path / "none.jsonl", "--threshold", "0")
    assert code == 2 and "--threshold must be" in logged.text


def test_unknown_faces_from_a_real_photo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The whole chain on bald_guys.jpg: our detector and embedder (ONNX), the unknowns file, clustering.
    The four people of six and the stray face come out as dlib's own clustering of dlib's descriptors."""
    path, db = tmp_path / "u.jsonl", tmp_path / "g.db"
    with Gallery(db) as gallery:  # Lin-Manuel enrolled: face 19 of bald_guys is within 0.6 of him, so not unknown
        gallery.add_samples("Lin_Manuel_Miranda", np.array([golden_images()[LIN]["cnn_faces"][0]["descriptor"]]))
    image = DATA / "dlib_faces/bald_guys.jpg"
    code, lines = cli(capsys, "unknowns", path, "--add-images", image, "--gallery", db, "--json")
    assert code == 0
    report = read_unknowns(path)
    assert len(report.faces) == 24 and all(face.source == str(image) for face in report.faces)
    ours = np.stack([face.descriptor for face in report.faces])
    assert chinese_whispers(ours).tolist() == dlib_partition(list(ours))  # dlib's clustering of our descriptors
    # ... and the same people as dlib's clustering of dlib's own descriptors (our faces matched to dlib's by
    # box: the command decodes with OpenCV, whose JPEG pixels differ slightly from dlib's on this file).
    golden = golden_images()["dlib_faces/bald_guys.jpg"]["cnn_faces"]
    centres = np.array([[(f["rect"][0] + f["rect"][2]) / 2, (f["rect"][1] + f["rect"][3]) / 2] for f in golden])
    order = [int(np.argmin(np.abs(centres - [(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2]).sum(axis=1)))
             for f in report.faces]  # fmt: skip
    assert sorted(order) == [i for i in range(25) if i != 19]
    expected = dlib_partition([np.array(golden[i]["descriptor"]) for i in order])  # dlib's, in our order
    assert partition(chinese_whispers(ours).tolist()) == partition(expected)
    clusters = [json.loads(line) for line in lines[:-1]]
    gated = [face for face in report.faces if not face.weight]  # the run's quality gate applies to photos too
    assert len(gated) < 3 and sum(c["faces"] for c in clusters) == 24 - len(gated)


def test_faces_below_the_quality_gate(tmp_path: Path, capsys: pytest.CaptureFixture,
                                     logged: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A blurred visitor (every face rejected by the run's gate) is left out of the clusters by default, and
    enrolled only with --force."""
    path, db = tmp_path / "u.jsonl", tmp_path / "g.db"
    golden = golden_images()["dlib_faces/bald_guys.jpg"]["cnn_faces"]
    faces = [{"frame_index": i, "timestamp": i / 10, "box": golden[i]["rect"][:4], "weight": weight,
              "descriptor": np.array(golden[i]["descriptor"])}
             for i, weight in ((0, 0.0), (1, 0.0), (2, 0.8))]  # fmt: skip
    write_records(path, [track_record("door", 1, faces[:2], first_frame=0, last_frame=1, first_timestamp=0.0,
                                      last_timestamp=0.1),
                         track_record("door", 2, faces[2:], first_frame=2, last_frame=2, first_timestamp=0.2,
                                      last_timestamp=0.2)])  # fmt: skip
    listing = list_clusters(path)
    assert len(listing.faces) == 1 and len(listing.left_out) == 2 and len(listing.clusters) == 1
    assert listing.summary()["left_out_below_quality_gate"] == 2 and listing.summary()["left_out_tracks"] == 1
    code, lines = cli(capsys, "unknowns", path)
    assert code == 0 and lines[-1].startswith("(2 faces of 1 tracks below the quality gate left out")
    listing = list_clusters(path, all_faces=True)
    blurred = next(c for c in listing.clusters if ("door", 1) in c.tracks)  # faces 0 and 1: one person for dlib
    assert blurred.to_record(listing.faces)["below_quality_gate"] == 2
    code, lines = cli(capsys, "unknowns", path, "--all-faces")
    assert code == 0 and any("(2 below the quality gate)" in line for line in lines)
    which = blurred.key(listing.faces)
    code, _ = cli(capsys, "unknowns", path, "--all-faces", "--enroll", which, "Blurry", "--gallery", db)
    assert code == 2 and "none of its 2 faces passed the quality gate" in logged.text
    code, lines = cli(capsys, "unknowns", path, "--all-faces", "--enroll", which, "Blurry", "--gallery", db,
                      "--force", "--json")  # fmt: skip
    assert code == 0 and json.loads(lines[0])["added"] == 2
