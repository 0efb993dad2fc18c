"""The `facestream` command as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, golden_images

FACESTREAM = str(Path(sys.executable).parent / "facestream")


@pytest.fixture(scope="module")
def env(model_cache: Path) -> dict[str, str]:
    return {**os.environ, "FACESTREAM_CACHE": str(model_cache)}


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FACESTREAM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_teaches() -> None:
    result = subprocess.run([FACESTREAM, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "analyze" in result.stdout and "examples:" in result.stdout
    analyze = subprocess.run([FACESTREAM, "analyze", "--help"], capture_output=True, text=True, timeout=60)
    assert "--upsample" in analyze.stdout and "--json" in analyze.stdout


def test_analyze_json_matches_dlib_and_reports_bad_files(env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((DATA / "fr_examples/obama-240p.jpg").read_bytes()[:2000])
    images = [DATA / "dlib_faces/2008_001009.jpg", broken, DATA / "fr_examples/obama-240p.jpg"]
    result = run(["analyze", "--json", *map(str, images)], env)
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, images))
    assert "error" in lines[1] and "truncated" in lines[1]["error"]
    for line, rel in ((lines[0], "dlib_faces/2008_001009.jpg"), (lines[2], "fr_examples/obama-240p.jpg")):
        golden = golden_images()[rel]["cnn_faces"]
        assert (line["height"], line["width"]) == tuple(golden_images()[rel]["image_shape"][:2])
        assert [face["box"] for face in line["faces"]] == [face["rect"][:4] for face in golden]
        for ours, theirs in zip(line["faces"], golden):
            assert ours["landmarks"] == theirs["landmarks_5"]
            assert abs(ours["score"] - theirs["rect"][4]) < 1e-3
            assert np.linalg.norm(np.array(ours["embedding"]) - theirs["descriptor"]) < 1e-4


def test_analyze_human_output_and_upsample(env: dict[str, str]) -> None:
    result = run(["analyze", "--upsample", "0", str(DATA / "fr_examples/obama-480p.jpg")], env)
    assert result.returncode == 0, result.stderr
    assert "1 face" in result.stdout and "box [" in result.stdout


def test_embed_from_landmarks(env: dict[str, str]) -> None:
    face = golden_images()["fr_examples/two_people.jpg"]["cnn_faces"][1]
    result = run(["embed", str(DATA / "fr_examples/two_people.jpg"), "--landmarks", json.dumps(face["landmarks_5"])],
                 env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (embedded,) = json.loads(result.stdout)["faces"]
    assert np.linalg.norm(np.array(embedded["embedding"]) - face["descriptor"]) < 1e-4


def test_embed_rejects_bad_landmarks(env: dict[str, str]) -> None:
    result = run(["embed", str(DATA / "fr_examples/obama-240p.jpg"), "--landmarks", "[[1, 2], [3, 4]]"], env)
    assert result.returncode != 0 and "5 [x, y] points" in result.stderr


def test_wrong_model_file_is_a_clear_start_up_error(env: dict[str, str], tmp_path: Path) -> None:
    from facestream.engines.models import model_path

    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  detector: {model_path('landmarks')}\n")
    result = run(["--config", str(config), "analyze", str(DATA / "fr_examples/obama-240p.jpg")], env)
    assert result.returncode == 2
    assert "shape_predictor_5_face_landmarks.dat: at byte 2: expected the loss layer name" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("detector:\n  upsampel: 2\n")
    result = run(["--config", str(config), "analyze", str(DATA / "fr_examples/obama-240p.jpg")], env)
    assert result.returncode == 2 and "detector.upsampel: unknown key" in result.stderr


def test_config_after_the_command(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gallery:\n  distance_threshold: high\n")
    result = run(["enroll", "list", "--gallery", str(tmp_path / "g.db"), "--config", str(config)], env)
    assert result.returncode == 2 and "gallery.distance_threshold: 'high' is a str, not a number" in result.stderr
