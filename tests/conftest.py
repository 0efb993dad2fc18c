"""Shared fixtures: the bundled data pack, dlib's golden outputs and the model files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"


@cache
def golden_images() -> dict:
    """`images` of golden/dlib-20.0.1.json: relative path -> dlib's record (see tests/data/README.md)."""
    return json.loads((GOLDEN / "dlib-20.0.1.json").read_text())["images"]


@cache
def golden_video() -> dict:
    return json.loads((GOLDEN / "dlib-20.0.1-video.json").read_text())


def load_rgb_as_dlib(path: Path | str) -> np.ndarray:
    """The exact pixels dlib saw when the golden files were made.

    dlib decodes JPEGs with its own bundled libjpeg, which differs from OpenCV's libjpeg-turbo
    by a few grey levels on some files (bald_guys.jpg). Parity tests compare the models, not the
    JPEG decoders, so they feed dlib's pixels; the decoder is tested on its own.
    """
    dlib = pytest.importorskip("dlib")
    return np.ascontiguousarray(dlib.load_rgb_image(str(path)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
