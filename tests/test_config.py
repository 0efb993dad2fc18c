"""The configuration schema (pipeline/config/): config.yaml generated from it, validation, round-trip,
and bad values refused through the real `facestream` command before anything starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from facestream.pipeline.config import Config, ConfigError, load_config, render_yaml

ROOT = Path(__file__).parent.parent
FACESTREAM = str(Path(sys.executable).parent / "facestream")
CLIP = ROOT / "tests" / "data" / "video" / "short_hamilton_clip.mp4"


def test_config_yaml_is_generated_from_the_schema() -> None:
    shipped = (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert shipped == render_yaml(), "config.yaml is stale: python -m facestream.pipeline.config > config.yaml"
    assert yaml.safe_load(shipped) == Config().to_dict()


def test_every_key_is_documented_or_self_explanatory() -> None:
    text = render_yaml()
    for section, values in Config().to_dict().items():
        assert f"{section}:" in text
        if isinstance(values, dict):
            for key in values:
                assert f"  {key}:" in text


def test_round_trip_through_json_keeps_every_value() -> None:
    config = Config()
    config.set("gallery.distance_threshold", 0.5)
    config.set("pipeline.endpoints.frames", "tcp://127.0.0.1:5555")
    config.set("engine.detector_max_hw", [6000, 3000])
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())), "spec.json")
    assert again == config and again.gallery.distance_threshold == 0.5
    assert again.pipeline.endpoints.frames == "tcp://127.0.0.1:5555"


def test_ints_are_accepted_where_floats_are_expected_and_empty_keys_take_the_default() -> None:
    config = Config.from_dict({"gallery": {"distance_threshold": 1, "margin": None}, "kiosk": None})
    assert config.gallery.distance_threshold == 1.0 and isinstance(config.gallery.distance_threshold, float)
    assert config.gallery.margin == 0.0 and config.kiosk == Config().kiosk


# (yaml text, the key path the message must name, a fragment of what is allowed)
BAD = [
    ("gallery:\n  distance_threshold: -0.5\n", "gallery.distance_threshold: -0.5 is out of range",
     "> 0 and <= 1.2"),
    ("gallery:\n  distance_threshold: .nan\n", "gallery.distance_threshold: nan is not a finite number", "> 0"),
    ("gallery:\n  distance_threshold: .inf\n", "gallery.distance_threshold: inf is not a finite number", "<= 1.2"),
    ("pipeline:\n  frame_hwm: -1\n", "pipeline.frame_hwm: -1 is out of range", "an integer >= 1"),
    ("pipeline:\n  detect_workers: -1\n", "pipeline.detect_workers: -1 is out of range", "an integer >= 1"),
    ("pipeline:\n  detect_workers: 1.5\n", "pipeline.detect_workers: 1.5 is not an integer", "an integer >= 1"),
    ("detector:\n  upsample: 9\n", "detector.upsample: 9 is out of range", "<= 4"),
    ("tracker:\n  decision: majority\n", "tracker.decision: 'majority' is not allowed", "one of mean, vote"),
    ("engine:\n  backend: cuda\n", "engine.backend: 'cuda' is not allowed", "one of auto, tensorrt, onnxruntime"),
    ("gallery:\n  gpu: sometimes\n", "gallery.gpu: 'sometimes' is not allowed", "one of false, true, auto"),
    ("gallery:\n  treshold: 0.5\n", "gallery.treshold: unknown key", "distance_threshold"),
    ("galery:\n  path: x.db\n", "galery: unknown key", "gallery"),
    ("pipeline:\n  endpoints:\n    frame: tcp://x:1\n", "pipeline.endpoints.frame: unknown key", "frames"),
    ("kiosk:\n  enabled: yes please\n", "kiosk.enabled: 'yes please' is not true or false", "true or false"),
    ("kiosk:\n  k: 6\n", "kiosk.k: 6 is more than kiosk.n (5)", "1 <= k <= n"),
    ("web:\n  jpeg_quality: 101\n", "web.jpeg_quality: 101 is out of range", "<= 100"),
    ("sources:\n  image_fps: 0\n", "sources.image_fps: 0.0 is out of range", "> 0"),
    ("engine:\n  detector_max_hw: [5230]\n", "engine.detector_max_hw: [5230] is not allowed", "[height, width]"),
    ("tracker: 3\n", "tracker: 3 is not a mapping", "iou_threshold"),
    ("- a list\n", "top level: ['a list'] is not a mapping", "gallery"),
]


@pytest.mark.parametrize(("text", "names", "allowed"), BAD)
def test_bad_values_are_refused_naming_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, text: str, names: str, allowed: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {names}") and allowed in message, message


def test_command_line_overrides_are_validated_too() -> None:
    config = Config()
    with pytest.raises(ConfigError, match=r"--detect-every: pipeline.detect_every: 0 is out of range"):
        config.set("pipeline.detect_every", 0, "--detect-every")
    assert config.pipeline.detect_every == 1


def test_no_file_is_read_implicitly_but_facestream_config_names_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("gallery:\n  distance_threshold: 0.4\n")
    assert load_config(None, environ={}).gallery.distance_threshold == 0.6
    named = load_config(None, environ={"FACESTREAM_CONFIG": str(tmp_path / "config.yaml")})
    assert named.gallery.distance_threshold == 0.4 and named.source == str(tmp_path / "config.yaml")
    assert math.isclose(load_config(tmp_path / "config.yaml", environ={}).gallery.distance_threshold, 0.4)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACESTREAM_CACHE": str(cwd / "cache")}
    env.pop("FACESTREAM_CONFIG", None)
    return subprocess.run([FACESTREAM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_real_command_exits_2_with_one_line_before_anything_starts(tmp_path: Path) -> None:
    """Through `facestream run`: nothing starts (no run directory, no output), one log line, exit 2."""
    cases = [(text, names) for text, names, _ in BAD[:10]]

    def attempt(case: tuple[int, tuple[str, str]]) -> tuple[str, subprocess.CompletedProcess]:
        i, (text, names) = case
        work = tmp_path / f"case{i}"
        work.mkdir()
        (work / "bad.yaml").write_text(text)
        events = work / "events.jsonl"
        return names, _cli(["--config", "bad.yaml", "run", "--source", str(CLIP), "--events", str(events)], work)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(attempt, enumerate(cases)))
    for i, (names, result) in enumerate(results):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and "ERROR" in lines[0] and f"bad.yaml: {names}" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / f"case{i}" / "events.jsonl").exists()


def test_enroll_threshold_out_of_range_is_refused(tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    for value in ("1.7", "-0.1", "nan", "abc"):
        result = _cli(["enroll", "threshold", "Alice", value, "--gallery", str(gallery)], tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"threshold {value!r} is not allowed: a distance > 0 and <= 1.2" in result.stderr
        assert "Traceback" not in result.stderr


def test_command_line_values_are_checked_like_the_file_s(tmp_path: Path) -> None:
    """`--workers -1` used to become 1 without a word; like `detect_workers: -1` in a file it is refused."""
    for option, names in (("--workers", "pipeline.detect_workers"), ("--max-frames", "sources.max_frames")):
        result = _cli(["run", "--source", str(CLIP), option, "-1"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"{option}: {names}: -1 is out of range" in result.stderr and "Traceback" not in result.stderr
