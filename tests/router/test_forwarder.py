"""Forwarding without a network (httpx.MockTransport as the replicas): what is retried, what is passed on,
what a stream looks like when its replica fails, and what the router counts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi.responses import Response

from lmserve.router.config import ReplicaGroupConfig, RouterConfig
from lmserve.router.gateway import Gateway
from lmserve.router.request import parse_request

A, B = "http://a:8000", "http://b:8000"
ANSWER = {"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}
EVENTS = [b'data: {"choices":[{"text":"o"}],"usage":null}\n\n', b'data: {"choices":[{"text":"k"}],"usage":null}\n\n',
          b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}\n\n',
          b"data: [DONE]\n\n"]
Reply = Callable[[httpx.Request], httpx.Response]


class Events(httpx.AsyncByteStream):
    """A server-sent event stream that may break after its events."""

    def __init__(self, events: list[bytes], breaks: bool = False) -> None:
        self.events = events
        self.breaks = breaks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event
        if self.breaks:
            raise httpx.ReadError("connection reset by peer")


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=ANSWER, headers={"x-request-id": request.headers["x-request-id"]})


def stream(events: list[bytes], breaks: bool = False) -> Reply:
    return lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Events(events, breaks))


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def status(code: int) -> Reply:
    return lambda _: httpx.Response(code, json={"error": {"message": f"status {code}"}})


def run(replies: dict[str, Reply], body: dict, **options) -> tuple[Response, bytes, Gateway]:
    """Send one request through a gateway over replicas A and B (tried in that order), then read its answer."""
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if request.url.path == "/health":
            return httpx.Response(200)
        sent.append(url)
        return replies[url](request)

    async def story() -> tuple[Response, bytes, Gateway]:
        group = ReplicaGroupConfig("m", [A, B], policy="round_robin")
        config = RouterConfig(groups=[group], health_interval=60, **options)
        gateway = Gateway(config, transport=httpx.MockTransport(handle))
        await gateway.start()
        try:
            raw = json.dumps({"model": "m", "prompt": "hi", **body}).encode()
            response = await gateway.handle(parse_request("POST", "/v1/completions", raw, {}))
            content = response.body if not hasattr(response, "body_iterator") else b"".join(
                [chunk async for chunk in response.body_iterator])
            return response, content, gateway
        finally:
            await gateway.stop()

    response, content, gateway = asyncio.run(story())
    gateway.sent = sent
    return response, content, gateway


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    return gateway.metrics.registry.get_sample_value("lmserve_router:" + name, labels) or 0.0


def test_an_answer_passes_on_with_the_model_and_backend_headers_and_its_tokens_count() -> None:
    response, content, gateway = run({A: answer, B: answer}, {})
    assert response.status_code == 200 and json.loads(content) == ANSWER
    assert response.headers["x-lmserve-model"] == "m" and response.headers["x-lmserve-backend"] == A
    assert "x-request-id" in response.headers
    assert metric(gateway, "prompt_tokens_total", model="m") == 4
    assert metric(gateway, "generation_tokens_total", model="m") == 2
    assert metric(gateway, "backend_requests_total", model="m", backend=A, status="200") == 1
    assert metric(gateway, "backend_outstanding_requests", model="m", backend=A) == 0


def test_a_5xx_before_the_answer_is_retried_on_another_replica() -> None:
    response, content, gateway = run({A: status(500), B: answer}, {})
    assert response.status_code == 200 and response.headers["x-lmserve-backend"] == B
    assert gateway.sent == [A, B]
    assert metric(gateway, "backend_retries_total", model="m", backend=A) == 1
    assert metric(gateway, "backend_errors_total", model="m", backend=A, kind="status") == 1
    assert metric(gateway, "backend_healthy", model="m", backend=A) == 1  # a 500 is the request's, not the replica's


def test_retries_wait_a_doubling_backoff_when_configured() -> None:
    # As behind a Ray Serve deployment: one backend whose failed member answers 5xx until it is dropped.
    failures = iter([status(500), status(500)])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(failures, answer)(request)

    started = time.monotonic()
    response, _, gateway = run({A: flaky, B: flaky}, {}, max_retries=2, retry_backoff=0.1)
    assert response.status_code == 200 and len(gateway.sent) == 3
    assert time.monotonic() - started >= 0.1 + 0.2


def test_an_unreachable_or_draining_replica_is_ejected_and_the_request_retried() -> None:
    for failure in (unreachable, status(503)):
        response, _, gateway = run({A: failure, B: answer}, {})
        assert response.status_code == 200 and gateway.sent == [A, B]
        assert metric(gateway, "backend_healthy", model="m", backend=A) == 0
        assert metric(gateway, "backend_ejections_total", model="m", backend=A) == 1


def test_a_pool_backend_stays_in_service_after_a_failure() -> None:
    response, _, gateway = run({A: status(503), B: answer}, {}, eject_on_failure=False)
    assert response.status_code == 200 and gateway.sent == [A, B]
    assert metric(gateway, "backend_healthy", model="m", backend=A) == 1
    assert metric(gateway, "backend_ejections_total", model="m", backend=A) == 0


def test_when_every_replica_fails_the_last_5xx_passes_on_or_502_says_none_answered() -> None:
    response, content, gateway = run({A: status(500), B: status(502)}, {}, max_retries=3)
    assert len(gateway.sent) == 4 and gateway.sent[:2] == [A, B]
    last = {A: 500, B: 502}[gateway.sent[-1]]
    assert response.status_code == last and json.loads(content) == {"error": {"message": f"status {last}"}}
    response, content, gateway = run({A: unreachable, B: unreachable}, {})
    assert response.status_code == 502 and "no replica of model 'm' answered" in json.loads(content)["error"]["message"]
    assert gateway.sent == [A, B]  # both ejected: no replica left to retry on, and none to wait for


def test_a_client_error_passes_on_without_a_retry() -> None:
    response, _, gateway = run({A: status(400), B: answer}, {})
    assert response.status_code == 400 and gateway.sent == [A]


def test_a_stream_passes_on_event_by_event_without_the_usage_chunk_the_router_asked_for() -> None:
    seen: dict = {}

    def replica(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        return stream(EVENTS)(request)

    response, content, gateway = run({A: replica, B: answer}, {"stream": True})
    assert seen["stream_options"] == {"include_usage": True}
    assert content == b'data: {"choices":[{"text":"o"}]}\n\ndata: {"choices":[{"text":"k"}]}\n\ndata: [DONE]\n\n'
    assert metric(gateway, "generation_tokens_total", model="m") == 2
    assert metric(gateway, "backend_outstanding_requests", model="m", backend=A) == 0

    response, content, gateway = run({A: stream(EVENTS), B: answer},
                                     {"stream": True, "stream_options": {"include_usage": True}})
    assert content == b"".join(EVENTS)


def test_a_stream_cut_before_its_first_event_is_retried() -> None:
    response, content, gateway = run({A: stream([], breaks=True), B: stream(EVENTS)}, {"stream": True})
    assert gateway.sent == [A, B] and response.headers["x-lmserve-backend"] == B
    assert content.endswith(b"data: [DONE]\n\n")


def test_a_stream_cut_after_its_first_event_ends_with_an_error_event_and_is_never_repeated() -> None:
    response, content, gateway = run({A: stream(EVENTS[:1], breaks=True), B: stream(EVENTS)}, {"stream": True})
    *events, done = [line.removeprefix(b"data: ") for line in content.split(b"\n\n") if line]
    events = [json.loads(event) for event in events]
    assert events[0] == {"choices": [{"text": "o"}]}
    assert events[1]["error"]["code"] == 502 and "mid-stream" in events[1]["error"]["message"]
    assert len(events) == 2 and done == b"[DONE]" and gateway.sent == [A]
    assert metric(gateway, "backend_requests_total", model="m", backend=A, status="broken") == 1
    assert metric(gateway, "backend_healthy", model="m", backend=A) == 0
