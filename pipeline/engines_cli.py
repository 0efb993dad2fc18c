"""`facestream engines info | build`: which backend runs here and why; TensorRT engines built ahead of time."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  facestream engines info                 which backend `engine.backend: auto` picks here, and why
  facestream engines build                build (or find in the cache) the FP16 detector and embedder engines
  facestream engines build --precision fp32 --json

Engines are cached under <cache_dir>/tensorrt/, keyed by the ONNX file's sha256, the TensorRT version,
the GPU's name and compute capability, the precision and the optimisation profile (engine: in
config.yaml); a stale or foreign engine file is rebuilt, never loaded. Building takes minutes once;
without `engines build` the first run builds them.
"""


def _cache(config: dict) -> Path:
    from ..engines.onnx_export import default_cache_dir

    return Path(config["cache_dir"]).expanduser() if config["cache_dir"] else default_cache_dir()


def cmd_info(args: argparse.Namespace, config: dict) -> int:
    from ..engines.backend import BackendError, choose_backend
    from ..engines.tensorrt_backend import profile_for
    from ..enroll.index import faiss_gpu_status, gpu_mode

    engine = config["engine"]
    try:
        choice = choose_backend(str(engine["backend"]))
        backend, reason = choice.name, choice.reason
    except BackendError as error:
        backend, reason = "none", str(error)
    usable, why = faiss_gpu_status()
    profiles = {kind: profile_for(kind, engine, config["embedder"]["max_batch"]) for kind in ("detector", "embedder")}
    record: dict[str, Any] = {
        "backend": backend, "reason": reason, "configured": engine["backend"], "precision": engine["precision"],
        "gallery_search": "gpu" if usable and gpu_mode(config["gallery"]["gpu"]) != "off" else "cpu", "faiss_gpu": why,
        "profiles": {k: {"input": p.input_name, "min": p.min_shape, "opt": p.opt_shape, "max": p.max_shape}
                     for k, p in profiles.items()},
        "engine_cache": str(_cache(config) / "tensorrt"),
    }  # fmt: skip
    if args.json:
        print(json.dumps(record))
    else:
        print(f"backend: {backend} (engine.backend: {engine['backend']}) - {reason}")
        print(f"gallery search: {record['gallery_search']} - faiss: {why}")
        for kind, p in profiles.items():
            print(
                f"TensorRT profile {kind}: input {p.input_name} min {p.min_shape} opt {p.opt_shape} max {p.max_shape}"
            )
        print(f"engine cache: {record['engine_cache']}")
    return 0 if backend != "none" else 2


def cmd_build(args: argparse.Namespace, config: dict) -> int:
    from ..engines.backend import probe_gpu
    from ..engines.models import model_path
    from ..engines.onnx_export import cached_onnx
    from ..engines.tensorrt_backend import EngineError, cached_engine, profile_for

    found = probe_gpu()
    if not found.available:
        log.error("cannot build TensorRT engines here: %s", found.reason)
        return 2
    engine, cache = config["engine"], _cache(config)
    precisions = ["fp16", "fp32"] if args.precision == "both" else [args.precision or engine["precision"]]
    built: list[dict[str, Any]] = []
    for kind in ("detector", "embedder"):
        onnx_path = cached_onnx(model_path(kind, config["models"][kind]), kind, cache)
        profile = profile_for(kind, engine, config["embedder"]["max_batch"])
        for precision in precisions:
            started = time.perf_counter()
            try:
                data, path, fresh = cached_engine(onnx_path, kind, profile, precision, found, cache,
                                                  int(engine["workspace_mb"]))  # fmt: skip
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


def add_engines_commands(commands: argparse._SubParsersAction) -> None:
    engines = commands.add_parser(
        "engines", help="inference backends: which one runs here; build TensorRT engines ahead of time",
        description="ONNX Runtime runs everywhere; TensorRT on NVIDIA GPUs (engine.backend: auto picks it when "
        "tensorrt, pycuda and a CUDA device are there).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    verbs = engines.add_subparsers(dest="verb", metavar="VERB", required=True)
    info = verbs.add_parser("info", help="the backend engine.backend resolves to here, and why; faiss GPU support")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(handler=cmd_info)
    build = verbs.add_parser("build", help="build the TensorRT engines now (needs an NVIDIA GPU)")
    build.add_argument("--precision", choices=("fp16", "fp32", "both"), help="default: engine.precision")
    build.add_argument("--json", action="store_true", help="one JSON object listing what was built")
    build.set_defaults(handler=cmd_build)
