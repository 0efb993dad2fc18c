"""Detector throughput: facestream and dlib-bin side by side, for the CNN and the HOG detector.

    python bench/detector.py [--detectors cnn hog] [--sizes 480p 720p 1080p] [--upsample 0 1] [--region-frames 3]
                             [--json]

Both run in this one process on the same frames (the data pack's obama-480p/720p/1080p.jpg),
the whole detector each: pyramid, network or filters, decoding and NMS.

CNN (MMOD, ONNX Runtime vs dlib's cnn_face_detection_model_v1): dlib takes tens of seconds per
1080p frame at upsample 1, so it is timed once per case; ours is the best of several runs.

HOG (engines/hog.py, its loops in C or numba, vs dlib.get_frontal_face_detector()): `--hog-runs` runs of each,
interleaved (ours, dlib, ours, dlib, ...) after one warm-up each, and the median of each side;
the ratio is dlib's median over ours. `same` says whether both returned identical boxes and scores.

CNN region rows (ours only, less work than full frame, so their ratio is not comparable with dlib's):
frames of the demo clip (640x360), `detect_regions` on each face's own full-frame box (one face
per call) against full-frame `detect`, both timed the same way (best of 5 runs after a warm-up),
and whether the region's box and score equal the full-frame ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np

from facestream.engines import pyramid
from facestream.engines.detector import FaceDetector
from facestream.engines.hog import HogFaceDetector
from facestream.engines.imageio import read_image
from facestream.engines.loops import loops
from facestream.engines.models import model_path
from facestream.engines.onnx_cache import cached_onnx

from common import best_time, emit, graph_flops, machine, peak_gflops

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FRAMES = {size: DATA / "fr_examples" / f"obama-{size}.jpg" for size in ("240p", "480p", "720p", "1080p")}


def hog_rows(sizes: list[str], upsamples: list[int], runs: int) -> list[dict]:
    """Ours vs dlib's HOG detector: interleaved runs, median seconds of each side."""
    import dlib

    ours, theirs = HogFaceDetector.default(), dlib.get_frontal_face_detector()
    kind = loops().kind  # "C" or "numba": FACESTREAM_LOOPS chooses
    rows = []
    for size in sizes:
        frame = read_image(FRAMES[size])
        for upsample in upsamples:
            mine, dlibs = [], []
            result = ours.detect(frame, upsample)
            rects, scores, _ = theirs.run(frame, upsample, 0.0)
            for _ in range(runs):
                t0 = time.perf_counter()
                ours.detect(frame, upsample)
                t1 = time.perf_counter()
                theirs.run(frame, upsample, 0.0)
                t2 = time.perf_counter()
                mine.append(t1 - t0)
                dlibs.append(t2 - t1)
            boxes = [[r.left(), r.top(), r.right(), r.bottom()] for r in rects]
            same = result[0].tolist() == boxes and result[1].tolist() == list(scores)
            ours_s, dlib_s = statistics.median(mine), statistics.median(dlibs)
            rows.append({"size": size, "width": frame.shape[1], "height": frame.shape[0], "upsample": upsample,
                         "runs": runs, "loops": kind, "ours_median_s": ours_s, "dlib_median_s": dlib_s,
                         "ratio": dlib_s / ours_s, "faces_ours": len(result[0]), "faces_dlib": len(boxes),
                         "same": same})  # fmt: skip
    return rows


def hog_table(rows: list[dict]) -> list[str]:
    loops = rows[0]["loops"] if rows else "?"
    table = [f"detector (HOG frontal face, our loops in {loops}); ratio = dlib median / ours median (> 1: ours faster)",
             f"{'frame':>6} {'up':>3} {'runs':>5} {'ours s':>8} {'dlib s':>8} "
             f"{'ratio':>7} {'faces':>6} {'same':>5}"]  # fmt: skip
    table += [
        f"{r['size']:>6} {r['upsample']:>3} {r['runs']:>5} {r['ours_median_s']:>8.3f} {r['dlib_median_s']:>8.3f} "
        f"{r['ratio']:>6.2f}x {r['faces_ours']:>3}/{r['faces_dlib']} {r['same']!s:>5}"
        for r in rows
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=["cnn", "hog"], choices=["cnn", "hog"])
    parser.add_argument("--hog-runs", type=int, default=5, help="timed runs of each HOG detector (median)")
    parser.add_argument("--sizes", nargs="+", default=["480p", "720p", "1080p"], choices=sorted(FRAMES))
    parser.add_argument("--upsample", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing time for our figure")
    parser.add_argument("--region-frames", type=int, default=3, help="demo-clip frames for the region rows (0 = none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    result: dict = {"benchmark": "detector", "machine": machine()}
    table: list[str] = []
    if "hog" in args.detectors:
        result["hog_rows"] = hog_rows(args.sizes, args.upsample, args.hog_runs)
        table += hog_table(result["hog_rows"])
    if "cnn" in args.detectors:
        cnn_result, cnn_table = cnn_rows(args)
        result.update(cnn_result)
        table = cnn_table + table
    emit(result, args.json, table)


def cnn_rows(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The MMOD CNN rows: ours (best of several) vs dlib (once per case)."""
    import dlib

    ours = FaceDetector.from_file(model_path("detector"), threads=args.threads)
    theirs = dlib.cnn_face_detection_model_v1(str(model_path("detector")))
    onnx_path = str(cached_onnx(model_path("detector"), "detector"))
    peak = peak_gflops()
    rows = []
    for size in args.sizes:
        frame = read_image(FRAMES[size])
        for upsample in args.upsample:
            height, width = frame.shape[:2]
            for _ in range(upsample):
                height, width = pyramid.pyramid_up_size(height, width)
            tensor_h, tensor_w, _ = pyramid.tiled_pyramid_layout(height, width)
            flops = graph_flops(onnx_path, (1, 3, tensor_h, tensor_w))
            ours_s = best_time(lambda f=frame, u=upsample: ours.detect(f, u), repeats=2, min_seconds=args.seconds)
            dlib_s = best_time(lambda f=frame, u=upsample: theirs(f, u), repeats=1)
            faces_ours, faces_dlib = len(ours.detect(frame, upsample)[0]), len(theirs(frame, upsample))
            rows.append({"size": size, "width": frame.shape[1], "height": frame.shape[0], "upsample": upsample,
                         "ours_fps": 1 / ours_s, "dlib_fps": 1 / dlib_s, "ratio": dlib_s / ours_s,
                         "gflop_per_frame": flops / 1e9, "ours_gflops": flops / ours_s / 1e9,
                         "faces_ours": faces_ours, "faces_dlib": faces_dlib})  # fmt: skip
    regions = region_rows(ours, args.region_frames, args.upsample)
    result = {"peak_gflops_numpy_sgemm": peak, "rows": rows, "region_rows": regions}
    table = [f"detector (MMOD CNN); machine peak (numpy sgemm) {peak:.0f} GFLOP/s",
             f"{'frame':>6} {'up':>3} {'GFLOP':>7} {'ours fps':>9} {'dlib fps':>9} {'ratio':>7} "
             f"{'ours GFLOP/s':>13} {'% peak':>7} {'faces':>6}"]  # fmt: skip
    table += [
        f"{r['size']:>6} {r['upsample']:>3} {r['gflop_per_frame']:>7.1f} {r['ours_fps']:>9.2f} "
        f"{r['dlib_fps']:>9.3f} {r['ratio']:>6.1f}x {r['ours_gflops']:>13.1f} "
        f"{100 * r['ours_gflops'] / peak:>6.0f}% {r['faces_ours']:>3}/{r['faces_dlib']}"
        for r in rows
    ]
    table += [
        "",
        "regions (ours only; less work than full frame): one face's box vs the whole frame",
        f"{'frame':>6} {'up':>3} {'face px':>8} {'full ms':>8} {'region ms':>10} {'speed-up':>9} {'same':>5}",
    ]
    table += [
        f"{r['frame']:>6} {r['upsample']:>3} {r['face_width']:>8} {1000 * r['full_s']:>8.1f} "
        f"{1000 * r['region_s']:>10.1f} {r['full_s'] / r['region_s']:>8.1f}x {r['identical']!s:>5}"
        for r in regions
    ]  # fmt: skip
    return result, table


def region_rows(ours: FaceDetector, frames: int, upsamples: list[int], repeats: int = 5) -> list[dict]:
    """`detect_regions` on one face vs `detect` on the frame, on the first frames of the demo clip."""
    import cv2

    capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
    rows = []
    for index in range(frames):
        ok, bgr = capture.read()
        if not ok:
            break
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for upsample in upsamples:
            boxes, scores = ours.detect(frame, upsample)
            full_s = best_time(lambda f=frame, u=upsample: ours.detect(f, u), repeats)
            for box, score in zip(boxes, scores):
                region = box[None].astype(np.float64)
                found = ours.detect_regions(frame, region, upsample)
                hit = (found[0] == box).all(axis=1)
                region_s = best_time(lambda f=frame, r=region, u=upsample: ours.detect_regions(f, r, u), repeats)
                rows.append({"frame": index, "width": frame.shape[1], "height": frame.shape[0], "upsample": upsample,
                             "face_width": int(box[2] - box[0] + 1), "full_s": full_s, "region_s": region_s,
                             "identical": bool(hit.any() and found[1][hit][0] == score)})  # fmt: skip
    capture.release()
    return rows


if __name__ == "__main__":
    main()
