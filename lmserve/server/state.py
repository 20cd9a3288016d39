"""What every request handler shares: the engine, the server's options, admission control, metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from lmserve.engine.async_engine import AsyncEngine
from lmserve.errors import InvalidRequestError, ModelNotFoundError, ServerOverloadedError
from lmserve.inputs.processor import Prompt
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import SamplingParams
from lmserve.server.config import ServerConfig
from lmserve.server.logs import logger
from lmserve.server.metrics import ServerMetrics

PRIORITY_HEADER = "x-priority"
TIMEOUT_HEADER = "x-request-timeout"


@dataclass
class ServerState:
    """Lives on `app.state.lmserve`; handlers get it with `server_state(request)`."""

    engine: AsyncEngine
    config: ServerConfig
    model_name: str
    metrics: ServerMetrics
    draining: bool = False
    in_flight: set[str] = field(default_factory=set)

    @property
    def capacity(self) -> int:
        """Requests admitted at once: those the engine runs together, plus the bounded waiting queue."""
        return self.engine.config.scheduler.max_num_seqs + self.config.max_waiting_requests

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ModelNotFoundError(f"the model {name!r} does not exist; this server serves {self.model_name!r}")

    async def generate(
        self,
        http_request: Request,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        priority: int | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Admit a request (or raise ServerOverloadedError), then stream its outputs from the engine.

        Nothing runs until the first iteration: handlers take the first output before they answer, so
        a refusal becomes a proper error response. Priority comes from the body field when set, else
        the X-Priority header; the timeout from the X-Request-Timeout header, else --request-timeout.
        """
        if len(self.in_flight) >= self.capacity:
            raise ServerOverloadedError(f"the server is at capacity ({self.capacity} requests in flight); retry later")
        if priority is None:
            priority = _header_number(http_request, PRIORITY_HEADER, int) or 0
        timeout = _header_number(http_request, TIMEOUT_HEADER, float) or self.config.request_timeout
        if self.config.log_requests:
            logger.info("request %s: prompt=%r params=%s", request_id, prompt, params)
        self.in_flight.add(request_id)
        try:
            async for output in self.engine.generate(prompt, params, request_id, priority, timeout):
                if output.finished and self.config.log_requests:
                    logger.info("request %s finished: %r", request_id, [c.text for c in output.outputs])
                yield output
        finally:
            self.in_flight.discard(request_id)


def new_request_id(prefix: str) -> str:
    """A unique engine request id; the client's X-Request-Id is only echoed and logged."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _header_number(request: Request, name: str, kind: type[int] | type[float]) -> int | float | None:
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequestError(f"header {name} must be a number, got {value!r}") from None


def server_state(request: Request) -> ServerState:
    return request.app.state.lmserve
