"""The first run on an NVIDIA machine, in one step: `make gpu-check` (or `python bench/gpu_check.py`).

    python bench/gpu_check.py [--out out/gpu-check.json] [--seconds 1]

Writes one JSON report: the device and the versions of TensorRT, pycuda, the CUDA driver, faiss and
ONNX Runtime; `facestream engines build --precision both` (what was built, how long); the `gpu` tests'
results (pytest -m gpu); `facestream engines check` at FP16 and FP32 on the real engines; `bench/gpu.py`.
Each step runs as its own process (a crash or an abort in one is recorded, the others still run).
Exit 0 when every step passed, 1 when one failed, 2 when this machine has no usable GPU (said in one line,
with the reason: nothing else is run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("tensorrt", "pycuda", "faiss", "onnxruntime", "onnx", "numpy"):
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except Exception as error:  # absent or broken: say which
            found[name] = f"not importable ({type(error).__name__}: {error})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        found["cuda_driver"] = ".".join(str(v) for v in divmod(cuda.get_driver_version(), 1000))
    except Exception as error:
        found["cuda_driver"] = f"unknown ({type(error).__name__}: {error})"
    return found


def step(name: str, command: list[str], timeout: float, parse_json: bool = True) -> dict[str, Any]:
    """Run one step as a process; its exit code, seconds, JSON output (when asked) and the end of stderr."""
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"step": name, "passed": False, "error": f"timed out after {timeout:.0f} s"}
    result: dict[str, Any] = {"step": name, "exit_code": done.returncode, "passed": done.returncode == 0,
                              "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    if parse_json:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        try:
            result["output"] = json.loads(lines[-1]) if lines else None
        except ValueError:
            result["output"] = None
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-4000:]
    return result


def gpu_tests(timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                   f"--junitxml={report}", "tests/test_gpu_backend.py"]  # fmt: skip
        result = step("pytest -m gpu", command, timeout, False)
        if report.exists():
            suite = ElementTree.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            tests = []
            for case in suite.iter("testcase"):
                outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
                tests.append({"test": case.get("name"), "outcome": outcome})
            result["tests"] = tests
            # Every gpu test must have run: a skip here means TensorRT did not run after all.
            result["passed"] = result["passed"] and bool(tests) and all(t["outcome"] == "passed" for t in tests)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-check.json")
    parser.add_argument("--seconds", type=float, default=1.0, help="bench/gpu.py's timing budget per figure")
    args = parser.parse_args(argv)

    from facestream.engines.backend import probe_gpu
    from facestream.enroll.index import faiss_gpu_status

    found = probe_gpu()
    report: dict[str, Any] = {"gpu": found.available, "reason": found.reason, "versions": versions(),
                              "faiss_gpu": faiss_gpu_status()[1]}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not found.available:
        report["passed"] = False
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"gpu-check: no usable NVIDIA GPU here, nothing checked: {found.reason} (report: {args.out})",
              file=sys.stderr)  # fmt: skip
        return 2
    report.update(device=found.device_name, compute_capability=list(found.compute_capability),
                  tensorrt=found.tensorrt_version)  # fmt: skip
    cli = [sys.executable, "-m", "facestream.pipeline.cli.main"]
    steps = [
        step("engines build", [*cli, "engines", "build", "--precision", "both", "--json"], 3600),
        gpu_tests(3600),
        step("engines check fp16", [*cli, "engines", "check", "--precision", "fp16", "--json"], 3600),
        step("engines check fp32", [*cli, "engines", "check", "--precision", "fp32", "--json"], 3600),
        step("bench/gpu.py", [sys.executable, "bench/gpu.py", "--json", "--seconds", str(args.seconds)], 3600),
    ]
    report["steps"] = steps
    report["passed"] = all(s["passed"] for s in steps)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for item in steps:
        print(f"{item['step']}: {'passed' if item['passed'] else 'FAILED'} ({item.get('seconds', '-')} s)")
    print(f"gpu-check: {'passed' if report['passed'] else 'FAILED'}; report: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
