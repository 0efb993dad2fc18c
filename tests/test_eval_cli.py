"""`facestream eval pairs` and `facestream eval video` on small hand-made sets built from tests/data.

Expected figures are computed here from dlib's golden descriptors and labels (tests/data/golden), not
from our models: our distances must agree with dlib's, and our accuracy figures with a brute-force
count over dlib's distances.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facestream.pipeline.cli.main import main

from conftest import DATA, GOLDEN, golden_images, golden_video

GALLERY = DATA / "video/gallery"
# person, number -> (source, lossless): files are copied; video frames are written as PNG
IMAGES = {
    ("Barack_Obama", 1): ("fr_examples/obama-240p.jpg", False),
    ("Barack_Obama", 2): ("fr_examples/obama-480p.jpg", False),
    ("Barack_Obama", 3): ("fr_test_images/obama_partial_face.jpg", False),
    ("Barack_Obama", 4): ("fr_test_images/obama_partial_face2.jpg", False),
    ("Lin_Manuel_Miranda", 1): ("video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png", True),
    ("Lin_Manuel_Miranda", 2): (3, True),  # frame 3 of the demo clip (wide shot, ~40 px face)
    ("Lin_Manuel_Miranda", 3): (10, True),
    ("Alex_Lacamoire", 1): ("video/gallery/Alex_Lacamoire/alex-lacamoire.png", True),
    ("Alex_Lacamoire", 2): (22, True),  # the close-up, near profile
    ("Alex_Lacamoire", 3): (28, True),
    ("Tom_Cruise", 1): ("dlib_faces/Tom_Cruise_avp_2014_4.jpg", False),
}
O, L, A, T = "Barack_Obama", "Lin_Manuel_Miranda", "Alex_Lacamoire", "Tom_Cruise"
PAIRS = [  # 2 folds of 4 matched + 4 mismatched
    [(O, 1, O, 3), (L, 1, L, 2), (A, 1, A, 2), (O, 2, O, 4)],
    [(O, 1, L, 1), (O, 2, A, 1), (L, 2, T, 1), (A, 3, T, 1)],
    [(L, 2, L, 3), (A, 2, A, 3), (L, 1, L, 3), (O, 3, O, 4)],
    [(O, 3, T, 1), (L, 1, A, 1), (L, 2, A, 3), (O, 4, A, 2)],
]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_CACHE", str(model_cache))


def clip_frames(indices: list[int]) -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(DATA / "video/short_hamilton_clip.mp4"))
    frames, index = {}, 0
    while len(frames) < len(indices):
        ok, frame = capture.read()
        assert ok
        if index in indices:
            frames[index] = frame
        index += 1
    capture.release()
    return frames


def pairs_text(folds: list[list[tuple]]) -> str:
    lines = [f"{len(folds) // 2} {len(folds[0])}"]
    for block in folds:
        for a, n1, b, n2 in block:
            lines.append(f"{a}\t{n1}\t{n2}" if a == b else f"{a}\t{n1}\t{b}\t{n2}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lfw")
    frames = clip_frames([s for s, _ in IMAGES.values() if isinstance(s, int)])
    for (name, number), (source, _) in IMAGES.items():
        target = root / name / f"{name}_{number:04d}.jpg"
        target.parent.mkdir(exist_ok=True)
        if isinstance(source, int):
            assert cv2.imwrite(str(target.with_suffix(".png")), frames[source])
            target.with_suffix(".png").rename(target)  # PNG bytes under LFW's .jpg name: decoded by content
        else:
            shutil.copy(DATA / source, target)
    (root / "pairs.txt").write_text(pairs_text(PAIRS))
    return root


def golden_descriptor(name: str, number: int) -> np.ndarray:
    """dlib's descriptor of the face nearest the image centre (its own detections, upsample 1)."""
    source, _ = IMAGES[(name, number)]
    if isinstance(source, int):
        faces, (height, width) = golden_video()["frames"][str(source)]["cnn_faces"], (360, 640)
    else:
        faces = golden_images()[source]["cnn_faces"]
        height, width = cv2.imread(str(DATA / source)).shape[:2]
    rects = np.array([f["rect"][:4] for f in faces], dtype=np.float64)
    centres = (rects[:, :2] + rects[:, 2:]) / 2
    nearest = np.argmin(np.hypot(centres[:, 0] - (width - 1) / 2, centres[:, 1] - (height - 1) / 2))
    return np.array(faces[int(nearest)]["descriptor"])


def brute_force_figures(d: np.ndarray, same: np.ndarray, folds: np.ndarray, threshold: float) -> dict:
    def best(dd: np.ndarray, ss: np.ndarray) -> float:
        values = sorted(set(dd.tolist()))
        candidates = [values[0] - 1] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [values[-1] + 1]
        return max(candidates, key=lambda t: (np.sum((dd <= t) == ss), -t))

    fold_acc = []
    for f in np.unique(folds):
        t = best(d[folds != f], same[folds != f])
        fold_acc.append(np.mean((d[folds == f] <= t) == same[folds == f]))
    # TAR at a FAR below 1/impostors: genuine pairs strictly nearer than the nearest impostor
    tar_strict = np.mean(d[same] < d[~same].min())
    return {"accuracy": np.mean((d <= threshold) == same), "kfold": np.mean(fold_acc), "tar": tar_strict}


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out


def test_eval_pairs_reproduces_the_figures_from_dlibs_descriptors(
    lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    roc, table = tmp_path / "roc.png", tmp_path / "pairs.csv"
    code, out = run(capsys, "eval", "pairs", "--pairs", lfw / "pairs.txt", "--root", lfw, "--json",
                    "--roc", roc, "--csv", table)  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert (report["pairs"], report["matched"], report["mismatched"], report["folds"]) == (16, 8, 8, 2)
    assert report["faces"] == {"detected": 11, "low_threshold": 0, "centred_box": 0, "unreadable": 0}
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 16
    ours = np.array([float(r["distance"]) for r in rows])
    firsts = [golden_descriptor(r["name1"], int(r["number1"])) for r in rows]
    seconds = [golden_descriptor(r["name2"], int(r["number2"])) for r in rows]
    theirs = np.linalg.norm(np.array(firsts) - np.array(seconds), axis=1)
    lossless = np.array([IMAGES[(r["name1"], int(r["number1"]))][1] and IMAGES[(r["name2"], int(r["number2"]))][1]
                         for r in rows])  # fmt: skip
    # PNGs and video frames decode to dlib's pixels: descriptors agree to the embedder's precision;
    # OpenCV's JPEG decoder differs from dlib's by a few grey levels (README "Parity with dlib")
    assert np.abs(ours - theirs)[lossless].max() < 1e-3
    assert np.abs(ours - theirs).max() < 0.02
    same = np.array([r["same"] == "1" for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    # the answers below are robust: no JPEG pair is within 0.02 of a decision boundary that matters
    assert np.all(np.abs(theirs[~lossless] - 0.6) > 0.05)
    expected = brute_force_figures(theirs, same, folds, 0.6)
    assert expected["accuracy"] == 15 / 16  # Alex's gallery photo vs the close-up: 0.64 (README)
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["kfold"]["mean"] == pytest.approx(expected["kfold"])
    assert [p["target_far"] for p in report["tar_at_far"]] == [1e-3, 1e-2]
    assert expected["tar"] == 7 / 8
    assert all(p["tar"] == pytest.approx(expected["tar"]) and p["far"] == 0 for p in report["tar_at_far"])
    picture = cv2.imread(str(roc))
    assert picture is not None and picture.shape == (560, 720, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 3

    # a re-run comes from the cache; text output names the figures
    code, out = run(capsys, "eval", "pairs", "--pairs", lfw / "pairs.txt", "--root", lfw, "--roc", "", "--csv", "")
    assert code == 0
    assert "accuracy at threshold 0.6: 93.75%" in out
    assert "descriptors: 0 computed, 11 from the cache" in out
    cache = Path(os.environ["FACESTREAM_CACHE"]) / "eval-descriptors.sqlite"
    assert oct(cache.stat().st_mode & 0o777) == "0o600"  # descriptors are biometric data, as the gallery
    assert "2-fold accuracy (threshold chosen on the other folds)" in out and "TAR at FAR 0.001" in out


def test_fallbacks_for_images_without_a_face_and_jitter_options(
    lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "set"
    shutil.copytree(lfw / O, root / O)
    (root / "Dog").mkdir()
    shutil.copy(DATA / "dlib_faces/dogs.jpg", root / "Dog/Dog_0001.jpg")  # no face at threshold 0 (golden)
    assert golden_images()["dlib_faces/dogs.jpg"]["cnn_faces"] == []
    (root / "Blank").mkdir()
    assert cv2.imwrite(str(root / "Blank/Blank_0001.png"), np.full((250, 250, 3), 128, np.uint8))
    (root / "Blank/Blank_0001.png").rename(root / "Blank/Blank_0001.jpg")
    (root / "pairs.txt").write_text("1 2\nBarack_Obama 1 2\nBarack_Obama 3 4\nBarack_Obama 1 Dog 1\nDog 1 Blank 1\n")
    table = tmp_path / "d.csv"
    code, out = run(capsys, "eval", "pairs", "--pairs", root / "pairs.txt", "--root", root, "--json", "--roc", "",
                    "--csv", table)  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["faces"] == {"detected": 4, "low_threshold": 1, "centred_box": 1, "unreadable": 0}
    assert report["kfold"] is None  # one fold: no cross-validation
    assert report["descriptors"]["computed"] + report["descriptors"]["cached"] == 6
    rows = list(csv.DictReader(table.open()))
    assert [(r["face1"], r["face2"]) for r in rows][-1] == ("low_threshold", "centred_box")

    subset = tmp_path / "subset.txt"  # the first and third pairs again, with dlib's num_jitters = 3
    subset.write_text("1 1\nBarack_Obama 1 2\nBarack_Obama 1 Dog 1\n")
    code, out = run(capsys, "eval", "pairs", "--pairs", subset, "--root", root, "--json", "--roc", "",
                    "--csv", tmp_path / "j.csv", "--jitters", "3")  # fmt: skip
    jittered = json.loads(out)
    assert code == 0 and jittered["options"]["jitters"] == 3
    assert (jittered["descriptors"]["computed"], jittered["descriptors"]["cached"]) == (3, 0)  # options key the cache
    plain = np.array([float(rows[0]["distance"]), float(rows[2]["distance"])])
    with_jitter = np.array([float(r["distance"]) for r in csv.DictReader((tmp_path / "j.csv").open())])
    assert np.all(plain != with_jitter) and np.abs(plain - with_jitter).max() < 0.2


def test_malformed_pairs_file_and_missing_images_fail_with_the_reason(
    lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(
        "1 2\nBarack_Obama 1 2\nBarack_Obama 1 3 4\nBarack_Obama 1 Tom_Cruise 1\nTom_Cruise 1 Alex_Lacamoire\n"
    )
    code, out = run(capsys, "eval", "pairs", "--pairs", bad, "--root", lfw)
    assert code == 2 and out == ""
    assert f"{bad} line 3: expected a matched pair 'Name n1 n2' (fold 1, matched pair 2), got 4 fields" in caplog.text
    caplog.clear()
    missing = tmp_path / "missing.txt"
    missing.write_text("1 1\nBarack_Obama 1 9\nBarack_Obama 1 Nobody 1\n")
    code, _ = run(capsys, "eval", "pairs", "--pairs", missing, "--root", lfw)
    assert code == 2
    assert "2 of 3 images are missing" in caplog.text and "Barack_Obama/Barack_Obama_0009.jpg" in caplog.text

    # an unreadable image: its pairs are left out and named, the others scored, exit code 1
    root = tmp_path / "broken"
    for name in ("Grey", "Junk"):
        (root / name).mkdir(parents=True)
    assert cv2.imwrite(str(root / "Grey/Grey_0001.png"), np.full((120, 120, 3), 90, np.uint8))
    (root / "Grey/Grey_0001.png").rename(root / "Grey/Grey_0001.jpg")
    shutil.copy(root / "Grey/Grey_0001.jpg", root / "Grey/Grey_0002.jpg")
    (root / "Junk/Junk_0001.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "pairs.txt").write_text("1 1\nGrey 1 2\nGrey 1 Junk 1\n")
    code, out = run(capsys, "eval", "pairs", "--pairs", root / "pairs.txt", "--root", root, "--json", "--roc", "",
                    "--csv", "", "--no-cache")  # fmt: skip
    report = json.loads(out)
    assert code == 1 and report["pairs_scored"] == 1 and report["faces"]["unreadable"] == 1
    assert list(report["unreadable"]) == ["Junk/Junk_0001.jpg"]
    assert report["faces"]["centred_box"] == 2 and report["accuracy"] == 1.0  # two identical grey images: 0.0 apart


# ------------------------------------------------------------------------------------------------
# eval video


def test_eval_video_scores_dlibs_golden_labels(capsys: pytest.CaptureFixture) -> None:
    golden = GOLDEN / "dlib-20.0.1-video-up1-every-frame.jsonl"
    code, out = run(capsys, "eval", "video", "--truth", DATA / "video/truth.json", "--detections", golden, "--json")
    assert code == 0
    report = json.loads(out)
    records = [json.loads(line) for line in golden.read_text().splitlines()]
    lin_frames = [r["frame"] for r in records if any(f["label"] == "Lin_Manuel_Miranda" for f in r["faces"])]
    assert report["scored_frames"] == 275 and report["identities"]["Lin_Manuel_Miranda"]["named_frames"] == len(
        lin_frames
    )
    truth = json.loads((DATA / "video/truth.json").read_text())
    present = {f for s in truth["segments"] if "Lin_Manuel_Miranda" in s["present"]
               for f in range(s["frames"][0], s["frames"][1] + 1)}  # fmt: skip
    assert report["identities"]["Lin_Manuel_Miranda"]["recall"] == round(
        len(present & set(lin_frames)) / len(present), 4
    )


def test_eval_video_truth_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    truth = tmp_path / "t.json"
    truth.write_text('{"segments": [{"frames": [5, 2], "present": []}]}')
    code, _ = run(capsys, "eval", "video", "--truth", truth, "--detections", truth)
    assert code == 2 and "segment 1: frames [5, 2] are not a range" in caplog.text
    truth.write_text('{"segments": [}')
    assert run(capsys, "eval", "video", "--truth", truth, "--detections", truth)[0] == 2
    assert "not JSON" in caplog.text
    truth.write_text('{"segments": [{"frames": [0, 2]}]}')
    assert run(capsys, "eval", "video", "--truth", truth)[0] == 2  # neither a video nor --detections
    assert "give either VIDEO" in caplog.text


def test_eval_video_runs_the_real_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Frames 15-29 of the demo clip as an image folder: Lin-Manuel Miranda (5 frames), then Alex Lacamoire."""
    first, count = 15, 15
    frames = clip_frames(list(range(first, first + count)))
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in frames.items():
        assert cv2.imwrite(str(folder / f"{index - first:03d}.png"), frame)
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"frames": count, "segments": [
        {"frames": [0, 4], "present": [L], "optional": [A]}, {"frames": [5, 14], "present": [A]}]}))  # fmt: skip
    saved = tmp_path / "detections.jsonl"
    code, out = run(capsys, "eval", "video", "--truth", truth, folder, "--gallery", GALLERY, "--label", "match",
                    "--save-detections", saved, "--json")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["scored_frames"] == count and report["frames_without_prediction"] == 0
    assert report["run"]["upsample"] == 1 and report["detections"] == str(saved)
    # each frame's own gallery answer agrees with dlib's every-frame labels wherever dlib is not within
    # 0.01 of the 0.6 threshold (there our descriptors, equal to dlib's within 1e-4, could fall either side)
    golden = [
        json.loads(line) for line in (GOLDEN / "dlib-20.0.1-video-up1-every-frame.jsonl").read_text().splitlines()
    ]
    ours = {r["frame_index"]: r for r in map(json.loads, saved.read_text().splitlines())}
    expected_named = {L: 0, A: 0}
    for i in range(count):
        dlib_faces = golden[first + i]["faces"]
        our_faces = ours[i]["faces"]
        assert len(our_faces) == len(dlib_faces)
        for mine, theirs in zip(sorted(our_faces, key=lambda f: f["box"]), sorted(dlib_faces, key=lambda f: f["box"])):
            assert np.abs(np.subtract(mine["box"], theirs["box"])).max() <= 2
            if min(abs(d - 0.6) for d in theirs["distances"].values()) > 0.01:
                assert mine["match"]["identity"] == theirs["label"]
        for name in expected_named:
            expected_named[name] += any(f["match"]["identity"] == name for f in our_faces) and not (
                name == A and i < 5)  # Alex is optional in the first segment  # fmt: skip
    assert report["identities"][L]["named_frames"] == expected_named[L]
    assert report["identities"][A]["named_frames"] == expected_named[A]
    assert report["identities"][A]["truth_frames"] == 10 and report["identities"][L]["truth_frames"] == 5


def test_eval_video_picks_a_stream_and_names_bad_detection_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    truth = tmp_path / "t.json"
    truth.write_text(json.dumps({"segments": [{"frames": [0, 1], "present": [L]}]}))
    lines = [{"stream_id": s, "frame_index": i, "faces": [{"track_id": 1, "identity": L if s == "a" else A}]}
             for s in ("a", "b") for i in (0, 1)]  # fmt: skip
    detections = tmp_path / "d.jsonl"
    detections.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, _ = run(capsys, "eval", "video", "--truth", truth, "--detections", detections)
    assert code == 2 and "holds 2 streams (a, b): pick one with --stream" in caplog.text
    for stream, precision in (("a", 1.0), ("b", None)):
        code, out = run(capsys, "eval", "video", "--truth", truth, "--detections", detections, "--stream", stream,
                        "--json")  # fmt: skip
        report = json.loads(out)
        assert code == 0 and report["identities"][L]["precision"] == precision
        assert report["false_identifications"] == (0 if stream == "a" else 2)
    detections.write_text(json.dumps(lines[0]) + "\n{broken\n")
    assert run(capsys, "eval", "video", "--truth", truth, "--detections", detections)[0] == 2
    assert f"{detections} line 2: not JSON" in caplog.text


def test_an_events_file_whose_writer_was_killed_mid_line_is_read_up_to_the_cut(tmp_path: Path) -> None:
    """SIGKILL can cut the last line (see sinks.writers.JsonLines): it is skipped; a bad line inside is an error."""
    from facestream.pipeline.cli.eval.video import _read_jsonl

    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "a"}\n{"event": "b"}\n{"event": "c", "box": [1, 2')
    assert [r["event"] for r in _read_jsonl(str(path))] == ["a", "b"]
    path.write_text('{"event": "a"}\n{"event": "b", \n{"event": "c"}\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        _read_jsonl(str(path))
