"""What every request handler shares: the engine, the server's options, admission control, metrics."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from lmserve.engine.async_engine import AsyncEngine
from lmserve.errors import InvalidRequestError, ModelNotFoundError, ServerOverloadedError
from lmserve.inputs.processor import Prompt
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams
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
            priority = _header_int(http_request, PRIORITY_HEADER) or 0
        timeout = _header_timeout(http_request)
        if timeout is None:
            timeout = self.config.request_timeout
        if self.config.log_requests:
            logger.info("request %s: prompt=%r params=%s", request_id, prompt, params)
        self.in_flight.add(request_id)
        log = _OutputLog(params.output_kind) if self.config.log_requests else None
        try:
            async for output in self.engine.generate(prompt, params, request_id, priority, timeout):
                if log is not None and log.add(output):
                    logger.info("request %s finished: %r", request_id, log.texts())
                yield output
        finally:
            self.in_flight.discard(request_id)


class _OutputLog:
    """Each sample's whole text, also when the request streams deltas; for --log-requests."""

    def __init__(self, kind: RequestOutputKind) -> None:
        self.delta = kind == RequestOutputKind.DELTA
        self._texts: dict[int, str] = {}

    def add(self, output: RequestOutput) -> bool:
        """Take an output; True once the request has finished."""
        for sample in output.outputs:
            self._texts[sample.index] = self._texts.get(sample.index, "") * self.delta + sample.text
        return output.finished

    def texts(self) -> list[str]:
        return [self._texts[index] for index in sorted(self._texts)]


def new_request_id(prefix: str) -> str:
    """A unique engine request id; the client's X-Request-Id is only echoed and logged."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _header_int(request: Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not -(2**63) <= number < 2**63:
        raise InvalidRequestError(f"header {name} must be a 64-bit integer, got {value!r}")
    return number


def _header_timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        timeout = float(value)
    except ValueError:
        timeout = math.nan
    if not 0 < timeout < math.inf:
        raise InvalidRequestError(f"header {TIMEOUT_HEADER} must be a positive number of seconds, got {value!r}")
    return timeout


def server_state(request: Request) -> ServerState:
    return request.app.state.lmserve
