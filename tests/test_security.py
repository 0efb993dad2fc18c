"""CURVE-secured tcp:// links, key files, owner-only ipc sockets: real ZeroMQ sockets and a real pipeline run."""

from __future__ import annotations

import json
import logging
import re
import socket as pysocket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zmq

from facestream.engines.face_batch import FaceBatch
from facestream.pipeline.config import load_config
from facestream.pipeline.runtime import messages, security
from facestream.pipeline.runtime.messages import DescriptorsMessage
from facestream.pipeline.runtime.stages import ENDPOINTS, PipelineError, open_socket

from conftest import wait_until

DATA = Path(__file__).parent / "data"
CLIP = DATA / "video" / "short_hamilton_clip.mp4"
FACESTREAM = [sys.executable, "-m", "facestream.pipeline.cli.main"]

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE support")


def free_port() -> int:
    with pysocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """server, an allowed worker (its public key in clients/) and an intruder with a key nobody allowed."""
    (tmp_path / "clients").mkdir()
    made = {}
    for name in ("server", "worker", "intruder"):
        public, secret = security.create_key_pair(tmp_path, name)
        made[name], made[f"{name}_secret"] = public, secret
    (tmp_path / "clients" / "worker.key").write_bytes(made["worker"].read_bytes())
    made["clients"] = tmp_path / "clients"
    return made


@pytest.fixture()
def restore_security() -> Iterator[None]:
    yield
    security.configure(security.Security())


def settings(keys: dict[str, Path], **extra: str) -> dict:
    config = load_config(None)
    for key, value in extra.items():
        config.set(f"security.{key}", value)
    return config


# ------------------------------------------------------------------------------------------------
# key files


def test_key_files_are_zmq_certificates_and_the_secret_one_is_owner_only(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(keys["server_secret"].stat().st_mode) == 0o600
    assert stat.S_IMODE(keys["server"].stat().st_mode) & 0o077 == 0o044  # public: readable, not writable by others
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys["server_secret"])
    assert (public, secret) == security.load_key_file(keys["server_secret"], secret=True)
    assert zmq.auth.load_certificate(keys["server"])[1] is None
    assert len(public) == 40 and len(zmq.utils.z85.decode(public)) == 32
    with pytest.raises(security.SecurityError, match="never overwritten"):
        security.create_key_pair(keys["server"].parent, "server")


def test_bad_key_files_are_clear_errors(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(security.SecurityError, match=r"give the \.key_secret file"):
        security.load_key_file(keys["server"], secret=True)
    loose = tmp_path / "loose.key_secret"
    loose.write_bytes(keys["server_secret"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(security.SecurityError, match="must be private"):
        security.load_key_file(loose, secret=True)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\x00\xff not a certificate")
    with pytest.raises(security.SecurityError, match=r"garbage\.key"):
        security.load_key_file(garbage, secret=False)
    with pytest.raises(security.SecurityError, match="not found"):
        security.load_key_file(tmp_path / "missing.key", secret=False)


def test_curve_is_on_for_tcp_and_needs_keys(keys: dict[str, Path]) -> None:
    ipc = {name: f"ipc:///tmp/x/{name}" for name in ENDPOINTS}
    tcp = {**ipc, "frames": "tcp://127.0.0.1:5555"}
    config = load_config(None)
    assert not security.load_security(config, ipc, binds=True).curve
    with pytest.raises(security.SecurityError, match="server_secret_key"):
        security.load_security(config, tcp, binds=True)
    with pytest.raises(security.SecurityError, match="server_public_key"):
        security.load_security(config, tcp, binds=False)
    config.security.curve = "disabled"
    assert not security.load_security(config, tcp, binds=True).curve
    config.security.curve = "auto"
    config.security.server_secret_key = str(keys["server_secret"])
    config.security.allowed_clients_dir = str(keys["clients"])
    server = security.load_security(config, tcp, binds=True)
    assert server.curve and server.allowed == {
        security.load_key_file(keys["server"], secret=False)[0],
        security.load_key_file(keys["worker"], secret=False)[0],
    }


def test_facestream_keys_command(tmp_path: Path) -> None:
    result = subprocess.run([*FACESTREAM, "keys", "create", "node", "--dir", str(tmp_path), "--json"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert stat.S_IMODE(Path(made["secret_key_file"]).stat().st_mode) == 0o600
    shown = subprocess.run([*FACESTREAM, "keys", "show", made["public_key_file"]], capture_output=True, text=True)
    assert shown.stdout.strip() == made["public_key"]
    again = subprocess.run(
        [*FACESTREAM, "keys", "create", "node", "--dir", str(tmp_path)], capture_output=True, text=True
    )
    assert again.returncode == 2 and "never overwritten" in again.stderr


# ------------------------------------------------------------------------------------------------
# sockets


def client_context_socket(context: zmq.Context, kind: int, endpoint: str, keys: dict[str, Path] | None,
                          who: str = "worker") -> zmq.Socket:  # fmt: skip
    """A peer on 'another machine': a plain socket, CURVE with `who`'s key when keys are given."""
    peer = context.socket(kind)
    peer.linger = 0
    if keys is not None:
        public, secret = security.load_key_file(keys[f"{who}_secret"], secret=True)
        peer.curve_serverkey = security.load_key_file(keys["server"], secret=False)[0]
        peer.curve_publickey, peer.curve_secretkey = public, secret
    if kind == zmq.SUB:
        peer.setsockopt(zmq.SUBSCRIBE, b"")
    peer.connect(endpoint)
    return peer


def test_only_allowed_peers_can_push_or_subscribe_and_refusals_are_logged(
    keys: dict[str, Path], restore_security: None, caplog: pytest.LogCaptureFixture
) -> None:
    tcp = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("descriptors", "events")}
    config = settings(keys, server_secret_key=str(keys["server_secret"]), allowed_clients_dir=str(keys["clients"]))
    security.configure(security.load_security(config, tcp, binds=True))
    server_context, peers = zmq.Context(), zmq.Context()
    caplog.set_level(logging.WARNING, logger="facestream.pipeline.runtime.security")
    try:
        inbox = open_socket(server_context, zmq.PULL, tcp["descriptors"], bind=True)
        events = open_socket(server_context, zmq.PUB, tcp["events"], bind=True)
        plain = client_context_socket(peers, zmq.PUSH, tcp["descriptors"], None)
        intruder = client_context_socket(peers, zmq.PUSH, tcp["descriptors"], keys, "intruder")
        worker = client_context_socket(peers, zmq.PUSH, tcp["descriptors"], keys, "worker")
        readers = {who: client_context_socket(peers, zmq.SUB, tcp["events"], None if who == "plain" else keys, who)
                   for who in ("plain", "intruder", "worker")}  # fmt: skip
        for sender, text in ((plain, b"plain"), (intruder, b"intruder"), (worker, b"worker")):
            sender.send(text, zmq.NOBLOCK) if sender is worker else _try_send(sender, text)
        received = []
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)

        def drain_inbox() -> list[bytes]:
            while poller.poll(50):
                received.append(inbox.recv())
            return received

        wait_until(drain_inbox, "the allowed worker's message")
        # That nothing else arrives cannot be waited on: the others' handshakes, which fail, are waited on
        # below (both refusals logged), then the inbox is drained once more.
        got: dict[str, list[bytes]] = {who: [] for who in readers}

        def publish_and_read() -> list[bytes]:
            events.send(b'{"event":"track_identified"}')
            for who, reader in readers.items():
                while reader.poll(0):
                    got[who].append(reader.recv())
            return got["worker"]

        wait_until(publish_and_read, "the allowed subscriber's event")
        for who, reader in readers.items():
            while reader.poll(0):
                got[who].append(reader.recv())
        assert got["worker"] and not got["plain"] and not got["intruder"]
        intruder_key = security.load_key_file(keys["intruder"], secret=False)[0].decode()
        wait_until(lambda: any(intruder_key in r.getMessage() and "refused" in r.getMessage() for r in caplog.records),
                   "the intruder's key refused and logged")  # fmt: skip

        def handshakes() -> list[str]:
            found = [r.getMessage() for r in caplog.records if "its handshake failed" in r.getMessage()]
            both = any(tcp["descriptors"] in m for m in found) and any(tcp["events"] in m for m in found)
            return found if both else []

        # Plain peers (no CURVE) fail the handshake before any key check: logged from the socket's monitor.
        failed = wait_until(handshakes, "the plain peers' failed handshakes logged on both endpoints")
        wait_until(lambda: security.refused(server_context) >= 4, "four refusals counted")
        drain_inbox()
        assert received == [b"worker"]
        # Each names its real reason: the protocol error, or the errno when the plain peer, which sees the
        # mismatch too, hung up first (either may come first, or EPIPE alone).
        reasons = [re.search(r"handshake failed \((\w+):", m).group(1) for m in failed]
        assert reasons and set(reasons) <= {"MECHANISM_MISMATCH", "EPIPE", "ECONNRESET"}, failed
        assert security.refused(server_context) >= 4  # intruder's PUSH and SUB by key, plain PUSH and SUB
    finally:
        security.stop(server_context)
        server_context.destroy(0)
        peers.destroy(0)


def _try_send(sender: zmq.Socket, data: bytes) -> None:
    try:
        sender.send(data, zmq.NOBLOCK)
    except zmq.Again:  # no authenticated peer to queue for: that is the point
        pass


def test_ipc_socket_files_are_owner_only(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    context = zmq.Context()
    try:
        bound = open_socket(context, zmq.PULL, f"ipc://{run_dir}/frames", bind=True)
        assert stat.S_IMODE((run_dir / "frames").stat().st_mode) == 0o600
        bound.close()
    finally:
        context.destroy(0)
        for path in run_dir.iterdir():
            path.unlink()
        run_dir.rmdir()


def test_binding_tcp_without_a_server_key_is_a_pipeline_error(restore_security: None) -> None:
    security.configure(security.Security(curve=True))
    context = zmq.Context()
    try:
        with pytest.raises(PipelineError, match="server_secret_key"):
            open_socket(context, zmq.PULL, f"tcp://127.0.0.1:{free_port()}", bind=True)
    finally:
        context.destroy(0)


# ------------------------------------------------------------------------------------------------
# a whole CURVE-secured pipeline


def test_an_unauthenticated_peer_cannot_feed_or_read_a_curve_pipeline(keys: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    capture = cv2.VideoCapture(str(CLIP))
    for index in range(6):
        cv2.imwrite(str(folder / f"f{index}.png"), capture.read()[1])
    capture.release()
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in ENDPOINTS}
    config = {
        "detector": {"upsample": 0},
        "pipeline": {"endpoints": endpoints, "worker_threads": 1, "report_interval_s": 2.0},
        "security": {"server_secret_key": str(keys["server_secret"]), "allowed_clients_dir": str(keys["clients"])},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    stolen: dict[str, list] = {"frames": [], "events": []}
    stop = threading.Event()

    def intruder(curve_key: str | None) -> None:
        """A PULL on frames (would steal frames), a SUB on events, and injected results into the sink."""
        context = zmq.Context()
        who = keys if curve_key else None
        try:
            thief = client_context_socket(context, zmq.PULL, endpoints["frames"], who, curve_key or "worker")
            reader = client_context_socket(context, zmq.SUB, endpoints["events"], who, curve_key or "worker")
            pusher = client_context_socket(context, zmq.PUSH, endpoints["descriptors"], who, curve_key or "worker")
            fake = DescriptorsMessage("frames", 0, 0.0, 640, 360, FaceBatch(
                np.array([[1, 1, 90, 90]]), np.ones(1), np.zeros((1, 5, 2), np.int64),
                descriptors=np.zeros((1, 128), np.float32), quality=np.zeros((1, 3), np.float32)))  # fmt: skip
            while not stop.is_set():
                _try_send(pusher, b"")  # an empty frame: malformed if it ever arrived
                try:
                    pusher.send_multipart(messages.encode(fake), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                for socket, bucket in ((thief, "frames"), (reader, "events")):
                    while socket.poll(0):
                        stolen[bucket].append(socket.recv_multipart())
                time.sleep(0.05)
        finally:
            context.destroy(0)

    threads = [threading.Thread(target=intruder, args=(who,), daemon=True) for who in (None, "intruder")]
    for thread in threads:
        thread.start()
    try:
        result = subprocess.run([*FACESTREAM, "--config", str(config_path), "run", "--source", str(folder),
                                 "--events", "events.jsonl", "--detections", "detections.jsonl", "--stats",
                                 "stats.json"], cwd=tmp_path, capture_output=True, text=True, timeout=180)  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert result.returncode == 0, result.stderr
    detections = [json.loads(line) for line in (tmp_path / "detections.jsonl").read_text().splitlines()]
    assert [d["frame_index"] for d in detections] == list(range(6))  # nothing stolen, nothing injected
    assert stolen == {"frames": [], "events": []}
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stages"]["sink"]["counters"].get("malformed", 0) == 0
    intruder_key = security.load_key_file(keys["intruder"], secret=False)[0].decode()
    assert f"refused a CURVE peer with a public key that is not allowed: {intruder_key}" in result.stderr


def test_no_pickle_eval_or_shell_on_anything_from_outside() -> None:
    """A static check of the package source: no unpickling, no eval/exec, no shell, no unsafe YAML; numpy
    archives are read with allow_pickle=False."""
    import re

    root = Path(__file__).resolve().parent.parent
    forbidden = re.compile(
        r"\bimport pickle\b|\bpickle\.loads?\(|\bcloudpickle\b|\bmarshal\.loads?\(|(?<![\w.])eval\(|(?<![\w.])exec\("
        r"|shell\s*=\s*True|\bos\.system\(|\bos\.popen\(|\byaml\.load\(|\byaml\.unsafe_load\(|allow_pickle\s*=\s*True"
        r"|\.recv_pyobj\(|\.send_pyobj\("
    )
    sources = [p for folder in ("engines", "enroll", "pipeline", "facestream") for p in (root / folder).rglob("*.py")]
    assert len(sources) > 20
    offenders = [f"{p.relative_to(root)}:{n}: {line.strip()}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]  # fmt: skip
    assert offenders == []
    loads = [line for p in sources for line in p.read_text().splitlines() if "np.load(" in line]
    assert loads and all("allow_pickle=False" in line for line in loads)


def test_a_failed_handshake_is_logged_with_its_real_reason() -> None:
    protocol, no_detail = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    assert security.handshake_failure_detail(protocol, mismatch) == "MECHANISM_MISMATCH"
    assert security.handshake_failure_detail(no_detail, 32) == "EPIPE"  # pyzmq would call this errno "ACCEPTED"
    assert security.handshake_failure_detail(no_detail, 104) == "ECONNRESET"
    assert security.handshake_failure_detail(protocol, 0x7FFFFFFF) == "0x7fffffff"
