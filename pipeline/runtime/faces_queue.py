"""The faces queue: a ZeroMQ streamer thread in the supervisor between the detect workers (``faces_in``) and the
embed workers (``faces_out``), so any number of workers, local or remote, only ever connect."""

from __future__ import annotations

import logging
import threading

import zmq

from ...errors import PipelineError
from .stages import open_socket

log = logging.getLogger(__name__)


class FacesQueue:
    """The ZeroMQ streamer between detect workers (PUSH -> faces_in) and embed workers (faces_out -> PULL)."""

    def __init__(self, context: zmq.Context, endpoints: dict[str, str], hwm: int) -> None:
        self.context, self.endpoints, self.hwm = context, endpoints, hwm
        self.error: str | None = None
        self._bound = threading.Event()
        self._control = f"inproc://faces-queue-{id(self)}"
        self.thread = threading.Thread(target=self._run, name="faces queue", daemon=True)

    def start(self) -> FacesQueue:
        """Start the streamer thread; returns self."""
        self.thread.start()
        self._bound.wait(10)
        if self.error:
            raise PipelineError(self.error)
        return self

    def _run(self) -> None:
        sockets = []
        try:
            frontend = open_socket(self.context, zmq.PULL, self.endpoints["faces_in"], bind=True, hwm=self.hwm)
            sockets.append(frontend)
            backend = open_socket(self.context, zmq.PUSH, self.endpoints["faces_out"], bind=True, hwm=self.hwm)
            sockets.append(backend)
            control = self.context.socket(zmq.PAIR)
            control.bind(self._control)
            sockets.append(control)
        except PipelineError as error:
            self.error = str(error)
            self._bound.set()
            for socket in sockets:
                socket.close(0)
            return
        self._bound.set()
        try:
            self._forward(frontend, backend, control)
        except zmq.ZMQError as error:
            if error.errno != zmq.ETERM:
                log.error("faces queue stopped: %s", error)
        finally:
            for socket in sockets:
                socket.close(0)

    @staticmethod
    def _forward(frontend: zmq.Socket, backend: zmq.Socket, control: zmq.Socket) -> None:
        """Detect workers' messages to embed workers, one at a time, until TERMINATE. Unlike zmq.proxy it
        never blocks in a send: with every embed worker gone or full (back-pressure) it still hears the
        stop, so the thread always ends before the context is destroyed (closing sockets under a running
        thread aborts libzmq)."""
        taking, sending = zmq.Poller(), zmq.Poller()
        taking.register(control, zmq.POLLIN)
        taking.register(frontend, zmq.POLLIN)
        sending.register(control, zmq.POLLIN)
        sending.register(backend, zmq.POLLOUT)
        pending: list | None = None
        while True:
            ready = dict((sending if pending is not None else taking).poll(200))
            if control in ready and control.recv() == b"TERMINATE":
                return
            if pending is None and frontend in ready:
                pending = frontend.recv_multipart(copy=False)
            if pending is not None:
                try:
                    backend.send_multipart(pending, zmq.NOBLOCK, copy=False)
                    pending = None
                except zmq.Again:  # every embed worker is full (or gone): wait for room, hearing the stop
                    pass

    def stop(self) -> None:
        """Stop the streamer thread and close its sockets."""
        if not self.thread.is_alive():
            return
        control = self.context.socket(zmq.PAIR)
        control.connect(self._control)
        control.send(b"TERMINATE")
        control.close(linger=1000)
        self.thread.join(5)
        if self.thread.is_alive():  # never seen; destroying the context under it would abort the process
            log.error("the faces queue thread did not stop")
