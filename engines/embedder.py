"""Face chips -> 128-d descriptors with dlib's ResNet, exported to ONNX and run batched."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .backend import make_session
from .onnx_cache import cached_onnx
from .runtime import InferenceSession

if TYPE_CHECKING:
    from ..pipeline.config import EngineConfig

# The means stored in the model file (float32), shared by both of dlib's networks.
RGB_MEANS = np.array([122.782, 117.001, 104.298], dtype=np.float32)
CHIP_SIZE = 150


def normalize_chips(face_chips: np.ndarray, means: np.ndarray = RGB_MEANS) -> np.ndarray:
    """(N,150,150,3) uint8 RGB -> (N,3,150,150) float32 `(pixel - mean) / 256`, as dlib's input layer."""
    planes = face_chips.astype(np.float32).transpose(0, 3, 1, 2)
    planes -= means.reshape(1, 3, 1, 1)
    planes *= np.float32(1 / 256)  # exact: a power of two, as dlib's division
    return np.ascontiguousarray(planes)


class FaceEmbedder:
    """Runs the embedder on batches of 150x150 RGB face chips."""

    def __init__(self, session: InferenceSession, max_batch: int = 32) -> None:
        self.session = session
        self.max_batch = max(1, int(max_batch))

    @classmethod
    def from_file(
        cls, model_path: str | Path, cache_dir: str | Path | None = None, threads: int = 0, max_batch: int = 32,
        engine: EngineConfig | None = None,
    ) -> FaceEmbedder:  # fmt: skip
        """`engine`: the config's ``engine:`` section (backend, precision, ...); None = ONNX Runtime."""
        onnx_path = cached_onnx(model_path, "embedder", cache_dir)
        return cls(make_session(onnx_path, "embedder", engine, cache_dir, threads, max_batch), max_batch=max_batch)

    def close(self) -> None:
        """Release the inference session (on a GPU: its device memory and CUDA context). Safe to call twice."""
        self.session.close()

    def __enter__(self) -> FaceEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed_chips(self, face_chips: np.ndarray) -> np.ndarray:
        """(N,150,150,3) uint8 RGB chips -> (N,128) float32 descriptors."""
        face_chips = np.asarray(face_chips)
        if face_chips.ndim != 4 or face_chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or face_chips.dtype != np.uint8:
            raise ValueError(
                f"face chips must be (N,{CHIP_SIZE},{CHIP_SIZE},3) uint8 RGB, got {face_chips.shape} {face_chips.dtype}"
            )
        if len(face_chips) == 0:
            return np.zeros((0, 128), np.float32)
        parts = [
            self.session.run(normalize_chips(face_chips[start : start + self.max_batch]))
            for start in range(0, len(face_chips), self.max_batch)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)
