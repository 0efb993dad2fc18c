"""Embedder throughput: facestream (ONNX Runtime) and dlib-bin side by side on the same faces.

    python bench/embedder.py [--batches 1 8 32] [--json]

Both run in this one process on the same 150x150 chips (the network alone: chips in,
descriptors out), so the ratio is fair on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from facestream.engines.chips import extract_face_chips
from facestream.engines.embedder import FaceEmbedder
from facestream.engines.imageio import read_image
from facestream.engines.models import model_path
from facestream.engines.onnx_cache import cached_onnx

from common import best_time, emit, graph_flops, machine, peak_gflops

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def real_chips(count: int) -> np.ndarray:
    """`count` chips cut from the data pack's golden faces (repeated as needed)."""
    golden = json.loads((DATA / "golden" / "dlib-20.0.1.json").read_text())["images"]
    chips = []
    for rel, record in golden.items():
        if record["cnn_faces"]:
            image = read_image(DATA / rel)
            landmarks = np.array([face["landmarks_5"] for face in record["cnn_faces"]])
            chips.extend(extract_face_chips(image, landmarks))
    return np.stack([chips[i % len(chips)] for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing time per figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    import dlib

    ours = FaceEmbedder.from_file(model_path("embedder"), threads=args.threads, max_batch=max(args.batches))
    theirs = dlib.face_recognition_model_v1(str(model_path("embedder")))
    flops_per_face = graph_flops(str(cached_onnx(model_path("embedder"), "embedder")), (1, 3, 150, 150))
    chips = real_chips(max(args.batches))
    peak = peak_gflops()
    rows = []
    for batch in args.batches:
        faces = chips[:batch]
        ours_s = best_time(lambda faces=faces: ours.embed_chips(faces), repeats=3, min_seconds=args.seconds)
        listed = list(faces)
        dlib_s = best_time(
            lambda listed=listed: theirs.compute_face_descriptor(listed), repeats=1, min_seconds=min(args.seconds, 1.0)
        )
        rows.append(
            {
                "batch": batch,
                "ours_faces_per_s": batch / ours_s,
                "dlib_faces_per_s": batch / dlib_s,
                "ratio": dlib_s / ours_s,
                "ours_gflops": flops_per_face * batch / ours_s / 1e9,
            }
        )
    result = {
        "benchmark": "embedder",
        "machine": machine(),
        "gflop_per_face": flops_per_face / 1e9,
        "peak_gflops_numpy_sgemm": peak,
        "rows": rows,
    }
    table = [
        f"embedder: {flops_per_face / 1e9:.3f} GFLOP a face; machine peak (numpy sgemm) {peak:.0f} GFLOP/s",
        f"{'batch':>5} {'ours faces/s':>13} {'dlib faces/s':>13} {'ratio':>7} {'ours GFLOP/s':>13} {'% peak':>7}",
    ]
    table += [
        f"{r['batch']:>5} {r['ours_faces_per_s']:>13.1f} {r['dlib_faces_per_s']:>13.2f} {r['ratio']:>6.1f}x "
        f"{r['ours_gflops']:>13.1f} {100 * r['ours_gflops'] / peak:>6.0f}%"
        for r in rows
    ]
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
