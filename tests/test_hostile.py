"""A hostile user against `facestream serve` and the CLI: bodies, decompression-bomb-like photos, names.

The server runs as a real process (`python -m facestream.pipeline.cli.serve serve`) so its memory can be read
from its own high-water mark (VmHWM in /proc/PID/status), the figure an out-of-memory killer looks at.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from facestream.enroll.gallery import Gallery

DATA = Path(__file__).parent / "data"
CHANGE = {"X-Facestream": "1"}
MB = 1 << 20


def vm_hwm_mb(pid: int) -> float:
    """The process's resident-set high-water mark, MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chunked(url: str, path: str, total: int, chunk: int = MB, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POST `total` bytes with Transfer-Encoding: chunked (no Content-Length); (status, body) of the reply.
    The server may answer and close before everything is sent: sending stops there."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    sock.sendall(head.encode())
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent = 0
    try:
        while sent < total:
            sock.sendall(piece)
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # refused mid-way: the reply is waiting
    reply = b""
    try:
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    except OSError:
        pass
    sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return status, reply.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")


def _length(reply: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", reply.partition(b"\r\n\r\n")[0], re.IGNORECASE)
    return int(match.group(1)) if match else 0


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of one grey colour declaring width x height: tiny on the wire, huge decoded."""
    row = b"\x00" + b"\x80" * (width * 3)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`facestream serve --gallery G` on a free port: (url, process, gallery path)."""
    gallery = tmp_path / "gallery.db"
    with Gallery(gallery):
        pass
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"web": {"address": "127.0.0.1:0"}}))
    argv = [sys.executable, "-m", "facestream.pipeline.cli.serve", "--config", str(tmp_path / "config.yaml"), "serve",
            "--gallery", str(gallery)]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(argv, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (match := re.search(r"web view: (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield match.group(1), process, gallery
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_100_mb_chunked_upload_and_oversized_json_are_refused_with_413_without_being_held(served) -> None:
    url, process, _ = served
    assert http(url + "api/people")[0] == 200
    before = vm_hwm_mb(process.pid)
    status, body = chunked(url, "/api/people/Alice/photos", 100 * MB, headers=CHANGE)
    assert status == 413, body
    assert "larger than 20 MB" in json.loads(body)["error"]
    status, body = chunked(url, "/api/unknowns/enrol", 50 * MB, headers={**CHANGE, "Content-Type": "application/json"})
    assert status == 413, body
    status, body = chunked(url, "/api/people/Alice/rename", 50 * MB, headers=CHANGE)
    assert status == 413, body
    # a declared Content-Length beyond the limit is refused before any byte of the body is read
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))), timeout=30)
    sock.sendall(f"POST /api/unknowns/enrol HTTP/1.1\r\nHost: {url[7:-1]}\r\nX-Facestream: 1\r\n"
                 f"Content-Length: {200 * MB}\r\n\r\n".encode())  # fmt: skip
    assert sock.recv(100).startswith(b"HTTP/1.1 413")
    sock.close()
    growth = vm_hwm_mb(process.pid) - before
    assert growth < 40, f"the server's high-water mark grew by {growth:.0f} MB"
    assert http(url + "api/people")[0] == 200  # still serving


def test_a_2500x2500_upload_is_refused_by_the_work_budget_in_a_separate_process(served) -> None:
    url, process, gallery = served
    png = bomb_png(2500, 2500)
    assert len(png) < 40_000
    before = vm_hwm_mb(process.pid)
    started = time.monotonic()
    status, body = http(url + "api/people/Alice/photos", "POST", png, {**CHANGE, "X-Filename": "bomb.png"})
    report = json.loads(body)
    assert status == 422 and report["status"] == "failed", report
    # 2500x2500 at upsample 1 is 25 M: within detector.max_work_pixels (40 M), over the uploads' own budget (16 M)
    assert "web.upload_max_work_pixels" in report["reason"] and "refused before decoding" in report["reason"]
    assert report["image"] == "bomb.png" and "facestream-upload" not in body.decode()  # no temporary path shown
    assert time.monotonic() - started < 30
    assert vm_hwm_mb(process.pid) - before < 40  # nothing decoded in the server
    with Gallery(gallery) as opened:
        assert opened.people() == []


def test_analyze_refuses_an_image_over_the_work_budget_clearly_and_cheaply(tmp_path: Path) -> None:
    """6000x6000 at upsample 1 is 144 M pixels of detector work, over detector.max_work_pixels (40 M by default,
    which admits the same image at upsample 0): refused on its header, before decoding or loading models."""
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(6000, 6000))
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of pytest, which forked this child.
    code = ("import re, runpy, sys; sys.argv = ['facestream', 'analyze', '--upsample', '1', sys.argv[1]]\n"
            "try:\n    runpy.run_module('facestream.pipeline.cli.main', run_name='__main__')\nexcept SystemExit as e:\n"
            "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "    print('rc', e.code, 'hwm', int(hwm) // 1024)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert "detector.max_work_pixels" in result.stderr and "6000x6000 at upsample 1" in result.stderr, result.stderr
    assert "refused before decoding" in result.stderr, result.stderr
    rc, hwm = re.search(r"rc (\d+) hwm (\d+)", result.stdout).groups()
    assert rc == "1"
    assert int(hwm) < 1000, f"analyze peaked at {hwm} MB"


def test_the_default_work_budget_admits_36_megapixels_at_upsample_0_only() -> None:
    """The stated rule: detector.max_work_pixels defaults to max_image_pixels (40 M), so a 6000x6000 photo
    passes at upsample 0 and is refused at upsample 1; the check reads only the header's size."""
    from facestream.engines.imageio import ImageError, check_work
    from facestream.pipeline.config import load_config

    config = load_config(None)
    assert config.detector.max_work_pixels == config.detector.max_image_pixels == 40_000_000
    check_work(6000, 6000, 0, config.detector.max_work_pixels, "big.png")
    refused = r"big.png: 8000x8000 at upsample 0 .* \(detector\.max_work_pixels\); refused before decoding"
    with pytest.raises(ImageError, match=refused):
        check_work(8000, 8000, 0, config.detector.max_work_pixels, "big.png")
    with pytest.raises(ImageError, match=r"6000x6000 at upsample 1 is 144,000,000 pixels"):
        check_work(6000, 6000, 1, config.detector.max_work_pixels, "big.png")


def facestream(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from facestream.pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_reading_commands_refuse_a_mistyped_gallery_and_create_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "gallery.db"
    photo = str(DATA / "fr_examples" / "obama-480p.jpg")
    for argv in (["enroll", "list"], ["enroll", "export", str(tmp_path / "out.json")], ["identify", photo],
                 ["enroll", "remove", "Alice"]):  # fmt: skip
        result = facestream(*argv, "--gallery", str(typo))
        assert result.returncode == 2, (argv, result.stderr)
        assert "no such gallery" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    result = facestream("enroll", "add", "Barack Obama", photo, "--gallery", str(typo))
    assert result.returncode == 0, result.stderr
    assert f"created a new, empty gallery: {typo}" in result.stderr
    result = facestream("enroll", "list", "--gallery", str(typo))
    assert result.returncode == 0 and "Barack Obama: 1 sample" in result.stdout


def test_run_unknowns_on_an_existing_file_makes_it_private_and_keeps_what_it_held(tmp_path: Path) -> None:
    from facestream.pipeline.domain.unknowns import UnknownTracks, chips_dir, read_unknowns

    path = tmp_path / "unknowns.jsonl"
    chips = chips_dir(path)
    rng = np.random.default_rng(0)

    def one_run() -> None:
        tracks = UnknownTracks(path, chip_dir=chips, sources={"door": "rtsp://user:pw@cam/door"})
        tracks.observe("door", 1, 0, 0.0, (10, 10, 80, 80), 1.0, 1.0, rng.normal(0, 0.1, 128),
                       chip=rng.integers(0, 255, (150, 150, 3), dtype=np.uint8))  # fmt: skip
        tracks.close()

    one_run()
    path.chmod(0o644)
    chips.chmod(0o755)
    one_run()  # the same stream, track and frame numbers as the first run
    assert path.stat().st_mode & 0o777 == 0o600 and chips.stat().st_mode & 0o777 == 0o700
    report = read_unknowns(path)
    assert len(report.faces) == 2 and not report.problems
    saved = sorted(chips.iterdir())
    assert len(saved) == 2 and {p.stat().st_mode & 0o777 for p in saved} == {0o600}
    assert len({p.read_bytes() for p in saved}) == 2  # the second run's chip did not replace the first's


def test_a_name_with_a_slash_can_be_renamed_and_deleted_from_the_page(served) -> None:
    url, _, gallery = served
    with Gallery(gallery) as opened:
        opened.add_samples("AC/DC", np.random.default_rng(1).normal(0, 0.1, (1, 128)).astype(np.float32))
    quoted = urllib.request.quote("AC/DC", safe="")
    body = json.dumps({"name": "AC-DC"}).encode()
    status, reply = http(
        url + f"api/people/{quoted}/rename", "POST", body, {**CHANGE, "Content-Type": "application/json"}
    )
    assert status == 200, reply
    status, reply = http(url + "api/people/AC-DC/rename", "POST", json.dumps({"name": "a/b"}).encode(), CHANGE)
    assert status == 200, reply
    status, reply = http(url + f"api/people/{urllib.request.quote('a/b', safe='')}", "DELETE", None, CHANGE)
    assert status == 200 and json.loads(reply)["deleted"] == "a/b", reply
    with Gallery(gallery) as opened:
        assert opened.people() == []


@pytest.mark.parametrize("name", [b"caf\xe9", "evil\u202egpj.exe".encode(), "csi\u009b31m".encode(), b"tab\there"])
def test_names_that_cannot_be_shown_as_they_are_are_refused_before_the_models_load(tmp_path: Path, name: bytes) -> None:
    code = "import sys; from facestream.pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
    photo = str(DATA / "fr_examples" / "obama-1080p.jpg").encode()
    gallery = str(tmp_path / "g.db").encode()
    argv = [sys.executable.encode(), b"-c", code.encode(), b"enroll", b"add", name, photo, b"--gallery", gallery]
    result = subprocess.run(argv, capture_output=True, timeout=60)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert "a person's name must" in stderr and "Traceback" not in stderr and "models loaded" not in stderr
    assert "\u202e" not in stderr and "\u009b" not in stderr  # shown escaped, never raw
    assert not (tmp_path / "g.db").exists()


def test_bad_query_values_framing_and_the_no_pipeline_badge(served) -> None:
    url, _, _ = served
    status, body = http(url + "api/events?after=abc")
    assert status == 400 and "after" in json.loads(body)["error"]
    request = urllib.request.Request(url)
    with urllib.request.urlopen(request, timeout=30) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
    assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, body = http(url + "api/health")
    assert status == 200 and json.loads(body)["pipeline"] is False  # `serve` with no run directory


def test_weak_tokens_are_refused_and_guessing_is_rate_limited(tmp_path: Path) -> None:
    from facestream.pipeline.config import load_config
    from facestream.pipeline.web.address import WebError, check_binding
    from facestream.pipeline.web.server import WebServer

    for weak in ("aaaaaaaaaaaaaaaa", "abababababababab", "0123456789"):
        with pytest.raises(WebError, match="too short or too regular"):
            check_binding("0.0.0.0", weak)
    token = "c0ffee-7d1f2a9b84e3"
    check_binding("0.0.0.0", token)
    server = WebServer(load_config(None), {}, address="127.0.0.1:0", token=token, gallery=tmp_path / "g.db")
    server.start()
    try:
        wrong = [http(server.url + "login", "POST", b"token=guess%d" % i)[0] for i in range(10)]
        assert wrong == [401] * 10
        status, body = http(server.url + "api/people", headers={"Authorization": f"Bearer {token}"})
        assert status == 429 and "too many wrong tokens" in json.loads(body)["error"]
    finally:
        server.stop()


def test_unknowns_enroll_keeps_the_chips_as_the_new_samples_thumbnails(tmp_path: Path) -> None:
    from facestream.pipeline.cli.main import main
    from facestream.pipeline.domain.unknowns import UnknownTracks, chips_dir

    path = tmp_path / "unknowns.jsonl"
    rng = np.random.default_rng(3)
    base = rng.normal(0, 0.1, 128)
    tracks = UnknownTracks(path, chip_dir=chips_dir(path))
    for frame in range(2):
        tracks.observe(
            "door",
            1,
            frame,
            frame / 25,
            (10, 10, 80, 80),
            1.0,
            1.0 - frame / 10,
            base + rng.normal(0, 0.001, 128),
            chip=rng.integers(0, 255, (150, 150, 3), dtype=np.uint8),
        )
    tracks.close()
    assert main(["unknowns", str(path), "--enroll", "1", "Jane Doe", "--gallery", str(tmp_path / "g.db")]) == 0
    with Gallery(tmp_path / "g.db") as gallery:
        ids = gallery.store.sample_ids("Jane Doe").tolist()
        assert len(ids) == 2 and gallery.thumbnails.available(ids) == ids
        chips = {p.read_bytes() for p in chips_dir(path).glob("*.png")}
        assert {gallery.thumbnails.read(i) for i in ids} == chips


def test_keys_in_folders_others_can_write_are_refused(tmp_path: Path) -> None:
    from facestream.pipeline.runtime import security

    shared = tmp_path / "shared"
    _, secret = security.create_key_pair(shared, "server")
    security.load_key_file(secret, secret=True)  # a private folder: fine
    shared.chmod(0o1777)  # like /tmp: anyone can add files there
    with pytest.raises(security.SecurityError, match="writable by its owner only"):
        security.load_key_file(secret, secret=True)
    clients = tmp_path / "clients"
    public, _ = security.create_key_pair(clients, "worker")
    assert security.allowed_client_keys(clients)
    clients.chmod(0o775)
    with pytest.raises(security.SecurityError, match="allowed_clients_dir must be writable by its owner only"):
        security.allowed_client_keys(clients)
    clients.chmod(0o700)
    public.chmod(0o666)
    with pytest.raises(security.SecurityError, match="allowed client key file must be writable by its owner only"):
        security.allowed_client_keys(clients)


def test_a_run_refused_for_its_keys_leaves_no_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = {"pipeline": {"run_dir": str(run_dir), "endpoints": {"frames": "tcp://127.0.0.1:0"}},
              "security": {"curve": "required"}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    clip = str(DATA / "video" / "short_hamilton_clip.mp4")
    result = facestream("--config", str(tmp_path / "config.yaml"), "run", "--source", clip, "--gallery", "g.db")
    assert result.returncode == 2 and "server_secret_key" in result.stderr, result.stderr
    assert not run_dir.exists()


def test_eval_pairs_writes_no_file_it_was_not_asked_for(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "lfw"
    for person, index, name in (("Barack_Obama", 1, "obama-480p.jpg"), ("Barack_Obama", 2, "obama-240p.jpg"),
                                ("Joe_Biden", 1, "biden.jpg")):  # fmt: skip
        (root / person).mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "fr_examples" / name, root / person / f"{person}_{index:04d}.jpg")
    (root / "pairs.txt").write_text("1\t1\nBarack_Obama\t1\t2\nBarack_Obama\t1\tJoe_Biden\t1\n")
    work = tmp_path / "work"
    work.mkdir()
    result = facestream(
        "eval", "pairs", "--pairs", str(root / "pairs.txt"), "--root", str(root), "--no-cache", cwd=work
    )
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []


def test_commands_print_no_library_noise(tmp_path: Path) -> None:
    """faiss's CPU-build lines are not worth four lines on every command (shown with -vv)."""
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_samples("Alice", np.random.default_rng(0).normal(0, 0.1, (1, 128)).astype(np.float32))
    result = facestream("identify", str(DATA / "fr_examples" / "obama-240p.jpg"), "--gallery", str(tmp_path / "g.db"))
    assert result.returncode == 0, result.stderr
    assert "faiss.loader" not in result.stderr, result.stderr
    assert "face 0" in result.stdout


def test_unknowns_add_images_names_each_photo_applies_the_quality_gate_and_keeps_chips(tmp_path: Path) -> None:
    import cv2

    sharp = tmp_path / "sharp.jpg"
    blurred = tmp_path / "blurred.jpg"
    image = cv2.imread(str(DATA / "fr_examples" / "obama-480p.jpg"))
    cv2.imwrite(str(sharp), image)
    cv2.imwrite(str(blurred), cv2.GaussianBlur(image, (0, 0), 6))
    path = tmp_path / "party.jsonl"
    result = facestream("unknowns", str(path), "--add-images", str(sharp), str(blurred), "--gallery",
                        str(tmp_path / "none.db"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_photo = {r["stream_id"]: r["faces"][0] for r in records}
    assert set(by_photo) == {"sharp.jpg", "blurred.jpg"}, by_photo.keys()
    assert by_photo["sharp.jpg"]["weight"] > 0 and by_photo["blurred.jpg"]["weight"] == 0  # below the gate
    for face in by_photo.values():
        chip = Path(face["chip"])
        assert chip.parent == tmp_path / "party.jsonl.chips" and chip.stat().st_mode & 0o777 == 0o600
        assert cv2.imread(str(chip)).shape == (150, 150, 3)
    assert "below the quality gate" in result.stderr
