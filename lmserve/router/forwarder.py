"""Sending a request to a replica and its answer back to the client, with retries on other replicas.

A request is retried only while the client has received nothing: when the replica cannot be reached,
cuts the connection, or answers 5xx (503: draining or engine dead) before its answer starts. A stream
is answered only once the replica's first event has arrived, so a replica failing before that is retried
too; once an event went out, a failure ends the stream with an error event, never a second answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import anyio
import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lmserve.router.backend import Backend
from lmserve.router.metrics import RouterMetrics
from lmserve.router.queue import DispatchQueue
from lmserve.router.replica_group import ReplicaGroup
from lmserve.router.request import HOP_BY_HOP_HEADERS, ProxyRequest
from lmserve.router.sse import DONE_EVENT, EventRelay
from lmserve.server.errors import ServerError, error_body

logger = logging.getLogger("lmserve.router")

MODEL_HEADER = "X-Lmserve-Model"
BACKEND_HEADER = "X-Lmserve-Backend"
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP_HEADERS | {"content-encoding", "date", "server"}


@dataclass
class _Failure:
    """Why an attempt failed before the client got anything: a replica's 5xx answer, or no answer."""

    backend: Backend
    response: Response | None = None  # the replica's 5xx answer, passed on if no replica does better
    error: str = ""


class Forwarder:
    """Forwards requests to a model's replicas over one shared HTTP client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        queue: DispatchQueue,
        metrics: RouterMetrics,
        max_retries: int,
        eject: Callable[[Backend], None],
        on_usage: Callable[[ProxyRequest, str, object], None] | None = None,
        retry_backoff: float = 0.0,
    ) -> None:
        self.client = client
        self.queue = queue
        self.retry_backoff = retry_backoff
        self.metrics = metrics
        self.max_retries = max_retries
        self.eject = eject
        self.on_usage = on_usage  # also told of each answer's usage (request, model, usage): the cost metrics

    async def forward(self, request: ProxyRequest, group: ReplicaGroup) -> Response:
        """The answer of the first replica that answers, after up to max_retries failed attempts.

        Raises the queue's refusals (429/503) and, when no replica answered, a 502 ServerError.
        """
        key = group.key_of(request.body)
        tried: set[str] = set()
        failure = None
        for attempt in range(self.max_retries + 1):
            if attempt > 0 and not group.has_healthy_backend:
                break  # its failures ejected every replica: waiting for one to come back would only delay the 502
            if attempt > 0 and self.retry_backoff > 0:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
            backend = await self.queue.acquire(group, key, request.priority, tried, retry=attempt > 0)
            result = await self._attempt(request, group, backend)
            if isinstance(result, Response):
                return result
            failure = result
            tried.add(backend.url)
            logger.warning("request %s failed on %s: %s", request.request_id, backend.url, failure.error)
            if attempt < self.max_retries and group.has_healthy_backend:
                self.metrics.backend_retries.labels(group.name, backend.url).inc()
        if failure.response is not None:
            return failure.response
        raise ServerError(HTTPStatus.BAD_GATEWAY, f"no replica of model {group.name!r} answered: {failure.error}")

    async def _attempt(self, request: ProxyRequest, group: ReplicaGroup, backend: Backend) -> Response | _Failure:
        """One try on one replica, whose slot the attempt owns: released here, or by the stream it returns."""
        exchange = _Exchange(self, backend, group.served_name(request.body.get("model")), request)
        upstream_request = self.client.build_request(
            request.method, backend.url + request.path, content=request.upstream_body(), headers=request.headers
        )
        try:
            exchange.upstream = await self.client.send(upstream_request, stream=True)
            if exchange.upstream.status_code >= 500:
                return await exchange.failed_with_status()
            if request.stream and exchange.upstream.headers.get("content-type", "").startswith("text/event-stream"):
                return await exchange.stream()
            return await exchange.whole()
        except httpx.HTTPError as error:
            return await exchange.failed(error)
        except BaseException:  # cancelled: the client left before its answer started
            await exchange.finish("0")
            raise


class _Exchange:
    """One attempt's state: the replica, its slot, its answer, and the bookkeeping when it ends."""

    def __init__(self, forwarder: Forwarder, backend: Backend, served_model: str, request: ProxyRequest) -> None:
        self.forwarder = forwarder
        self.metrics = forwarder.metrics
        self.backend = backend
        self.served_model = served_model  # for the response's header; metrics take the group's name
        self.request = request
        self.upstream: httpx.Response | None = None
        self.started = time.monotonic()
        self._done = False

    async def whole(self) -> Response:
        """A non-streamed answer: read in full before the client sees anything, so it stays retryable."""
        content = await self.upstream.aread()
        if self.upstream.status_code == HTTPStatus.OK:
            self.observe_usage(_usage_of(content))
        await self.finish(str(self.upstream.status_code))
        return Response(content, self.upstream.status_code, self.response_headers())

    async def stream(self) -> Response:
        """A streamed answer, started once the replica's first event has arrived."""
        relay = EventRelay(strip_usage=not self.request.client_wants_usage)
        chunks = self.upstream.aiter_bytes()
        first = b""
        async for data in chunks:
            if first := relay.feed(data):
                break
        else:  # the replica ended the stream without one whole event
            first = relay.flush()
            if not first:
                raise httpx.RemoteProtocolError("the replica closed the stream before its first event")

        async def events() -> AsyncIterator[bytes]:
            status = "0"  # until the stream ends: the client left
            try:
                yield first
                async for data in chunks:
                    if forwarded := relay.feed(data):
                        yield forwarded
                if rest := relay.flush():
                    yield rest
                status = str(HTTPStatus.OK.value)
            except httpx.HTTPError as error:  # the client has events already: end the stream as lmserve serve does
                status = "broken"
                self._count_error("broken")
                self.forwarder.eject(self.backend)
                logger.warning("a stream from %s broke: %r", self.backend.url, error)
                yield _error_event(f"the replica failed mid-stream: {error!r}") + DONE_EVENT
            finally:
                self.observe_usage(relay.usage)
                await self.finish(status)

        return _ClosingStreamingResponse(
            events(), self.finish, status_code=self.upstream.status_code, headers=self.response_headers()
        )

    def observe_usage(self, usage: object) -> None:
        self.metrics.observe_usage(self.backend.model, usage)
        if self.forwarder.on_usage is not None:
            self.forwarder.on_usage(self.request, self.backend.model, usage)

    async def failed_with_status(self) -> _Failure:
        """A 5xx answer before the first byte: retryable. 503 means draining or a dead engine: eject too."""
        content = await self.upstream.aread()
        status = self.upstream.status_code
        self._count_error("status")
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.forwarder.eject(self.backend)
        await self.finish(str(status))
        response = Response(content, status, self.response_headers())
        return _Failure(self.backend, response, f"status {status}")

    async def failed(self, error: httpx.HTTPError) -> _Failure:
        """No answer. A replica that cannot be reached or drops the connection is ejected and the request
        retried; a slow one (the read timeout passed) gets 504 instead, as a retry would only double its load."""
        await self.finish("error")
        if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
            self._count_error("timeout")
            raise ServerError(HTTPStatus.GATEWAY_TIMEOUT, f"the replica {self.backend.url} timed out") from error
        self._count_error("connect")
        self.forwarder.eject(self.backend)
        return _Failure(self.backend, error=repr(error))

    async def finish(self, status: str) -> None:
        """Close the replica's answer and give its slot back; the first call counts, later ones do nothing."""
        if self._done:
            return
        self._done = True
        labels = (self.backend.model, self.backend.url)
        self.metrics.backend_requests.labels(*labels, status).inc()
        self.metrics.backend_latency.labels(*labels).observe(time.monotonic() - self.started)
        self.forwarder.queue.release(self.backend)
        if self.upstream is not None:
            # Shielded: a client that leaves mid-stream cancels this task, and the replica must still hear
            # that the connection closed, to abort the request.
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()

    def response_headers(self) -> dict[str, str]:
        headers = {
            name: value for name, value in self.upstream.headers.items() if name not in DROPPED_RESPONSE_HEADERS
        }
        headers[MODEL_HEADER] = self.served_model
        headers[BACKEND_HEADER] = self.backend.url
        return headers

    def _count_error(self, kind: str) -> None:
        self.metrics.backend_errors.labels(self.backend.model, self.backend.url, kind).inc()


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends, even if its body never started (the client
    left first), so the replica's slot always comes back."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[str], Awaitable[None]], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close("0")  # status 0, as lmserve serve counts it: the client left


def _usage_of(content: bytes) -> object:
    try:
        return json.loads(content).get("usage")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def _error_event(message: str) -> bytes:
    body = error_body(HTTPStatus.BAD_GATEWAY, message)
    return b"data: " + json.dumps(body).encode() + b"\n\n"
