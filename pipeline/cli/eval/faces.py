"""`eval pairs`' faces: one descriptor per image (the detection nearest the centre, with the documented
fallbacks), cached in SQLite by image sha256 + model files + options."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config

log = logging.getLogger("facestream")

CACHE_VERSION = 1
LFW_FACE_FRACTION = 1 / 2.2  # LFW images are the Viola-Jones face box enlarged 2.2 times, centred


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DescriptorCache:
    """SQLite file in the facestream cache dir: key -> descriptor, how the face was found, box."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # owner-only, as the gallery: descriptors are biometric data
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS descriptors (key TEXT PRIMARY KEY, descriptor BLOB NOT NULL, "
            "method TEXT NOT NULL, box TEXT NOT NULL)"
        )

    def get(self, key: str) -> tuple[np.ndarray, str, list[int]] | None:
        row = self.db.execute("SELECT descriptor, method, box FROM descriptors WHERE key = ?", (key,)).fetchone()
        if row is None or len(row[0]) != 128 * 4:
            return None
        return np.frombuffer(row[0], np.float32).copy(), row[1], json.loads(row[2])

    def put(self, key: str, descriptor: np.ndarray, method: str, box: list[int]) -> None:
        self.db.execute("INSERT OR REPLACE INTO descriptors VALUES (?, ?, ?, ?)",
                        (key, np.asarray(descriptor, np.float32).tobytes(), method, json.dumps(box)))  # fmt: skip
        self.db.commit()

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class FaceOptions:
    upsample: int
    threshold: float
    fallback_threshold: float
    jitters: int

    def key(self, image_sha: str, model_shas: list[str]) -> str:
        text = json.dumps({"v": CACHE_VERSION, "image": image_sha, "models": model_shas, **vars(self)}, sort_keys=True)
        return _sha256(text.encode())


def nearest_centre(boxes: np.ndarray, height: int, width: int) -> int:
    """Index of the box whose centre is nearest the image centre."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    return int(np.argmin(np.hypot(centres[:, 0] - (width - 1) / 2.0, centres[:, 1] - (height - 1) / 2.0)))


def centred_box(height: int, width: int) -> np.ndarray:
    """[l, t, r, b] square of 1/2.2 of the shorter side, centred."""
    side = max(1, round(min(height, width) * LFW_FACE_FRACTION))
    left, top = (width - side) // 2, (height - side) // 2
    return np.array([left, top, left + side - 1, top + side - 1], dtype=np.int64)


class PairFaces:
    """One descriptor per image: the detection nearest the centre, with the documented fallbacks."""

    def __init__(self, config: Config, options: FaceOptions, use_cache: bool) -> None:
        from ....engines.cachedir import default_cache_dir
        from ....engines.digests import hash_file as sha256_file
        from ....engines.models import model_path

        self.config, self.options = config, options
        models = config.models
        kinds = ("detector", "landmarks", "embedder")
        self.model_shas = [sha256_file(model_path(k, getattr(models, k))) for k in kinds]
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        self.cache = DescriptorCache(cache_dir / "eval-descriptors.sqlite") if use_cache else None
        self._analyzer: Any = None
        self.computed = self.cached = 0

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:  # loaded only when some image is not cached: a cached re-run needs no model
            from ....engines.faces import FaceAnalyzer

            started = time.perf_counter()
            self._analyzer = FaceAnalyzer.from_config(self.config)
            log.info("models loaded in %.1f s", time.perf_counter() - started)
        return self._analyzer

    def describe(self, path: Path) -> tuple[np.ndarray, str, list[int]]:
        """(descriptor, method, box); method: detected | low_threshold | centred_box. Raises ImageError."""
        from ....engines.chips import extract_face_chips
        from ....engines.detector import FaceDetector
        from ....engines.imageio import ImageError, decode_image
        from ....engines.jitter import jittered_descriptors

        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"{path}: cannot read: {error.strerror or error}") from None
        key = self.options.key(_sha256(data), self.model_shas)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cached += 1
            return hit
        image = decode_image(data, str(path), self.config.detector.max_image_pixels)
        height, width = image.shape[:2]
        analyzer = self.analyzer
        opts = self.options
        detector = FaceDetector(analyzer.detector.session, analyzer.detector.params, opts.upsample, opts.threshold)
        boxes, _ = detector.detect(image)
        method = "detected"
        if len(boxes) == 0:
            low = FaceDetector(analyzer.detector.session, analyzer.detector.params, opts.upsample,
                               opts.fallback_threshold)  # fmt: skip
            boxes, _ = low.detect(image)
            method = "low_threshold"
        box = boxes[nearest_centre(boxes, height, width)] if len(boxes) else centred_box(height, width)
        method = method if len(boxes) else "centred_box"
        landmarks = analyzer.predictor.predict(image, box[None])
        chips = extract_face_chips(image, landmarks)
        descriptor = jittered_descriptors(analyzer.embedder.embed_chips, chips, opts.jitters)[0]
        self.computed += 1
        result = (descriptor.astype(np.float32), method, [int(v) for v in box])
        if self.cache is not None:
            self.cache.put(key, *result)
        return result

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
