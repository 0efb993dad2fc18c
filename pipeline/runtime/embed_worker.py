"""The embed stage: faces in, batched across frames and streams through the ResNet embedder, descriptors out."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from . import messages
from .messages import DescriptorsMessage, FacesMessage, MessageError
from .stages import StageProcess, model_cache_dir, open_socket, worker_threads

log = logging.getLogger(__name__)


def split_descriptors(batch: list[FacesMessage], descriptors: np.ndarray) -> list[DescriptorsMessage]:
    """The (sum N,128) descriptors of a batch of messages back into one DescriptorsMessage per message."""
    out, start = [], 0
    for faces in batch:
        out.append(DescriptorsMessage.from_faces(faces, descriptors[start : start + len(faces)]))
        start += len(faces)
    return out


class EmbedWorker(StageProcess):
    """PULL faces -> batches across frames and streams (up to embedder.max_batch faces or
    pipeline.embed_max_wait_ms) -> descriptors -> PUSH to the sink."""

    role = "embed"

    def run(self) -> int:
        """Faces in, batched across frames and streams, descriptors out, until stopped."""
        from ...engines.embedder import FaceEmbedder
        from ...engines.models import model_path

        config, threads = self.config, worker_threads(self.config, "embed")
        self.max_batch = max(1, int(config.embedder.max_batch))
        self.max_wait = float(config.pipeline.embed_max_wait_ms) / 1000.0
        embedder = FaceEmbedder.from_file(
            model_path("embedder", config.models.embedder), model_cache_dir(config), threads,
            max_batch=self.max_batch, engine=config.engine,
        )  # fmt: skip
        self.models.append(embedder)
        hwm = int(config.pipeline.faces_hwm)
        self.faces = open_socket(self.context, zmq.PULL, self.endpoints["faces_out"], bind=False, hwm=hwm)
        self.descriptors = open_socket(self.context, zmq.PUSH, self.endpoints["descriptors"], bind=False, hwm=hwm)
        control = self.subscribe_control() if self.spec.get("local") else None
        poller = zmq.Poller()
        poller.register(self.faces, zmq.POLLIN)
        if control is not None:
            poller.register(control, zmq.POLLIN)
        log.info("%s: ready (%d ONNX Runtime threads, batches of up to %d faces)", self.name, threads, self.max_batch)
        self.ready()
        while not self.stopping:
            ready = dict(poller.poll(200))
            if control is not None and control in ready:
                self.handle_control()
            if self.faces in ready and not self.stopping:
                batch = self._collect()
                if batch:
                    self._embed(embedder, batch)
            self.send_stats()
        return 0

    def _receive(self) -> FacesMessage | None:
        try:
            message = messages.recv(self.faces, zmq.NOBLOCK)
        except zmq.Again:
            return None
        except MessageError as error:
            self.malformed(str(error))
            return None
        if not isinstance(message, FacesMessage):
            self.malformed(f"expected faces, got a {type(message).__name__}")
            return None
        self.stats.count("received")
        return message

    def _collect(self) -> list[FacesMessage]:
        """Messages until max_batch faces or max_wait after the first one; frames without faces end a wait early
        only when nothing else is queued (they cost nothing to pass on)."""
        batch: list[FacesMessage] = []
        faces = 0
        deadline = None
        while faces < self.max_batch:
            message = self._receive()
            if message is None:
                if deadline is None:
                    if not batch:
                        return batch
                    if faces == 0:
                        return batch  # only empty frames so far: nothing to wait for
                    deadline = time.monotonic() + self.max_wait
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.faces.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                    break
                continue
            batch.append(message)
            faces += len(message)
        return batch

    def _embed(self, embedder: Any, batch: list[FacesMessage]) -> None:
        # Only the faces the detect worker chose (embed 1); the others' rows stay NaN.
        chosen = np.concatenate([np.asarray(m.faces.embed, bool) for m in batch]) if batch else np.zeros(0, bool)
        faces = int(chosen.sum())
        self.stats.count("not_embedded", int(len(chosen) - faces))
        descriptors = np.full((len(chosen), messages.DESCRIPTOR_SIZE), np.nan, np.float32)
        if faces:
            started = time.perf_counter()
            chips = np.concatenate([m.faces.chips[np.asarray(m.faces.embed, bool)] for m in batch if len(m)])
            descriptors[chosen] = embedder.embed_chips(chips)
            elapsed = time.perf_counter() - started
            self.stats.latency("embed_batch", elapsed)
            self.stats.latency("embed_face", elapsed / faces)
            self.stats.count("batches")
            self.stats.count("faces", faces)
        for message in split_descriptors(batch, descriptors):
            if not self.send_until_stopped(self.descriptors, message):
                return
            self.stats.count("sent")
