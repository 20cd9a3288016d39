"""The router's Prometheus metrics (prefix `lmserve_router:`), in a registry of its own.

Per replica (labels `model`, `backend`): requests by status, latency, outstanding requests, errors,
retries, health and ejections. Per model: requests by status, tokens and cost. Per route: its decisions, a
cascade's accepted and escalated answers and their confidence, and the cost it saved (and a cascade wasted).
And the queue's depth.
docs/router.md lists them.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lmserve.router.backend import Backend
from lmserve.server.metrics import REQUEST_SECONDS_BUCKETS

PREFIX = "lmserve_router:"
BACKEND_LABELS = ["model", "backend"]
# A token's logprob is 0 when the model is certain and falls as it hesitates; finer steps where thresholds sit.
MEAN_LOGPROB_BUCKETS = (-5.0, -4.0, -3.0, -2.5, -2.0, -1.75, -1.5, -1.25, -1.0, -0.75, -0.5, -0.25, -0.1, 0.0)


class RouterMetrics:
    """Counters the forwarder, the queue and the health checker update; `render()` gives /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.backend_requests = self._counter(
            "backend_requests", "Requests a replica answered, by HTTP status.", [*BACKEND_LABELS, "status"]
        )
        self.backend_latency = Histogram(
            PREFIX + "backend_request_latency_seconds",
            "Seconds from sending a request to a replica to the end of its answer.",
            BACKEND_LABELS,
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.backend_outstanding = self._gauge("backend_outstanding_requests", "Requests in flight on a replica.")
        self.backend_errors = self._counter(
            "backend_errors",
            "Failed attempts on a replica: connect (unreachable), status (5xx), broken (cut mid-answer).",
            [*BACKEND_LABELS, "kind"],
        )
        self.backend_retries = self._counter(
            "backend_retries", "Requests retried on another replica after failing on this one.", BACKEND_LABELS
        )
        self.backend_healthy = self._gauge("backend_healthy", "1 while a replica takes requests, 0 while ejected.")
        self.backend_ejections = self._counter("backend_ejections", "Times a replica was ejected.", BACKEND_LABELS)
        self.model_requests = self._counter(
            "requests", "Requests the router answered, by model and HTTP status.", ["model", "status"]
        )
        self.prompt_tokens = self._counter("prompt_tokens", "Prompt tokens of answered requests.", ["model"])
        self.generation_tokens = self._counter(
            "generation_tokens", "Generated tokens of answered requests.", ["model"]
        )
        self.routing_decisions = self._counter(
            "routing_decisions",
            "Requests a route sent to a model, by the classifier's label.",
            ["route", "label", "model"],
        )
        self.cascade_decisions = self._counter(
            "cascade_decisions",
            "Answers of a cascade route's simple model: accepted, or escalated to its complex model.",
            ["route", "decision"],
        )
        self.cascade_mean_logprob = Histogram(
            PREFIX + "cascade_mean_logprob",
            "Mean token logprob of a cascade route's simple answers, the value its threshold is compared with.",
            ["route"],
            buckets=MEAN_LOGPROB_BUCKETS,
            registry=self.registry,
        )
        self.cost_dollars = self._counter("cost_dollars", "Dollars answered requests cost, by their usage.", ["model"])
        self.cost_saved_dollars = self._counter(
            "cost_saved_dollars",
            "Dollars a route saved: what its complex model would have cost for the same usage, less what it cost.",
            ["route"],
        )
        self.cost_wasted_dollars = self._counter(
            "cost_wasted_dollars",
            "Dollars a cascade route spent on simple answers it escalated; cost_saved less this is the net saving.",
            ["route"],
        )
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Requests waiting for a replica.", registry=self.registry)

    def add_backend(self, backend: Backend) -> None:
        """Show a replica's series from the start, before its first request."""
        labels = (backend.model, backend.url)
        self.backend_outstanding.labels(*labels).set(0)
        self.backend_healthy.labels(*labels).set(int(backend.healthy))
        self.backend_ejections.labels(*labels)
        self.backend_retries.labels(*labels)

    def observe_health(self, backend: Backend) -> None:
        """A replica's health changed."""
        self.backend_healthy.labels(backend.model, backend.url).set(int(backend.healthy))
        if not backend.healthy:
            self.backend_ejections.labels(backend.model, backend.url).inc()

    def observe_outstanding(self, backend: Backend) -> None:
        self.backend_outstanding.labels(backend.model, backend.url).set(backend.outstanding)

    def observe_usage(self, model: str, usage: object) -> None:
        """Count an OpenAI `usage` object's tokens; anything else (absent, malformed) counts nothing."""
        if not isinstance(usage, dict):
            return
        for key, counter in (("prompt_tokens", self.prompt_tokens), ("completion_tokens", self.generation_tokens)):
            value = usage.get(key)
            if isinstance(value, int) and value >= 0:
                counter.labels(model).inc(value)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _counter(self, name: str, documentation: str, labels: list[str]) -> Counter:
        return Counter(PREFIX + name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(PREFIX + name, documentation, BACKEND_LABELS, registry=self.registry)
