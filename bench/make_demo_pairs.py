"""Build a small LFW-style verification set from the bundled test data: `make_demo_pairs.py OUT_DIR`.

Writes OUT_DIR/images/<Name>/<Name>_%04d.jpg and OUT_DIR/pairs.txt (LFW's format: 3 folds of 10 matched
and 10 mismatched pairs) for `facestream eval pairs --pairs OUT_DIR/pairs.txt --root OUT_DIR/images`.

People and images (all from tests/data; see tests/data/LICENSES.md):
  Barack_Obama        6 photos: fr_examples/obama.jpg, fr_test_images/obama2.jpg, obama3.jpg,
                      fr_examples/obama-480p.jpg, fr_test_images/obama_partial_face.jpg, obama_partial_face2.jpg
  Lin_Manuel_Miranda  the gallery photo + demo-clip frames 5, 100, 150, 200 (PNG bytes, lossless)
  Alex_Lacamoire      the gallery photo + demo-clip frames 22, 30, 38 (the near-profile close-up)
  Joe_Biden, Tom_Cruise   one photo each
(dlib_faces/bald_guys.jpg is not used: its 25 faces include the same actor more than once, so they cannot
serve as 25 different people without labels.)
Matched pairs: every pair of images of one person (Obama 15, Lin-Manuel Miranda 10, Alex Lacamoire 6), the first
30 in a fixed interleaved order. Mismatched pairs: 30 taken at a fixed stride from every pair of images of two
different people, sorted. Deterministic: the same files and pairs on every machine.

This is a demonstration of the protocol on what the project can ship, not a benchmark: 60 pairs say little.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
if not DATA.is_dir():  # not in bench/: run from the repository root
    DATA = Path("tests/data").resolve()
if not DATA.is_dir():
    raise SystemExit("tests/data not found: run this from the repository root")

FILES = {
    "Barack_Obama": ["fr_examples/obama.jpg", "fr_test_images/obama2.jpg", "fr_test_images/obama3.jpg",
                     "fr_examples/obama-480p.jpg", "fr_test_images/obama_partial_face.jpg",
                     "fr_test_images/obama_partial_face2.jpg"],
    "Joe_Biden": ["fr_examples/biden.jpg"],
    "Tom_Cruise": ["dlib_faces/Tom_Cruise_avp_2014_4.jpg"],
    "Lin_Manuel_Miranda": ["video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png", 5, 100, 150, 200],
    "Alex_Lacamoire": ["video/gallery/Alex_Lacamoire/alex-lacamoire.png", 22, 30, 38],
}  # fmt: skip
FOLDS, PER_FOLD = 3, 10


def clip_frames(indices: set[int]) -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(DATA / "video/short_hamilton_clip.mp4"))
    frames, index = {}, 0
    while len(frames) < len(indices):
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"the demo clip ended before frame {max(indices)}")
        if index in indices:
            frames[index] = frame
        index += 1
    return frames


def main(out: Path) -> None:
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    counts: dict[str, int] = {}
    frames = clip_frames({s for sources in FILES.values() for s in sources if isinstance(s, int)})
    for name, sources in FILES.items():
        (images / name).mkdir(parents=True)
        for number, source in enumerate(sources, 1):
            target = images / name / f"{name}_{number:04d}.jpg"
            if isinstance(source, int):
                target.write_bytes(cv2.imencode(".png", frames[source])[1].tobytes())
            else:
                shutil.copy(DATA / source, target)
        counts[name] = len(sources)

    per_person = [list(itertools.combinations(range(1, counts[n] + 1), 2)) for n in
                  ("Barack_Obama", "Lin_Manuel_Miranda", "Alex_Lacamoire")]  # fmt: skip
    names = ["Barack_Obama", "Lin_Manuel_Miranda", "Alex_Lacamoire"]
    matched = []
    for round_ in itertools.zip_longest(*per_person):  # interleave the people so every fold has each
        matched += [(names[k], a, b) for k, pair in enumerate(round_) if pair for a, b in [pair]]
    matched = matched[: FOLDS * PER_FOLD]
    everyone = [(n, k) for n in sorted(counts) for k in range(1, counts[n] + 1)]
    cross = [(a, b) for a, b in itertools.combinations(everyone, 2) if a[0] != b[0]]
    stride = len(cross) // (FOLDS * PER_FOLD)
    mismatched = cross[::stride][: FOLDS * PER_FOLD]
    lines = [f"{FOLDS} {PER_FOLD}"]
    for fold in range(FOLDS):
        part = slice(fold * PER_FOLD, (fold + 1) * PER_FOLD)
        lines += [f"{n}\t{a}\t{b}" for n, a, b in matched[part]]
        lines += [f"{a[0]}\t{a[1]}\t{b[0]}\t{b[1]}" for a, b in mismatched[part]]
    (out / "pairs.txt").write_text("\n".join(lines) + "\n")
    print(f"{out / 'pairs.txt'}: {FOLDS} folds x ({PER_FOLD} matched + {PER_FOLD} mismatched); "
          f"{sum(counts.values())} images of {len(counts)} people under {images}")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_demo_pairs.py OUT_DIR")
    main(Path(sys.argv[1]))
