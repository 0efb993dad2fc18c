"""The three models together: image -> a `FaceBatch` (engines/face_batch.py) of boxes, scores, landmarks,
chips, descriptors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cachedir import default_cache_dir
from .chips import extract_face_chips
from .detector import FaceDetector, detector_options
from .embedder import FaceEmbedder
from .face_batch import FaceBatch
from .landmarks import ShapePredictor
from .models import model_path

if TYPE_CHECKING:
    from ..pipeline.config import Config


class FaceAnalyzer:
    """Detector, shape predictor and embedder, loaded once; `analyze(image)` runs the whole chain."""

    def __init__(self, detector: FaceDetector, predictor: ShapePredictor, embedder: FaceEmbedder) -> None:
        self.detector, self.predictor, self.embedder = detector, predictor, embedder

    @classmethod
    def from_config(cls, config: Config) -> FaceAnalyzer:
        """Models, cache, engine, detector and embedder settings from the typed configuration."""
        models, engine = config.models, config.engine
        cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        threads = int(engine.threads)
        detector = FaceDetector.from_file(
            model_path("detector", models.detector), cache, threads,
            upsample=config.detector.upsample, threshold=config.detector.threshold, engine=engine,
            **detector_options(config.detector),
        )  # fmt: skip
        try:
            predictor = ShapePredictor.from_file(model_path("landmarks", models.landmarks), cache)
            embedder = FaceEmbedder.from_file(
                model_path("embedder", models.embedder),
                cache,
                threads,
                max_batch=config.embedder.max_batch,
                engine=engine,
            )
        except BaseException:
            detector.close()  # a GPU session already holds the CUDA context
            raise
        return cls(detector, predictor, embedder)

    def close(self) -> None:
        """Release both networks' sessions (on a GPU: device memory and the CUDA context). Safe twice."""
        try:
            self.detector.close()
        finally:
            self.embedder.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def align(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> FaceBatch:
        """Landmarks and chips for given boxes (no embedding)."""
        landmarks = self.predictor.predict(image, boxes)
        return FaceBatch(boxes, scores, landmarks, extract_face_chips(image, landmarks))

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chips and descriptors for given 5-point landmarks (N,5,2)."""
        chips = extract_face_chips(image, landmarks)
        return chips, self.embedder.embed_chips(chips)

    def analyze(self, image: np.ndarray, upsample: int | None = None) -> FaceBatch:
        boxes, scores = self.detector.detect(image, upsample)
        batch = self.align(image, boxes, scores)
        batch.descriptors = self.embedder.embed_chips(batch.chips)
        return batch
