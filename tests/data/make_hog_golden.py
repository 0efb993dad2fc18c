#!/usr/bin/env python3
"""Make golden/dlib-20.0.1-hog.json: dlib's HOG frontal-face detector on the data pack.

    .venv/bin/python tests/data/make_hog_golden.py      # needs dlib-bin 20.0.1.post1 (the test extra)

For every photo of dlib_faces/, fr_examples/ and fr_test_images/ (decoded by dlib.load_rgb_image,
as tests/conftest.py's load_rgb_as_dlib does) and for a few frames of video/short_hamilton_clip.mp4
(OpenCV decode, BGR -> RGB), it records ``dlib.get_frontal_face_detector().run(img, upsample,
adjust_threshold)`` for upsample 0 and 1 and adjust_threshold 0.0 and -0.5: rectangles
``[left, top, right, bottom]`` (inclusive, unclipped), scores (Python float repr, exact) and
weight indices, in dlib's order, plus the sha256 of the decoded pixels and the seconds dlib took.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import dlib
import numpy as np

DATA = Path(__file__).resolve().parent
OUT = DATA / "golden" / "dlib-20.0.1-hog.json"
FOLDERS = ("dlib_faces", "fr_examples", "fr_test_images")
VIDEO = DATA / "video" / "short_hamilton_clip.mp4"
VIDEO_FRAMES = (0, 30, 100, 150, 250)
RUNS = [(upsample, adjust) for upsample in (0, 1) for adjust in (0.0, -0.5)]


def run_key(upsample: int, adjust: float) -> str:
    return f"up{upsample}_adj{adjust:g}"


def record(detector: dlib.fhog_object_detector, image: np.ndarray) -> dict:
    runs = {}
    for upsample, adjust in RUNS:
        start = time.perf_counter()
        rects, scores, index = detector.run(image, upsample, adjust)
        seconds = time.perf_counter() - start
        runs[run_key(upsample, adjust)] = {
            "rects": [[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
            "scores": [float(s) for s in scores],
            "weight_index": [int(i) for i in index],
            "seconds": round(seconds, 4),
        }
    return {"shape": list(image.shape), "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest(), "runs": runs}


def video_frames() -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(VIDEO))
    frames, index = {}, 0
    while index <= max(VIDEO_FRAMES):
        ok, bgr = capture.read()
        if not ok:
            raise SystemExit(f"{VIDEO}: frame {index} could not be decoded")
        if index in VIDEO_FRAMES:
            frames[index] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    return frames


def main() -> None:
    detector = dlib.get_frontal_face_detector()
    images = {}
    for folder in FOLDERS:
        for path in sorted((DATA / folder).iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                rel = path.relative_to(DATA).as_posix()
                images[rel] = record(detector, np.ascontiguousarray(dlib.load_rgb_image(str(path))))
                print(rel, {k: len(v["rects"]) for k, v in images[rel]["runs"].items()}, flush=True)
    frames = {str(i): record(detector, frame) for i, frame in video_frames().items()}
    result = {
        "dlib_version": dlib.__version__,
        "dlib_package": "dlib-bin 20.0.1.post1 (manylinux wheel)",
        "detector": "dlib.get_frontal_face_detector()",
        "call": "detector.run(image, upsample, adjust_threshold)",
        "runs": [run_key(u, a) for u, a in RUNS],
        "conventions": {
            "rects": "[left, top, right, bottom], dlib's inclusive rectangle in input-image pixels, not clipped",
            "scores": "dlib's confidences (window score minus the filter's threshold), exact float repr",
            "weight_index": "which of the 5 filters fired (0 front, 1 left, 2 right, 3 rotated left, 4 rotated right)",
            "images": "decoded by dlib.load_rgb_image (RGB uint8), keyed by path relative to tests/data",
            "video_frames": "video/short_hamilton_clip.mp4 decoded by OpenCV VideoCapture, BGR -> RGB",
        },
        "images": images,
        "video_frames": frames,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
