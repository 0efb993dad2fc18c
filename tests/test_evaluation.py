"""The pure accuracy functions of enroll/evaluation.py, against answers worked out by hand or by brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facestream.enroll.evaluation import (
    FaceLabel,
    PairsFormatError,
    TruthFormatError,
    accuracy,
    best_threshold,
    kfold_accuracy,
    parse_pairs,
    parse_truth,
    predictions_from_records,
    roc_curve,
    score_identification,
    tar_at_far,
)

from conftest import GOLDEN

# ------------------------------------------------------------------------------------------------
# pairs files

GOOD = """2 2
Aaron\t1\t2
Bea 3 4
Aaron 1 Bea 2
Cy 1 Bea 4
Cy 1 2
Aaron 2 3
Bea 1 Cy 2
Cy 2 Aaron 3
"""


def test_parse_pairs_reads_folds_matched_then_mismatched() -> None:
    parsed = parse_pairs(GOOD, "p.txt")
    assert (parsed.folds, parsed.per_fold, len(parsed.pairs)) == (2, 2, 8)
    assert [p.fold for p in parsed.pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert parsed.same.tolist() == [True, True, False, False] * 2
    assert parsed.pairs[0].images == ("Aaron/Aaron_0001.jpg", "Aaron/Aaron_0002.jpg")
    assert parsed.pairs[3].images == ("Cy/Cy_0001.jpg", "Bea/Bea_0004.jpg")
    assert parsed.pairs[7].line == 9
    assert parsed.images()[:3] == ["Aaron/Aaron_0001.jpg", "Aaron/Aaron_0002.jpg", "Bea/Bea_0003.jpg"]
    assert len(parsed.images()) == len(set(parsed.images()))


def test_one_number_header_is_one_fold_and_trailing_blank_lines_are_fine() -> None:
    parsed = parse_pairs("1\nA 1 2\nA 1 B 1\n\n\n")
    assert (parsed.folds, parsed.per_fold, parsed.same.tolist()) == (1, 1, [True, False])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ten 300\n", "line 1: the header must be a positive whole number"),
        ("1 2 3\n", "line 1: expected a header"),
        ("1 1\nA 1 2\n", "announces 1 fold(s) of 1 matched + 1 mismatched pairs = 2 lines, but 1 follow"),
        ("1 1\nA 1 B 2\nA 1 B 2\n", "line 2: expected a matched pair 'Name n1 n2' (fold 1, matched pair 1), got 4"),
        ("1 1\nA 1 2\nA 1 2\n", "line 3: expected a mismatched pair 'Name1 n1 Name2 n2' (fold 1, mismatched pair 1)"),
        ("1 1\nA 1 x\nA 1 B 2\n", "line 2: an image number must be a positive whole number, got 'x'"),
        ("1 1\nA 1 0\nA 1 B 2\n", "line 2: an image number must be a positive whole number, got '0'"),
        ("1 1\nA 1 2\nA 1 A 2\n", "line 3: a mismatched pair (fold 1, mismatched pair 1) names A twice"),
        ("1 1\n../x 1 2\nA 1 B 2\n", "line 2: '../x' is not a person's name"),
        ("2 1\nA 1 2\nA 1 B 2\nC 1 2\nC 1 2 3\n", "line 5: a number (2) where a person's name should be"),
    ],
)
def test_malformed_pairs_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(PairsFormatError) as error:
        parse_pairs(text, "pairs.txt")
    assert str(error.value).startswith("pairs.txt")
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------------
# verification metrics, against brute force


def brute_best_threshold(d: list[float], same: list[bool]) -> tuple[float, int]:
    """Every midpoint, plus below and above everything; the first with the most correct pairs."""
    values = sorted(set(d))
    candidates = [values[0] - 1] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [values[-1] + 1]
    best, best_correct = None, -1
    for t in candidates:
        correct = sum((x <= t) == s for x, s in zip(d, same))
        if correct > best_correct:
            best, best_correct = t, correct
    return best, best_correct


def test_accuracy_counts_pairs_at_the_threshold_as_same() -> None:
    d = np.array([0.2, 0.6, 0.61, 0.9])
    assert accuracy(d, [True, True, False, False], 0.6) == 1.0
    assert accuracy(d, [True, False, True, False], 0.6) == 0.5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=1, max_size=40))
def test_best_threshold_is_as_good_as_brute_force(pairs: list[tuple[int, bool]]) -> None:
    d = [v / 40 for v, _ in pairs]
    same = [s for _, s in pairs]
    threshold = best_threshold(np.array(d), np.array(same))
    _, best_correct = brute_best_threshold(d, same)
    assert sum((x <= threshold) == s for x, s in zip(d, same)) == best_correct
    assert threshold not in d  # never on a pair's distance


def test_kfold_uses_the_other_folds_threshold() -> None:
    # fold 0 alone would like 0.5, fold 1 alone 0.3: each is tested at the other's choice.
    d = np.array([0.2, 0.45, 0.55, 0.8, 0.1, 0.25, 0.35, 0.9])
    same = np.array([True, True, False, False, True, True, False, False])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = kfold_accuracy(d, same, folds)
    assert result.thresholds.tolist() == pytest.approx([0.3, 0.5])  # fold 0 gets fold 1's best, and back
    assert result.accuracies.tolist() == [0.75, 0.75]  # 0.45 rejected at 0.3; 0.35 accepted at 0.5
    assert result.mean == 0.75 and result.std == 0.0
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy(d, same, np.zeros(8, int))


def test_roc_and_tar_at_far_by_hand() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.6, 0.7])
    same = np.array([True, True, False, True, True, False, True, False])
    far, tar, thresholds = roc_curve(d, same)
    assert thresholds.tolist() == [-np.inf, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert tar.tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 0.8, 1.0, 1.0])
    assert far.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    point = tar_at_far(d, same, 0.01)  # no impostor may pass: the tie at 0.3 stops at 0.2
    assert (point.tar, point.far, point.threshold) == (pytest.approx(0.4), 0.0, 0.2)
    point = tar_at_far(d, same, 0.34)
    assert (point.tar, point.threshold) == (pytest.approx(0.8), 0.4)


# ------------------------------------------------------------------------------------------------
# truth files and video scores

TRUTH = {
    "frames": 10,
    "segments": [
        {"frames": [0, 3], "present": ["Ann"], "optional": ["Bob"]},
        {"frames": [4, 5], "present": ["Bob"]},
        {"frames": [6, 7], "present": [], "unknown": 2, "note": "strangers"},
    ],
}


def test_score_identification_by_hand() -> None:
    truth = parse_truth(TRUTH, "t.json")
    ann, bob, unk = "Ann", "Bob", "unknown"
    frames = {
        0: [FaceLabel(ann, 1)],
        1: [FaceLabel(ann, 1), FaceLabel(bob, 2)],  # Bob optional: neither right nor wrong
        2: [FaceLabel(unk, 1)],  # Ann missed
        3: [FaceLabel(bob, 1)],  # track 1 switches Ann -> Bob; Bob optional here
        4: [FaceLabel(ann, 1)],  # Ann named where only Bob is: false; Bob missed; switch Bob -> Ann
        5: [FaceLabel(bob, 3)],
        6: [FaceLabel(ann, 4), FaceLabel(unk, 5)],  # a stranger named Ann
        # 7 missing: no prediction; 8, 9 not covered by the truth: not scored
        8: [FaceLabel(ann, 4)],
    }
    score = score_identification(truth, frames)
    assert (score.scored_frames, score.frames_without_prediction) == (8, 1)
    assert score.identities["Ann"].to_json() == {
        "truth_frames": 4, "named_frames": 4, "correct_frames": 2, "precision": 0.5, "recall": 0.5}  # fmt: skip
    assert score.identities["Bob"].to_json() == {
        "truth_frames": 2, "named_frames": 1, "correct_frames": 1, "precision": 1.0, "recall": 0.5}  # fmt: skip
    assert score.false_identifications == 2 and score.false_by_identity == {"Ann": 2}
    assert score.frames_with_false_identification == 2 and score.false_in_frames_with_unknown_people == 1
    assert score.exact_frames == 4  # frames 0, 1, 3 (Bob optional) and 5... and 7 (nobody, no prediction)
    tracks = {t.track_id: t for t in score.tracks}
    assert tracks[1].identities == ["Ann", "Bob", "Ann"] and tracks[1].switches == 2
    assert score.identity_switches == 2 and tracks[4].last_frame == 8
    assert json.loads(json.dumps(score.to_json()))["identity_switches"] == 2


def test_exact_frames_are_the_ones_listed() -> None:
    truth = parse_truth({"segments": [{"frames": [0, 0], "present": ["A"]}, {"frames": [1, 1], "present": []}]})
    assert score_identification(truth, {0: [FaceLabel("A")], 1: []}).exact_frames == 2
    assert score_identification(truth, {0: [], 1: [FaceLabel("A")]}).exact_frames == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'expected a JSON object with a "segments" list'),
        ({"segments": []}, "no segments"),
        ({"segments": [{"frames": [3, 1]}]}, "segment 1: frames [3, 1] are not a range"),
        ({"frames": 5, "segments": [{"frames": [0, 5]}]}, "segment 1: frames [0, 5] are not a range inside"),
        ({"segments": [{"frames": [0, 1], "present": "Ann"}]}, "segment 1: 'present' must be a list of names"),
        ({"segments": [{"frames": [0, 1], "present": ["unknown"]}]}, 'count unenrolled people with "unknown": N'),
        ({"segments": [{"frames": [0, 1]}, {"frames": [0]}]}, 'segment 2: "frames" must be [first, last]'),
        ({"segments": [{"frames": [0, 1], "unknown": -1}]}, 'segment 1: "unknown" must be a count'),
        ({"segments": [{"frames": [0, 1], "who": []}]}, "segment 1: unknown keys ['who']"),
    ],
)
def test_malformed_truth_files_name_the_segment(data: object, message: str) -> None:
    with pytest.raises(TruthFormatError) as error:
        parse_truth(data, "truth.json")
    assert str(error.value).startswith("truth.json") and message in str(error.value)


def test_predictions_from_pipeline_records_track_or_match() -> None:
    records = [
        {"stream_id": "s", "frame_index": 0, "faces": [
            {"track_id": 1, "identity": "Ann", "match": {"identity": "unknown", "distance": 0.7}}]},
        {"stream_id": "s", "frame_index": 1, "faces": [{"track_id": 1, "identity": "Ann", "match": None}]},
        {"stream_id": "t", "frame_index": 0, "faces": []},
    ]  # fmt: skip
    assert predictions_from_records(records, "track", stream="s") == {
        0: [FaceLabel("Ann", 1)],
        1: [FaceLabel("Ann", 1)],
    }
    assert predictions_from_records(records, "match", stream="s")[0] == [FaceLabel("unknown", 1)]
    assert predictions_from_records(records, "match", stream="s")[1] == [FaceLabel("unknown", 1)]
    with pytest.raises(ValueError, match="record 1"):
        predictions_from_records([{"faces": []}])


def test_dlib_golden_labels_scored_against_the_demo_truth() -> None:
    """The demo truth file and dlib's every-frame labels, counted here with plain loops."""
    data = json.loads((GOLDEN.parent / "video/truth.json").read_text())
    golden = [
        json.loads(line) for line in (GOLDEN / "dlib-20.0.1-video-up1-every-frame.jsonl").read_text().splitlines()
    ]
    score = score_identification(parse_truth(data), predictions_from_records(golden))
    lin = [s for s in data["segments"] if "Lin_Manuel_Miranda" in s["present"]]
    in_lin = {f for s in lin for f in range(s["frames"][0], s["frames"][1] + 1)}
    named_lin = {r["frame"] for r in golden if any(f["label"] == "Lin_Manuel_Miranda" for f in r["faces"])}
    assert score.identities["Lin_Manuel_Miranda"].truth_frames == len(in_lin) == 149
    assert score.identities["Lin_Manuel_Miranda"].correct_frames == len(in_lin & named_lin)
    assert score.identities["Lin_Manuel_Miranda"].named_frames == len(named_lin) == 143  # tests/data/README.md
    named_alex = {r["frame"] for r in golden if any(f["label"] == "Alex_Lacamoire" for f in r["faces"])}
    assert named_alex == {26, 42}  # the two frames where dlib puts him within 0.6 (README)
    assert (
        score.identities["Alex_Lacamoire"].correct_frames == 2 and score.identities["Alex_Lacamoire"].truth_frames == 23
    )
    assert score.false_identifications == 0 and score.tracks == []
