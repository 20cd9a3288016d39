"""The frontend's sockets to the engine core: ready only once the core can receive."""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from lmserve.config import EngineConfig
from lmserve.engine.core_client import EngineCoreClient
from lmserve.errors import EngineDeadError


@pytest.fixture
def client(text_model_dir, monkeypatch):
    client = EngineCoreClient(EngineConfig.from_options(str(text_model_dir), dtype="float32"))
    monkeypatch.setattr(client.process, "is_alive", lambda: True)  # stands in for a core that is starting
    yield client
    monkeypatch.undo()
    client.shutdown()  # no process: closes the sockets and ends their contexts (left to the GC, that hangs)


def test_a_send_before_the_core_has_connected_would_be_taken_for_a_dead_core(client):
    with pytest.raises(EngineDeadError, match="not receiving"):
        client.abort_requests(["r"])


def test_start_waits_until_the_core_is_connected_to_its_input(client):
    # The core sends READY as it starts connecting; the connection itself comes a little later.
    core_context = zmq.Context()
    core_input = core_context.socket(zmq.PULL)
    connect_later = threading.Timer(0.2, core_input.connect, args=(client.input_address,))
    connect_later.start()
    try:
        asyncio.run(client._until_input_connected(timeout=10))
        client.abort_requests(["r"])  # no EngineDeadError: the core is receiving
        assert core_input.poll(5000)
    finally:
        connect_later.cancel()
        core_input.close(linger=0)
        core_context.term()


def test_a_core_that_never_connects_is_dead(client):
    with pytest.raises(EngineDeadError, match="did not connect"):
        asyncio.run(client._until_input_connected(timeout=0.1))
