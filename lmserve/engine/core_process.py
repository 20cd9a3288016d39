"""The engine core in its own process, so HTTP work, tokenizing and detokenizing never stall the model loop.

The frontend PUSHes `add`/`abort`/`shutdown` messages; the core PUSHes back `ready` (or `error` if it
cannot start) and then one `outputs` message per step. Payloads are msgpack-encoded by msgspec.
"""

from __future__ import annotations

import os
import signal
import traceback

import msgspec
import zmq

from lmserve.config import EngineConfig
from lmserve.engine.core import EngineCore
from lmserve.engine.messages import EngineCoreOutputs, EngineCoreReady, EngineCoreRequest

ADD, ABORT, SHUTDOWN = b"add", b"abort", b"shutdown"
READY, ERROR, OUTPUTS = b"ready", b"error", b"outputs"
_PARENT_CHECK_MS = 1000


def run_engine_core(config: EngineConfig, input_address: str, output_address: str) -> None:
    """Process entry point: load the model, report ready, then serve steps until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    parent = os.getppid()
    context = zmq.Context()
    output_socket = context.socket(zmq.PUSH)
    output_socket.connect(output_address)
    encoder = msgspec.msgpack.Encoder()
    try:
        core = EngineCore(config)
    except Exception:
        output_socket.send_multipart([ERROR, encoder.encode(traceback.format_exc())])
        output_socket.close(linger=2000)
        raise SystemExit(1) from None
    input_socket = context.socket(zmq.PULL)
    input_socket.connect(input_address)
    output_socket.send_multipart([READY, encoder.encode(EngineCoreReady(core.scheduler.kv_cache.pool.num_blocks))])
    EngineCoreLoop(core, input_socket, output_socket, parent).run()
    context.destroy(linger=1000)


class EngineCoreLoop:
    """Takes every pending message, steps while there is work, sleeps on the socket while there is none."""

    def __init__(self, core: EngineCore, input_socket: zmq.Socket, output_socket: zmq.Socket, parent: int) -> None:
        self.core = core
        self.input_socket = input_socket
        self.output_socket = output_socket
        self.parent = parent
        self.encoder = msgspec.msgpack.Encoder()
        self.request_decoder = msgspec.msgpack.Decoder(EngineCoreRequest)
        self.abort_decoder = msgspec.msgpack.Decoder(list[str])

    def run(self) -> None:
        while True:
            if not self.core.has_unfinished_requests():
                # Idle: wait for a message, waking now and then to exit if the server has died.
                while not self.input_socket.poll(_PARENT_CHECK_MS):
                    if os.getppid() != self.parent:
                        return
            changed = False
            while self.input_socket.poll(0):
                kind, payload = self.input_socket.recv_multipart()
                if kind == SHUTDOWN:
                    return
                self._handle(kind, payload)
                changed = True
            if self.core.has_unfinished_requests():
                self._send(self.core.step())
            elif changed:
                self._send([])  # e.g. aborts emptied the engine: the frontend's gauges should see it

    def _handle(self, kind: bytes, payload: bytes) -> None:
        if kind == ADD:
            self.core.add_request(self.request_decoder.decode(payload))
        elif kind == ABORT:
            self.core.abort_requests(self.abort_decoder.decode(payload))
        else:
            raise ValueError(f"unknown engine core message {kind!r}")

    def _send(self, outputs: list) -> None:
        message = EngineCoreOutputs(outputs=outputs, stats=self.core.stats())
        self.output_socket.send_multipart([OUTPUTS, self.encoder.encode(message)])
