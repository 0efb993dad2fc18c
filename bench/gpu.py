"""TensorRT on the GPU against ONNX Runtime on the CPU, side by side in one run (needs an NVIDIA GPU).

    python bench/gpu.py [--batches 1 8 32 64 128 256] [--precisions fp16 fp32] [--seconds 2] [--json]

1. embedder: faces/s for each batch size, TensorRT (FP16, FP32) and ONNX Runtime on the CPU, the ratio,
   and the largest descriptor difference between them (FP32 should be < 1e-3, FP16 < 0.02).
2. detector: frames/s on a 720p and a 1080p frame of the data pack's obama-720p/1080p photos, at
   upsample 0 (the detector profile's max covers 1080p at upsample 0 and 720p at upsample 1), the
   same two backends, and whether the boxes agree (IoU >= 0.99).

Each figure is the best of repeated runs (`--seconds` per figure) after a warm-up; engine builds are
not timed (they are cached; `facestream engines build` makes them ahead of time). On a machine without
TensorRT, pycuda or a CUDA device this prints why and exits with status 2: the project has not measured
these figures on a GPU (see README, "GPU").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, emit, machine

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp16", "fp32"], choices=["fp16", "fp32"])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from facestream.engines.backend import probe_gpu

    found = probe_gpu()
    if not found.available:
        print(f"bench/gpu.py needs an NVIDIA GPU with TensorRT and pycuda: {found.reason}", file=sys.stderr)
        sys.exit(2)

    import cv2

    from facestream.engines.detector import FaceDetector
    from facestream.engines.embedder import normalize_chips
    from facestream.engines.models import model_path
    from facestream.engines.onnx_cache import cached_onnx
    from facestream.engines.runtime import OnnxRuntimeSession
    from facestream.engines.tensorrt_backend import TensorRTSession, profile_for
    from facestream.pipeline.config import EngineConfig
    from facestream.pipeline.domain.tracker import box_iou

    cache = Path(tempfile.gettempdir()) / "facestream-bench-gpu"
    embedder_onnx = cached_onnx(model_path("embedder", ""), "embedder", cache)
    chips = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((DATA / "golden" / "chips").glob("*.png"))])
    cpu = OnnxRuntimeSession(embedder_onnx)
    top = max(args.batches)
    sessions = {p: TensorRTSession(embedder_onnx, "embedder", profile_for("embedder", None, top), precision=p,
                                   cache_dir=cache, probe=found) for p in args.precisions}  # fmt: skip
    rows, table = [], [f"GPU: {found.reason}", "embedder (faces/s):",
                       f"{'batch':>6} {'onnxruntime cpu':>16} " + " ".join(f"{p:>10} {'ratio':>7} {'max diff':>9}"
                                                                         for p in args.precisions)]  # fmt: skip
    for batch_size in args.batches:
        batch = normalize_chips(chips[np.arange(batch_size) % len(chips)])
        reference = cpu.run(batch)
        cpu_rate = batch_size / best_time(lambda b=batch: cpu.run(b), 3, args.seconds)
        row = {"batch": batch_size, "onnxruntime_faces_per_s": cpu_rate}
        line = f"{batch_size:>6} {cpu_rate:>16.0f} "
        for precision, session in sessions.items():
            rate = batch_size / best_time(lambda b=batch, s=session: s.run(b), 3, args.seconds)
            diff = float(np.linalg.norm(session.run(batch) - reference, axis=1).max())
            row[f"{precision}_faces_per_s"], row[f"{precision}_max_diff"] = rate, diff
            line += f"{rate:>10.0f} {rate / cpu_rate:>6.1f}x {diff:>9.2e} "
        rows.append(row)
        table.append(line)

    detections = []
    table.append("detector at upsample 0 (frames/s):")
    for name in ("obama-720p.jpg", "obama-1080p.jpg"):
        image = cv2.imread(str(DATA / "fr_examples" / name))[..., ::-1].copy()
        cpu_detector = FaceDetector.from_file(model_path("detector", ""), cache, upsample=0)
        cpu_boxes, _ = cpu_detector.detect(image)
        cpu_rate = 1 / best_time(lambda d=cpu_detector, i=image: d.detect(i), 2, args.seconds)
        item = {"image": name, "shape": list(image.shape), "onnxruntime_frames_per_s": cpu_rate}
        line = f"  {name} ({image.shape[1]}x{image.shape[0]}): onnxruntime {cpu_rate:.2f}"
        for precision in args.precisions:
            engine = EngineConfig(backend="tensorrt", precision=precision)
            gpu_detector = FaceDetector.from_file(model_path("detector", ""), cache, upsample=0, engine=engine)
            boxes, _ = gpu_detector.detect(image)
            same = len(boxes) == len(cpu_boxes) and (
                not len(boxes) or box_iou(cpu_boxes.astype(float), boxes.astype(float)).max(axis=1).min() >= 0.99
            )
            rate = 1 / best_time(lambda d=gpu_detector, i=image: d.detect(i), 3, args.seconds)
            item[f"{precision}_frames_per_s"], item[f"{precision}_boxes_agree"] = rate, bool(same)
            gpu_detector.close()
            line += f", {precision} {rate:.1f} ({rate / cpu_rate:.1f}x, boxes {'agree' if same else 'DIFFER'})"
        detections.append(item)
        table.append(line)
    emit({"benchmark": "gpu", "machine": machine(), "gpu": found.reason, "embedder": rows, "detector": detections},
         args.json, table)  # fmt: skip
    for session in sessions.values():  # pycuda aborts a process that exits holding a context
        session.close()


if __name__ == "__main__":
    main()
