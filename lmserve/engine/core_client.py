"""The frontend's handle on the engine core process: start it, send it requests, receive its outputs."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid

import msgspec
import zmq
import zmq.asyncio

from lmserve.config import EngineConfig
from lmserve.engine.core_process import ABORT, ADD, ERROR, OUTPUTS, READY, SHUTDOWN, run_engine_core
from lmserve.engine.messages import EngineCoreOutputs, EngineCoreReady, EngineCoreRequest
from lmserve.errors import EngineDeadError, InvalidRequestError


class EngineCoreClient:
    """Owns the engine core process and the two ZeroMQ sockets to it (IPC, on this machine only).

    Sends are synchronous and never block (PUSH queues them; a dead peer raises EngineDeadError), so
    aborting works from any context, including a `finally` while a request is being cancelled.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        base = os.path.join(tempfile.gettempdir(), f"lmserve-{uuid.uuid4().hex[:12]}")
        self.input_address = f"ipc://{base}-input"
        self.output_address = f"ipc://{base}-output"
        self._sync_context = zmq.Context()
        self._input_socket = self._sync_context.socket(zmq.PUSH)
        self._input_socket.setsockopt(zmq.SNDHWM, 0)  # never refuse for a full queue: only for a dead peer
        self._input_socket.bind(self.input_address)
        self._async_context = zmq.asyncio.Context()
        self._output_socket = self._async_context.socket(zmq.PULL)
        self._output_socket.bind(self.output_address)
        self._encoder = msgspec.msgpack.Encoder()
        self._outputs_decoder = msgspec.msgpack.Decoder(EngineCoreOutputs)
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_engine_core,
            args=(config, self.input_address, self.output_address),
            name="lmserve-engine-core",
            daemon=True,
        )
        self.num_kv_blocks = 0

    async def start(self) -> None:
        """Start the process and wait until it has loaded the model; raise if it fails to."""
        self.process.start()
        while True:
            if await self._output_socket.poll(500):
                kind, payload = await self._output_socket.recv_multipart()
                if kind == READY:
                    self.num_kv_blocks = msgspec.msgpack.decode(payload, type=EngineCoreReady).num_kv_blocks
                    await self._until_input_connected()
                    return
                if kind == ERROR:
                    raise EngineDeadError("the engine core failed to start:\n" + msgspec.msgpack.decode(payload))
            if not self.process.is_alive():
                raise EngineDeadError(f"the engine core process exited with code {self.process.exitcode}")

    async def _until_input_connected(self, timeout: float = 30.0) -> None:
        """Wait until the core's end of the input socket is connected. The core sends READY right after it
        starts connecting, which ZeroMQ finishes in the background; until then a send finds no peer and
        would be taken for a dead core."""
        deadline = time.monotonic() + timeout
        while not self._input_socket.poll(0, zmq.POLLOUT):
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise EngineDeadError("the engine core process did not connect to its input socket")
            await asyncio.sleep(0.005)

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """Send the requests; InvalidRequestError (none sent) if one holds what the wire cannot carry: an int
        beyond 64 bits, a string that is not Unicode."""
        try:
            payloads = [self._encoder.encode(request) for request in requests]
        except (OverflowError, UnicodeEncodeError) as error:
            raise InvalidRequestError(f"the request holds a value the engine cannot take: {error}") from None
        for payload in payloads:
            self._send(ADD, payload)

    def abort_requests(self, request_ids: list[str]) -> None:
        if request_ids:
            self._send(ABORT, self._encoder.encode(request_ids))

    def _send(self, kind: bytes, payload: bytes) -> None:
        """Send without ever blocking the event loop: a PUSH socket blocks only when its peer is gone."""
        try:
            self._input_socket.send_multipart([kind, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            raise EngineDeadError("the engine core process is not receiving") from None

    async def get_outputs(self) -> EngineCoreOutputs:
        kind, payload = await self._output_socket.recv_multipart()
        if kind != OUTPUTS:
            raise EngineDeadError(f"unexpected message {kind!r} from the engine core")
        return self._outputs_decoder.decode(payload)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def watch_death(self, callback) -> None:
        """Call `callback()` on the event loop as soon as the engine core process exits."""
        loop = asyncio.get_running_loop()

        def on_exit() -> None:
            loop.remove_reader(self.process.sentinel)
            callback()

        loop.add_reader(self.process.sentinel, on_exit)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the process to stop, then make sure it has; close the sockets."""
        if self.process.is_alive():
            try:
                self._send(SHUTDOWN, b"")
            except EngineDeadError:
                pass
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self._input_socket.close(linger=0)
        self._output_socket.close(linger=0)
        self._sync_context.term()
        self._async_context.term()
        for address in (self.input_address, self.output_address):
            path = address.removeprefix("ipc://")
            if os.path.exists(path):
                os.unlink(path)
