"""One streamed request against a fake server: what it sends, what it times, and failures as records."""

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from lmserve.bench.client import RequestRecord, Target, request_body, send_request
from lmserve.bench.workload import BenchRequest
from tests.bench.fake_server import CHAT_URL, COMPLETIONS_URL, FakeServer

COMPLETIONS = Target(COMPLETIONS_URL, "completions", "fake-model", fixed_output_len=True)
CHAT = Target(CHAT_URL, "chat", "fake-model", fixed_output_len=False)
Handler = Callable[[httpx.Request], httpx.Response]


def send(handler: Handler, target: Target = COMPLETIONS, request: BenchRequest | None = None) -> RequestRecord:
    """Send one request to an in-process `handler` (a FakeServer's, or a test's own)."""
    async def run() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send_request(client, target, request or BenchRequest(prompt="x", max_tokens=2), index=3,
                                      run_start=time.perf_counter())

    return asyncio.run(run())


def test_bodies_stream_with_usage_and_fix_the_output_length_when_asked():
    request = BenchRequest(prompt="import os", max_tokens=8)
    assert request_body(request, COMPLETIONS) == {
        "model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
        "prompt": "import os", "max_tokens": 8, "ignore_eos": True, "min_tokens": 8,
    }
    chat = request_body(request, CHAT)
    assert chat["messages"] == [{"role": "user", "content": "import os"}]
    assert "ignore_eos" not in chat and "min_tokens" not in chat
    messages = [{"role": "user", "content": "hi"}]
    assert request_body(BenchRequest(messages=messages), CHAT)["messages"] == messages


@pytest.mark.parametrize("target", [COMPLETIONS, CHAT])
def test_a_stream_is_timed_chunk_by_chunk(target: Target):
    server = FakeServer(num_tokens=5, chunk_gap=0.01, prompt_tokens=9)
    record = send(server.handle, target, BenchRequest(prompt="import os", max_tokens=5))
    assert record.success and not record.error and record.index == 3
    assert (record.prompt_tokens, record.output_tokens) == (9, 5)
    assert len(record.itl) == 4  # the chat's role chunk carries no text, so it is no token
    assert record.ttft >= 0.009 and all(gap >= 0.005 for gap in record.itl)  # the fake sleeps 10 ms a chunk
    assert record.e2e_latency >= record.ttft + sum(record.itl) - 1e-6


def test_an_error_status_is_a_failed_record():
    record = send(FakeServer(status=404).handle)
    assert not record.success
    assert record.error.startswith("HTTP 404") and "no such model" in record.error


def test_an_unreachable_server_is_a_failed_record():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    record = send(refuse)
    assert not record.success and record.error == "ConnectError: connection refused"


@pytest.mark.parametrize("events, error", [
    (b'data: {"choices": [{"index": 0, "text": "a"}]}\n\ndata: {"error": {"message": "engine died"}}\n\n',
     "engine died"),
    (b"data: [1, 2]\n\n", "not a JSON object"),
    (b"data: {not json\n\n", "JSONDecodeError"),
    (b"data: [DONE]\n\n", "without any text"),
])
def test_a_broken_stream_is_a_failed_record(events: bytes, error: str):
    record = send(lambda request: httpx.Response(200, content=events))
    assert not record.success and error in record.error
