"""The router's parts wired together: replica groups, the queue, the forwarder, the cascade, health checks and
metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus

import httpx
from fastapi.responses import Response

from lmserve.errors import LmserveError
from lmserve.router.backend import Backend
from lmserve.router.cascade import Cascade
from lmserve.router.config import RouterConfig
from lmserve.router.cost import CostMeter
from lmserve.router.forwarder import Forwarder
from lmserve.router.health import HealthChecker
from lmserve.router.metrics import RouterMetrics
from lmserve.router.queue import DispatchQueue
from lmserve.router.replica_group import ReplicaGroup
from lmserve.router.request import ProxyRequest
from lmserve.router.routing import ModelRouter
from lmserve.server.errors import RETRY_AFTER_SECONDS, error_response
from lmserve.server.logs import log_access, request_id_var

logger = logging.getLogger("lmserve.router")


class Gateway:
    """Lives on `app.state.gateway`. `start` opens the shared HTTP client and starts the health checks
    (inside the server's event loop); `handle` answers one request. `transport` replaces the network
    (tests give an httpx.MockTransport)."""

    def __init__(self, config: RouterConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.transport = transport
        self.metrics = RouterMetrics()
        self.groups = {group.name: group for group in (ReplicaGroup(item, config) for item in config.groups)}
        self.model_router = ModelRouter(list(self.groups), config.routes)
        self.cost = CostMeter(config, self.metrics)
        self.queue = DispatchQueue(config.max_queue_size, config.max_queue_wait, self.metrics)
        for backend in self.backends:
            self.metrics.add_backend(backend)
        self.forwarder: Forwarder | None = None
        self.cascade: Cascade | None = None
        self._health_task: asyncio.Task | None = None

    @property
    def backends(self) -> list[Backend]:
        return [backend for group in self.groups.values() for backend in group.backends]

    async def start(self) -> None:
        capacity = sum(backend.capacity for backend in self.backends)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.request_timeout, connect=self.config.connect_timeout),
            # The queue bounds the requests in flight; keep a connection alive for each of them.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=capacity),
            trust_env=False,  # replicas are reached directly, never through an HTTP proxy from the environment
            transport=self.transport,
        )
        self.forwarder = Forwarder(
            client, self.queue, self.metrics, self.config.max_retries, self.eject, self.cost.observe,
            self.config.retry_backoff,
        )
        self.cascade = Cascade(self.forwarder, self.groups, self.metrics, self.cost)
        checker = HealthChecker(
            self.backends, client, self.config.health_path, self.config.health_interval,
            self.config.health_timeout, self.health_changed,
        )
        self._health_task = asyncio.create_task(checker.run())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.forwarder is not None:
            await self.forwarder.client.aclose()

    async def handle(self, request: ProxyRequest) -> Response:
        """Route, queue and forward a request; count and log its answer."""
        token = request_id_var.set(request.request_id)
        started = time.monotonic()
        try:
            model, response = await self._answer(request)
            self.metrics.model_requests.labels(model, str(response.status_code)).inc()
            log_access(request.method, request.path, response.status_code, time.monotonic() - started)
            return response
        finally:
            request_id_var.reset(token)

    async def _answer(self, request: ProxyRequest) -> tuple[str, Response]:
        """The model group's name ("" when none takes the request) and the answer; the router's refusals
        become OpenAI-style error answers, with Retry-After when waiting may help."""
        model = ""
        try:
            choice = await self.model_router.route(request.body)
            group = self.groups[choice.group]
            model = group.name
            if choice.route is not None and choice.route.cascade is not None:
                return await self.cascade.answer(request, choice.route)
            if choice.route is not None:
                self.metrics.routing_decisions.labels(choice.route.name, choice.decision.label, model).inc()
                logger.debug("route %s: %s -> %s %s", choice.route.name, choice.decision.label, model,
                             choice.decision.reasons)
                request = request.routed_to(model, choice.route.name)
            return model, await self.forwarder.forward(request, group)
        except LmserveError as error:
            response = error_response(error)
            if response.status_code == HTTPStatus.SERVICE_UNAVAILABLE:
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return model, response

    def eject(self, backend: Backend) -> None:
        """A request could not reach the replica: take it out now, not after the next failed checks."""
        if self.config.eject_on_failure and backend.eject():
            self.health_changed(backend)

    def health_changed(self, backend: Backend) -> None:
        self.metrics.observe_health(backend)
        logger.warning("replica %s of %s is %s", backend.url, backend.model, "back" if backend.healthy else "ejected")
        self.queue.dispatch()  # a replica back in frees slots for waiting requests
