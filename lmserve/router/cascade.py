"""A cascade route: its simple model answers first, and that answer reaches the client only when the model was
confident enough (the mean logprob of its tokens); otherwise the complex model answers the original request.

The simple model is always asked for a whole answer (never a stream) with logprobs, so it is judged before the
client receives a byte. An accepted answer is given back as the client asked for it: without the logprobs it did
not ask for, and written as a stream when it asked for one. An escalated request goes through the forwarder like
any routed request, the complex model's stream passed straight through: the client gets one answer, never two.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response

from lmserve.errors import InvalidRequestError
from lmserve.router.config import RouteConfig
from lmserve.router.cost import CostMeter
from lmserve.router.forwarder import Forwarder
from lmserve.router.metrics import RouterMetrics
from lmserve.router.replica_group import ReplicaGroup
from lmserve.router.request import ProxyRequest
from lmserve.router.sse import answer_as_stream

logger = logging.getLogger("lmserve.router")

CASCADE_HEADER = "X-Lmserve-Cascade"  # "accepted" (the simple model answered) or "escalated"


@dataclass
class CascadeCheck:
    """The verdict on a simple answer: its lowest mean token logprob over its choices (None: nothing to judge)."""

    mean_logprob: float | None
    accepted: bool

    @property
    def decision(self) -> str:
        return "accepted" if self.accepted else "escalated"


def check_answer(answer: object, min_mean_logprob: float) -> CascadeCheck:
    """Accepted when every choice's mean token logprob reaches the threshold. An answer with nothing to judge (not
    an answer, no choices, a choice without tokens or logprobs) is escalated: what was not checked never passes."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    means = [mean_logprob(choice) for choice in choices] if isinstance(choices, list) and choices else [None]
    if None in means:
        return CascadeCheck(None, False)
    lowest = min(means)
    return CascadeCheck(lowest, lowest >= min_mean_logprob)


def mean_logprob(choice: object) -> float | None:
    """The mean logprob of a choice's generated tokens, from the chat API's `logprobs.content[].logprob` or the
    completions API's `logprobs.token_logprobs`; None when there is no token or a logprob is missing."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if isinstance(content, list):
        values = [token.get("logprob") if isinstance(token, dict) else None for token in content]
    else:
        values = logprobs.get("token_logprobs")
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
        return None
    return sum(values) / len(values)


class Cascade:
    """Answers the requests of cascade routes over the gateway's forwarder, replica groups, metrics and cost meter."""

    def __init__(
        self, forwarder: Forwarder, groups: dict[str, ReplicaGroup], metrics: RouterMetrics, cost: CostMeter
    ) -> None:
        self.forwarder = forwarder
        self.groups = groups
        self.metrics = metrics
        self.cost = cost

    async def answer(self, request: ProxyRequest, route: RouteConfig) -> tuple[str, Response]:
        """The name of the model that answered, and its answer, marked accepted or escalated."""
        if request.body.get("echo") is True:  # the check would judge the prompt's tokens along with the answer's
            raise InvalidRequestError(f"echo is not supported by the cascade route {route.name!r}; name a model")
        small, large = self.groups[route.simple], self.groups[route.complex]
        reply = await self.forwarder.forward(_first_try(request, small.name), small)
        answer = _answer_of(reply)
        check = check_answer(answer, route.cascade.min_mean_logprob)
        self._observe(route.name, small.name, answer, check)
        if check.accepted:
            return small.name, _accepted(request, answer, reply)
        response = await self.forwarder.forward(request.routed_to(large.name, route.name), large)
        response.headers[CASCADE_HEADER] = check.decision
        return large.name, response

    def _observe(self, route: str, model: str, answer: dict[str, Any] | None, check: CascadeCheck) -> None:
        self.metrics.cascade_decisions.labels(route, check.decision).inc()
        if check.mean_logprob is not None:
            self.metrics.cascade_mean_logprob.labels(route).observe(check.mean_logprob)
        self.cost.observe_cascade(route, model, (answer or {}).get("usage"), check.accepted)
        logger.debug("cascade %s: %s (mean logprob %s)", route, check.decision, check.mean_logprob)


def _first_try(request: ProxyRequest, model: str) -> ProxyRequest:
    """The simple model's request: a whole answer, with the logprobs the check needs (the chosen tokens' only,
    unless the client asked for more); no route's saving is counted for it until it is judged."""
    body = {name: value for name, value in request.body.items() if name != "stream_options"}
    body.update(model=model, stream=False)
    if not _wants_logprobs(request):
        body["logprobs"] = True if _is_chat(request) else 0
    return request.with_body(body, route=None)


def _accepted(request: ProxyRequest, answer: dict[str, Any], reply: Response) -> Response:
    """The simple answer as the client asked for it: logprobs only if it asked, a stream if it asked."""
    if not _wants_logprobs(request):
        for choice in answer["choices"]:
            choice["logprobs"] = None  # as a replica answers a request without logprobs
    # The reply's length and type describe the body it had; the new body gets its own.
    headers = {name: value for name, value in reply.headers.items() if name not in ("content-length", "content-type")}
    headers[CASCADE_HEADER] = "accepted"
    if request.stream:
        content = answer_as_stream(answer, _is_chat(request), request.client_wants_usage)
        return Response(content, headers={**headers, "cache-control": "no-cache"}, media_type="text/event-stream")
    content = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, headers=headers, media_type="application/json")


def _answer_of(reply: Response) -> dict[str, Any] | None:
    """A replica's successful answer as JSON; None for an error, or a body that is no JSON object."""
    if reply.status_code != 200:
        return None
    try:
        answer = json.loads(reply.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return answer if isinstance(answer, dict) else None


def _is_chat(request: ProxyRequest) -> bool:
    return request.path.endswith("/chat/completions")


def _wants_logprobs(request: ProxyRequest) -> bool:
    """Whether the client asked for logprobs: `logprobs: true` for chat, any `logprobs` count for completions."""
    logprobs = request.body.get("logprobs")
    return logprobs is True if _is_chat(request) else logprobs is not None
