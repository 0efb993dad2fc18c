"""Shared fixtures: the bundled data pack, dlib's golden outputs and the model files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
# One folder of compiled numba kernels for every process of the run: tests that point FACESTREAM_CACHE at a
# fresh folder (for the ONNX exports) would otherwise compile the kernels again in their subprocesses, ~10 s
# each. The folder is the one the session's processes use by default; tests/test_hog.py checks the rule itself.
if not os.environ.get("NUMBA_CACHE_DIR"):
    from facestream.engines.cachedir import default_cache_dir

    os.environ["NUMBA_CACHE_DIR"] = str(default_cache_dir() / "numba")
# The default run checks a representative part of the slow parity sweeps (regions, tiling); the full
# sweep over every golden image: FACESTREAM_FULL_SWEEP=1 (about ten minutes more on two cores).
FULL_SWEEP = os.environ.get("FACESTREAM_FULL_SWEEP") == "1"
QUICK_GOLDEN = ["dlib_faces/2007_007763.jpg", "dlib_faces/2008_002470.jpg", "fr_examples/obama-240p.jpg",
                "fr_test_images/obama_partial_face.jpg"]  # fmt: skip


def sweep(everything: list, quick: list) -> list:
    """`everything` under FACESTREAM_FULL_SWEEP=1, else the representative `quick` part."""
    return list(everything) if FULL_SWEEP else list(quick)
GOLDEN = DATA / "golden"


REQUIRE_DLIB = "FACESTREAM_REQUIRE_DLIB"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.05) -> Any:
    """Poll `condition` until it returns something true (and return that); fail naming `what` after `timeout`
    seconds. Timeouts are generous on purpose: the machine may be loaded, and a passing test never waits them."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def oracle_missing(reason: str) -> None:
    """The dlib oracle (or a golden comparison) cannot run here: skip the test locally, but fail it when
    FACESTREAM_REQUIRE_DLIB=1 (as `.ci/run` sets), so a missing oracle never turns parity tests into skips."""
    if os.environ.get(REQUIRE_DLIB) == "1":
        pytest.fail(f"{reason} ({REQUIRE_DLIB}=1: the oracle is required here)")
    pytest.skip(reason, allow_module_level=True)


def require_dlib() -> ModuleType:
    """dlib-bin, the test oracle; see `oracle_missing` for what happens without it."""
    try:
        import dlib
    except ImportError as error:
        oracle_missing(f"dlib-bin is not importable: {error}")
    return dlib


@cache
def golden_images() -> dict:
    """`images` of golden/dlib-20.0.1.json: relative path -> dlib's record (see tests/data/README.md)."""
    return json.loads((GOLDEN / "dlib-20.0.1.json").read_text())["images"]


@cache
def distinct_golden_images() -> list[str]:
    """The golden images with distinct contents, sorted: the data pack ships face_recognition's examples and
    its test images, and two of those are the same file under two names (biden.jpg, obama.jpg)."""
    seen: set[str] = set()
    distinct = []
    for relpath, record in sorted(golden_images().items()):
        if record["file_sha256"] not in seen:
            seen.add(record["file_sha256"])
            distinct.append(relpath)
    return distinct


@cache
def golden_video() -> dict:
    return json.loads((GOLDEN / "dlib-20.0.1-video.json").read_text())


def load_rgb_as_dlib(path: Path | str) -> np.ndarray:
    """The exact pixels dlib saw when the golden files were made.

    dlib decodes JPEGs with its own bundled libjpeg, which differs from OpenCV's libjpeg-turbo
    by a few grey levels on some files (bald_guys.jpg). Parity tests compare the models, not the
    JPEG decoders, so they feed dlib's pixels; the decoder is tested on its own.
    """
    dlib = require_dlib()
    return np.ascontiguousarray(dlib.load_rgb_image(str(path)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def sub_clip(path: Path, first: int, count: int) -> Path:
    """Frames first..first+count-1 of the demo clip (640x360), written losslessly (FFV1) to `path`."""
    import cv2

    capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, first)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 29.97, (640, 360))
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        writer.write(frame)
    writer.release()
    capture.release()
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder of the test run's own (FACESTREAM_CACHE for tests that must not read or write the user's
    eval or enrolment caches), seeded with the ONNX exports and parsed models already in the default cache
    (`make install` prepares them): exporting is tested in tests/test_embedder.py."""
    from facestream.engines.cachedir import default_cache_dir

    folder = tmp_path_factory.getbasetemp() / "model-cache"
    folder.mkdir(exist_ok=True)
    source = default_cache_dir()
    if source.is_dir():
        for built in [*source.glob("*.onnx"), *source.glob("*.onnx.sha256"), *source.glob("*.npz")]:
            target = folder / built.name
            if not target.exists():
                try:
                    os.link(built, target)
                except OSError:  # another file system: a copy
                    import shutil

                    shutil.copyfile(built, target)
    return folder
