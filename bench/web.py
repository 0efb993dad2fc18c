"""What the web view costs the pipeline: the demo clip through `facestream run`, without and with `--web`
and a page watching it, alternating, --repeats times each.

    python bench/web.py [--repeats 2] [--detect-every 1] [--json]

Each run is `facestream run --no-progress` on tests/data/video/short_hamilton_clip.mp4 (275 frames, file
mode: as fast as the pipeline goes) with the demo gallery; wall time from launch to exit, frames/s =
frames in --detections / wall. The watched runs add `--web 127.0.0.1:0`, and as soon as the server
announces itself two clients start, as an open page would: one reads the server-sent events
(`api/live`), one the annotated MJPEG stream. Printed: each run, the median frames/s with and without,
their ratio, and what the watcher received (events, against the events file; JPEG frames).

Runs alternate (without, with, without, ...) so slow drift of a shared machine hits both sides.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, machine  # noqa: I001 (bench/ modules, found through the path above)
from pipeline import VIDEO, enroll, facestream_command

URL = re.compile(r"web view: (http://\S+/)")


class Watcher:
    """An open page: the SSE client and the MJPEG client, each in a thread, counting what arrives."""

    def __init__(self, url: str, stream_id: str) -> None:
        self.url, self.stream_id = url, stream_id
        self.events = 0
        self.jpegs = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._events, daemon=True),
                        threading.Thread(target=self._video, daemon=True)]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def _events(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "api/live", timeout=30) as response:
                for line in response:
                    if line.startswith(b"event: fs-event"):
                        self.events += 1
                    if self.stopping.is_set():
                        return
        except (OSError, urllib.error.URLError):
            return  # the run ended

    def _video(self) -> None:
        while not self.stopping.is_set():  # 404 until the first annotated frame
            try:
                with urllib.request.urlopen(f"{self.url}api/streams/{self.stream_id}/video", timeout=30) as response:
                    tail = b""
                    while chunk := response.read1(65536):
                        self.jpegs += (tail + chunk).count(b"--frame\r\n")
                        tail = chunk[-9:]
                        if self.stopping.is_set():
                            return
                return
            except urllib.error.HTTPError:
                time.sleep(0.2)
            except (OSError, urllib.error.URLError):
                return

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)


def run(gallery: Path, work: Path, tag: str, web: bool, detect_every: int) -> dict:
    events, detections = work / f"events-{tag}.jsonl", work / f"detections-{tag}.jsonl"
    command = [*facestream_command(), "run", "--no-progress", "--source", f"clip={VIDEO}", "--gallery",
               str(gallery), "--events", str(events), "--detections", str(detections),
               "--detect-every", str(detect_every)]  # fmt: skip
    if web:
        command += ["--web", "127.0.0.1:0"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher, log = None, []
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line)
        match = URL.search(line)
        if match and watcher is None:
            watcher = Watcher(match.group(1), "clip")
    code = process.wait()
    wall = time.perf_counter() - started
    if watcher is not None:
        watcher.stop()
    if code != 0:
        sys.exit(f"facestream run ({tag}) failed ({code}):\n{''.join(log)[-3000:]}")
    if web and watcher is None:
        sys.exit(f"facestream run ({tag}): the web view never announced its address:\n{''.join(log)[-3000:]}")
    frames = sum(1 for line in detections.read_text().splitlines() if line.strip())
    result = {"run": tag, "web": web, "frames": frames, "wall_s": wall, "fps": frames / wall}
    if watcher is not None:
        result |= {"events_in_file": sum(1 for line in events.read_text().splitlines() if line.strip()),
                   "events_received": watcher.events, "jpegs_received": watcher.jpegs}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind (alternating)")
    parser.add_argument("--detect-every", type=int, default=1, metavar="K")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        work = Path(tmp)
        gallery = work / "gallery.db"
        enroll(gallery)
        runs = [run(gallery, work, f"{kind}-{i + 1}", kind == "web", args.detect_every)
                for i in range(args.repeats) for kind in ("plain", "web")]  # fmt: skip
    plain = statistics.median(r["fps"] for r in runs if not r["web"])
    web = statistics.median(r["fps"] for r in runs if r["web"])
    result = {"benchmark": "web", "machine": machine(), "video": VIDEO.name, "detect_every": args.detect_every,
              "runs": runs, "fps_without_web": plain, "fps_with_web": web, "ratio": web / plain}  # fmt: skip
    table = [f"the web view's cost: {VIDEO.name}, file mode, --detect-every {args.detect_every}, "
             f"{args.repeats} runs each, alternating"]  # fmt: skip
    for r in runs:
        watched = (f"; page got {r['events_received']}/{r['events_in_file']} events, {r['jpegs_received']} frames"
                   if r["web"] else "")  # fmt: skip
        table.append(f"  {r['run']:>8}: {r['frames']} frames in {r['wall_s']:.1f} s = {r['fps']:.2f} frames/s{watched}")
    table.append(f"median frames/s: without --web {plain:.2f}, with --web and a page watching {web:.2f} "
                 f"(ratio {web / plain:.3f})")  # fmt: skip
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
