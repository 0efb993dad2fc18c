"""`facestream engines info | prepare | build | check`: which backend runs here and why; the CPU artefacts and
TensorRT engines built ahead of time; FP16 against FP32."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..config import Config

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  facestream engines info                 which backend `engine.backend: auto` picks here, and why
  facestream engines prepare              ONNX exports, parsed models, compiled loops now (make install does it)
  facestream engines build                build (or find in the cache) both engines at engine.precision
  facestream engines build --precision fp32 --json
  facestream engines check --precision fp16 --json   FP16 against FP32 (simulated without a GPU)

Engines are cached under <cache_dir>/tensorrt/, keyed by the ONNX file's sha256, the TensorRT version,
the GPU's name and compute capability, the precision and the optimisation profile (engine: in
config.yaml); a stale or foreign engine file is rebuilt, never loaded. Building takes minutes once;
without `engines build` the first run builds them.
"""


def _cache(config: Config) -> Path:
    from ...engines.cachedir import default_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def cmd_info(args: argparse.Namespace, config: Config) -> int:
    from ...engines.backend import BackendError, choose_backend
    from ...engines.precision import resolve_precision
    from ...engines.tensorrt_backend import profile_for
    from ...enroll.index import faiss_gpu_status, gpu_mode

    engine = config.engine
    try:
        choice = choose_backend(str(engine.backend))
        backend, reason = choice.name, choice.reason
    except BackendError as error:
        backend, reason = "none", str(error)
    usable, why = faiss_gpu_status()
    profiles = {kind: profile_for(kind, engine, config.embedder.max_batch) for kind in ("detector", "embedder")}
    record: dict[str, Any] = {
        "backend": backend, "reason": reason, "configured": engine.backend, "precision": engine.precision,
        "precisions": {kind: resolve_precision(kind, engine.precision) for kind in ("detector", "embedder")},
        "gallery_search": "gpu" if usable and gpu_mode(config.gallery.gpu) != "off" else "cpu", "faiss_gpu": why,
        "profiles": {k: {"input": p.input_name, "min": p.min_shape, "opt": p.opt_shape, "max": p.max_shape}
                     for k, p in profiles.items()},
        "engine_cache": str(_cache(config) / "tensorrt"),
    }  # fmt: skip
    if args.json:
        print(json.dumps(record))
    else:
        print(f"backend: {backend} (engine.backend: {engine.backend}) - {reason}")
        print(f"gallery search: {record['gallery_search']} - faiss: {why}")
        for kind, p in profiles.items():
            print(
                f"TensorRT profile {kind}: input {p.input_name} min {p.min_shape} opt {p.opt_shape} max {p.max_shape}"
            )
        print(f"engine cache: {record['engine_cache']}")
    return 0 if backend != "none" else 2


def cmd_prepare(args: argparse.Namespace, config: Config) -> int:
    import os

    from ...engines.loops import CLoops, loops
    from ...engines.warmup import prepare

    cache = _cache(config)

    def progress(name: str) -> None:
        if not args.json:
            print(f"{name} ...", flush=True)

    started = time.perf_counter()
    done = prepare(cache, progress)
    native = loops()
    library = str(native.path) if isinstance(native, CLoops) else None
    record = {"cache": str(cache), "loops": native.kind, "loops_library": library,
              "numba_cache": os.environ.get("NUMBA_CACHE_DIR"), "seconds": round(time.perf_counter() - started, 1),
              "steps": [{"step": step.name, "seconds": step.seconds} for step in done]}  # fmt: skip
    if args.json:
        print(json.dumps(record))
    else:
        where = library if library else f"numba, cached in {record['numba_cache']}"
        print(f"ready in {record['seconds']} s: {cache} (compiled loops: {where})")
    return 0


def cmd_build(args: argparse.Namespace, config: Config) -> int:
    from ...engines.backend import probe_gpu
    from ...engines.models import model_path
    from ...engines.onnx_cache import cached_onnx
    from ...engines.tensorrt_backend import EngineError, cached_engine, profile_for

    found = probe_gpu()
    if not found.available:
        log.error("cannot build TensorRT engines here: %s", found.reason)
        return 2
    engine, cache = config.engine, _cache(config)
    from ...engines.precision import resolve_precision

    wanted = args.precision or engine.precision
    built: list[dict[str, Any]] = []
    for kind in ("detector", "embedder"):
        onnx_path = cached_onnx(model_path(kind, getattr(config.models, kind)), kind, cache)
        profile = profile_for(kind, engine, config.embedder.max_batch)
        for precision in ["fp16", "fp32"] if wanted == "both" else [resolve_precision(kind, wanted)]:
            started = time.perf_counter()
            try:
                data, path, fresh = cached_engine(onnx_path, kind, profile, precision, found, cache,
                                                  int(engine.workspace_mb))  # fmt: skip
            except EngineError as error:
                log.error("%s", error)
                return 1
            item = {"network": kind, "precision": precision, "engine": str(path), "bytes": len(data),
                    "built": fresh, "seconds": round(time.perf_counter() - started, 1), "gpu": found.device_name,
                    "tensorrt": found.tensorrt_version, "profile_max": list(profile.max_shape)}  # fmt: skip
            built.append(item)
            if not args.json:
                what = "built" if fresh else "already cached"
                print(f"{kind} {precision}: {what} in {item['seconds']} s -> {path} ({len(data) / 1e6:.1f} MB)")
    if args.json:
        print(json.dumps({"gpu": found.reason, "engines": built}))
    return 0


DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _bundled_samples(config: dict, every: int) -> tuple[list, list[Path]]:
    """The golden images (upsample 0 above 1280 px, where upsample 1 would need gigabytes on the CPU) and every
    `every`-th frame of the demo clip; the golden chips."""
    import cv2

    from ...engines.imageio import read_image
    from ...engines.precision import Sample

    upsample = int(config.detector.upsample)
    golden = json.loads((DATA / "golden" / "dlib-20.0.1.json").read_text())["images"]
    samples = []
    for name in sorted(golden):
        image = read_image(DATA / name, int(config.detector.max_image_pixels))
        samples.append(Sample(name, image, upsample if max(image.shape[:2]) <= 1280 else 0))
    if every > 0:
        capture = cv2.VideoCapture(str(DATA / "video" / "short_hamilton_clip.mp4"))
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                samples.append(Sample(f"short_hamilton_clip.mp4#{index}", frame[..., ::-1].copy(), upsample))
            index += 1
        capture.release()
    return samples, sorted((DATA / "golden" / "chips").glob("*.png"))


def cmd_check(args: argparse.Namespace, config: dict) -> int:
    """FP16 (or FP32) against FP32: on TensorRT when it runs here, else simulated with ONNX Runtime."""
    import tempfile

    import cv2
    import numpy as np
    import onnx

    from ...engines.backend import probe_gpu
    from ...engines.chips import extract_face_chips
    from ...engines.detector import DetectorParams, FaceDetector
    from ...engines.embedder import FaceEmbedder
    from ...engines.imageio import ImageError, read_image
    from ...engines.landmarks import ShapePredictor
    from ...engines.models import model_path
    from ...engines.onnx_cache import cached_onnx
    from ...engines.precision import KEEP_FP32, Sample, compare, resolve_precision, simulate_fp16
    from ...engines.runtime import OnnxRuntimeSession
    from ...engines.tensorrt_backend import TensorRTSession, profile_for

    engine, cache = config.engine, _cache(config)
    setting = args.precision or engine.precision
    networks = {kind: resolve_precision(kind, setting) for kind in ("detector", "embedder")}
    threads = int(engine.threads)
    onnx_paths = {kind: cached_onnx(model_path(kind, getattr(config.models, kind)), kind, cache)
                  for kind in ("detector", "embedder")}  # fmt: skip
    if args.images:
        samples = []
        for path in args.images:
            try:
                samples.append(Sample(str(path), read_image(path, int(config.detector.max_image_pixels)),
                                      int(config.detector.upsample)))  # fmt: skip
            except ImageError as error:
                log.error("%s", error)
                return 2
        chip_files: list[Path] = []
    else:
        samples, chip_files = _bundled_samples(config, args.every)
    chips = np.stack([cv2.imread(str(p))[..., ::-1] for p in chip_files]) if chip_files else None
    found = probe_gpu()
    predictor = ShapePredictor.from_file(model_path("landmarks", config.models.landmarks), cache)
    params = DetectorParams.from_model(model_path("detector", config.models.detector))
    detector_options = {"upsample": config.detector.upsample, "threshold": config.detector.threshold}
    max_batch = int(config.embedder.max_batch)
    sessions: list = []
    with tempfile.TemporaryDirectory(prefix="facestream-check-") as folder:
        candidates = {}
        for kind, path in onnx_paths.items():
            if found.available:
                session = TensorRTSession(path, kind, profile_for(kind, engine, max_batch), precision=networks[kind],
                                          cache_dir=cache, workspace_mb=int(engine.workspace_mb), probe=found)
            else:
                graph = onnx.load(str(path))
                if networks[kind] == "fp16":
                    graph = simulate_fp16(graph, KEEP_FP32[kind])
                simulated = Path(folder) / f"{kind}-{networks[kind]}.onnx"
                onnx.save(graph, str(simulated))
                session = OnnxRuntimeSession(simulated, threads=threads)
            sessions.append(session)
            candidates[kind] = session
        reference = {kind: OnnxRuntimeSession(path, threads=threads) for kind, path in onnx_paths.items()}
        try:
            report = compare(
                samples,
                (FaceDetector(reference["detector"], params, **detector_options),
                 FaceEmbedder(reference["embedder"], max_batch)),
                (FaceDetector(candidates["detector"], params, **detector_options),
                 FaceEmbedder(candidates["embedder"], max_batch)),
                lambda image, boxes: extract_face_chips(image, predictor.predict(image, boxes)), chips,
            )  # fmt: skip
        finally:
            for session in sessions:
                session.close()
    mode = (f"tensorrt ({found.reason})" if found.available else
            "simulated: ONNX Runtime on the CPU, the input, every weight and every node's output rounded to float16"
            if "fp16" in networks.values() else "onnxruntime fp32 (the reference itself: no GPU here)")  # fmt: skip
    record = {"precision": setting, "networks": networks, "mode": mode,
              "keep_fp32": {k: list(v) for k, v in KEEP_FP32.items()}, "images": len(samples),
              "chips": 0 if chips is None else len(chips), **report}  # fmt: skip
    if args.json:
        print(json.dumps(record))
    else:
        detection, embedding = report["detection"], report["embedding"]
        print(f"detector {networks['detector']}, embedder {networks['embedder']} against fp32 ({mode}) "
              f"on {len(samples)} images")
        print(f"detector: {detection['faces_fp32']} faces in fp32, {detection['faces_candidate']} in "
              f"{networks['detector']}, "
              f"{detection['matched']} matched (lowest IoU {detection['min_iou']}), largest score change "
              f"{detection['max_score_drift']:.2e}; {len(detection['near_threshold'])} near the threshold; "
              f"{'agree' if detection['agree'] else 'DISAGREE'}")
        print(f"embedder: {embedding['faces']} faces, descriptor drift max {embedding['max_drift']:.2e} median "
              f"{embedding['median_drift']:.2e}; pairwise distances change by at most "
              f"{embedding['max_pairwise_change']:.2e} over {embedding['pairs']} pairs; "
              f"{embedding['identities_changed']} identities changed at {report['bar']['match_threshold']}")
        print("bar: " + ("passed" if report["bar"]["passed"] else "FAILED"))
    return 0 if report["bar"]["passed"] else 1


def add_engines_commands(commands: argparse._SubParsersAction) -> None:
    engines = commands.add_parser(
        "engines", help="inference backends: which one runs here; prepare caches and TensorRT engines ahead of time",
        description="ONNX Runtime runs everywhere; TensorRT on NVIDIA GPUs (engine.backend: auto picks it when "
        "tensorrt, pycuda and a CUDA device are there).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    verbs = engines.add_subparsers(dest="verb", metavar="VERB", required=True)
    info = verbs.add_parser("info", help="the backend engine.backend resolves to here, and why; faiss GPU support")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(handler=cmd_info)
    prepare = verbs.add_parser(
        "prepare", help="export the networks to ONNX, parse the models and compile the CPU kernels now",
        description="What a first run would otherwise do before its first face (~30 s on two cores): export "
        "dlib's networks to ONNX, parse the shape predictors and compile the numba kernels of the HOG "
        "detector and the CNN pyramid, into the cache (cache_dir in config.yaml, else FACESTREAM_CACHE, else "
        "~/.cache/facestream). `make install` runs it; run it again after upgrading facestream. Already "
        "cached parts take a second.",
    )  # fmt: skip
    prepare.add_argument("--json", action="store_true", help="one JSON object: the steps and their seconds")
    prepare.set_defaults(handler=cmd_prepare)
    build = verbs.add_parser("build", help="build the TensorRT engines now (needs an NVIDIA GPU)")
    build.add_argument("--precision", choices=("fp16", "fp32", "both"), help="default: engine.precision")
    build.add_argument("--json", action="store_true", help="one JSON object listing what was built")
    build.set_defaults(handler=cmd_build)
    check = verbs.add_parser(
        "check", help="FP16 against FP32 on the bundled data or your images (TensorRT on a GPU, else simulated)",
        description="Runs both networks at --precision and at FP32 and reports detection agreement, descriptor "
        "drift, pairwise-distance change and identities changed at 0.6. With TensorRT and a GPU the real "
        "engines run; without, FP16 is simulated with ONNX Runtime on the CPU (input, weights and every "
        "node's output rounded to float16). Exit 0 when the bar holds (max drift < 0.01, no identity "
        "changed, detections agree), 1 when not.",
    )  # fmt: skip
    check.add_argument("images", nargs="*", type=Path, help="images to compare on (default: the bundled data)")
    check.add_argument("--precision", choices=("auto", "fp16", "fp32"),
                       help="both networks at fp16 / fp32, or auto: each at its default; default: engine.precision")
    check.add_argument("--every", type=int, default=5, help="bundled data: every Nth demo-clip frame (0: none)")
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.set_defaults(handler=cmd_check)
