"""Soak: the demo clip looped live through the whole pipeline for a bounded time; RSS and open files per process.

    python bench/soak.py [--minutes 10] [--warmup 0.2] [--interval 5] [--video FILE] [--json]

`facestream run --source loop:VIDEO` (the clip played at its native frame rate, over and over, as a camera
would deliver it) runs for --minutes, then gets SIGTERM. Every --interval seconds the resident set size
(/proc/PID/status VmRSS) and the number of open file descriptors (/proc/PID/fd) of the supervisor and of
every stage process (from the run's processes.json) are sampled. Growth per process is measured after the
warm-up (--warmup, a fraction of the run): the median of the last quarter of the samples against the median
of the first quarter. Target: no process grows more than 5% after warm-up. Exit code 1 when one does.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "tests" / "data" / "video" / "short_hamilton_clip.mp4"
TARGET = 0.05


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def processes(run_dir: Path) -> dict[str, int]:
    """name -> pid of the supervisor and the current process of every stage."""
    try:
        info = json.loads((run_dir / "processes.json").read_text())
    except (OSError, ValueError):
        return {}
    found = {"supervisor": info["supervisor"]}
    found.update({p["name"]: p["pid"] for p in info["processes"] if p.get("pid")})
    return found


def growth(samples: list[dict], name: str, key: str, warm: int) -> dict:
    """The median of the first quarter of the samples after warm-up against the median of the last quarter.
    Medians, because a worker's RSS swings with the arrays of the frame it is on (a detector pyramid is
    ~40 MB, mapped and unmapped per frame): one sample taken mid-frame is not a trend, a rising floor is."""
    values = [s[name][key] for s in samples if name in s and s[name][key] is not None][warm:]
    if len(values) < 6:
        return {"start": None, "end": None, "growth": None}
    window = max(3, len(values) // 4)
    start, end = float(np.median(values[:window])), float(np.median(values[-window:]))
    return {"start": start, "end": end, "growth": round((end - start) / start, 4) if start else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the pipeline runs (default 10)")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run that is warm-up (default 0.2)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--video", type=Path, default=VIDEO, help="the clip to loop (default: the demo clip)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fs-soak-"))
    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    (work / "config.yaml").write_text(json.dumps({"pipeline": {"run_dir": str(run_dir)}}))
    argv = [sys.executable, "-m", "facestream.pipeline.cli.main", "--config", str(work / "config.yaml"), "run",
            "--source", f"loop:{args.video}", "--events", str(work / "events.jsonl"), "--stats",
            str(work / "stats.json"), "--no-progress"]  # fmt: skip
    log = open(work / "stderr.txt", "w")  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, cwd=work)
    samples: list[dict] = []
    deadline = started + args.minutes * 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            sample = {name: {"rss_kib": rss_kib(pid), "fds": open_fds(pid)} for name, pid in processes(run_dir).items()}
            sample["t"] = round(time.monotonic() - started, 1)
            samples.append(sample)
            time.sleep(args.interval)
            print(f"\r{sample['t']:.0f} s, {len(sample) - 1} processes", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    warm = max(1, int(len(samples) * args.warmup))
    names = sorted({name for s in samples for name in s if name != "t"})
    report = {
        "command": " ".join(argv),
        "machine": machine(),
        "minutes": args.minutes,
        "samples": len(samples),
        "warmup_s": samples[warm]["t"] if len(samples) > warm else None,
        "exit_code": code,
        "processes": {n: {k: growth(samples, n, k, warm) for k in ("rss_kib", "fds")} for n in names},
    }
    try:
        stats = json.loads((work / "stats.json").read_text())
        report["frames"] = {
            sid: {k: s.get(k) for k in ("read", "processed", "dropped")} for sid, s in stats["streams"].items()
        }
    except (OSError, ValueError):
        report["frames"] = None
    worst = max((g["growth"] or 0 for p in report["processes"].values() for g in p.values()), default=0)
    report["worst_growth"], report["target"] = worst, TARGET
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"soak {args.minutes} min, {len(samples)} samples, warm-up until {report['warmup_s']} s, exit {code}")
        header = ("process", "RSS start MiB", "RSS end MiB", "growth", "fds start", "fds end")
        print("{:<12} {:>13} {:>11} {:>8} {:>10} {:>8}".format(*header))
        for name, figures in report["processes"].items():
            rss, fds = figures["rss_kib"], figures["fds"]
            if rss["start"] is None:
                continue
            print(f"{name:<12} {rss['start'] / 1024:>13.1f} {rss['end'] / 1024:>11.1f} {rss['growth']:>8.1%} "
                  f"{fds['start']:>10} {fds['end']:>8}")  # fmt: skip
        print(f"frames: {report['frames']}; worst growth {worst:.1%} (target <= {TARGET:.0%})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
