"""Prometheus metrics for /metrics: vLLM's metric names under the `lmserve:` prefix, so vLLM dashboards carry over.

`ServerMetrics` is the AsyncEngine's step observer (engine steps and finished requests) and the HTTP
gateway's counter. Each instance keeps its own registry, so several servers can live in one process.
docs/metrics.md lists every metric; docs/grafana/lmserve-dashboard.json charts them.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lmserve.engine.messages import EngineCoreOutput
from lmserve.engine.scheduler_stats import SchedulerStats
from lmserve.outputs import FinishReason, RequestOutput

PREFIX = "lmserve:"
FINISH_REASONS: tuple[FinishReason, ...] = ("stop", "length", "abort")

# fmt: off
# Seconds. First tokens range from a prefix-cache hit on an idle server to a long prompt queued behind a full batch.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
# Seconds between two tokens of one sample: a decode step, unless prefill chunks or a preemption get in the way.
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                       0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
# Seconds a whole request (or one phase of it) takes: up to long generations on a busy server.
REQUEST_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0,
                           60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
TOKEN_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
# fmt: on


class ServerMetrics:
    """The server's Prometheus metrics, all labelled with `model_name`; `render()` gives the /metrics body.

    Per-token metrics (inter-token latency, generation tokens) come from every engine step; per-request
    ones (latencies, prompt tokens, finished requests) from the request's final output, so a request
    aborted before it finished (client gone, timeout) only counts as `finished_reason="abort"`.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        # Child request id -> monotonic time its last token arrived; kept oldest first (see _forget_stale_children).
        self._last_token_time: dict[str, float] = {}

        self.time_to_first_token = self._histogram(
            "time_to_first_token_seconds", "Seconds from a request's arrival to its first token.", TTFT_BUCKETS
        )
        self.inter_token_latency = self._histogram(
            "inter_token_latency_seconds", "Seconds between consecutive tokens of one sample.", INTER_TOKEN_BUCKETS
        )
        self.time_per_output_token = self._histogram(
            "request_time_per_output_token_seconds",
            "A finished request's decode time divided by its output tokens after the first.",
            INTER_TOKEN_BUCKETS,
        )
        self.e2e_latency = self._histogram(
            "e2e_request_latency_seconds", "Seconds from a request's arrival to its end.", REQUEST_SECONDS_BUCKETS
        )
        self.queue_time = self._histogram(
            "request_queue_time_seconds",
            "Seconds a request waited before it was first scheduled.",
            REQUEST_SECONDS_BUCKETS,
        )
        self.prefill_time = self._histogram(
            "request_prefill_time_seconds",
            "Seconds from a request's first scheduling to its first token.",
            REQUEST_SECONDS_BUCKETS,
        )
        self.decode_time = self._histogram(
            "request_decode_time_seconds", "Seconds from a request's first token to its last.", REQUEST_SECONDS_BUCKETS
        )
        self.inference_time = self._histogram(
            "request_inference_time_seconds",
            "Seconds from a request's first scheduling to its end.",
            REQUEST_SECONDS_BUCKETS,
        )
        self.request_prompt_tokens = self._histogram(
            "request_prompt_tokens", "Prompt tokens of each finished request.", TOKEN_COUNT_BUCKETS
        )
        self.request_generation_tokens = self._histogram(
            "request_generation_tokens",
            "Generated tokens of each finished request (all its samples).",
            TOKEN_COUNT_BUCKETS,
        )

        self.prompt_tokens = self._counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = self._counter("generation_tokens", "Tokens the engine generated.")
        # SchedulerStats' running totals, each a counter of the same name that grows by the change per step.
        self.cumulative = {
            "num_preemptions": self._counter("num_preemptions", "Requests preempted to free KV cache blocks."),
            "prefix_cache_queries": self._counter(
                "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
            ),
            "prefix_cache_hits": self._counter("prefix_cache_hits", "Prompt tokens found in the prefix cache."),
        }
        self._last_totals = dict.fromkeys(self.cumulative, 0)
        request_success = Counter(
            PREFIX + "request_success",
            "Finished requests, by why they finished.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        # Made up front, so each reason shows as 0 before its first request rather than missing.
        self.request_success = {reason: request_success.labels(model_name, reason) for reason in FINISH_REASONS}
        self.http_requests = Counter(
            PREFIX + "http_requests",
            "HTTP requests answered, by status (0: client left).",
            ["model_name", "status"],
            registry=self.registry,
        )

        self.num_running = self._gauge("num_requests_running", "Requests in the running batch.")
        self.num_waiting = self._gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_cache_usage = self._gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).")
        self.prefix_cache_hit_rate = self._gauge(
            "prefix_cache_hit_rate", "Prefix cache hits over queries since the start, in tokens (0 to 1)."
        )

    def on_step(self, outputs: list[EngineCoreOutput], stats: SchedulerStats, now: float) -> None:
        """Take one engine step: its new tokens per child request and the scheduler's state after it."""
        for output in outputs:
            self._observe_tokens(output, now)
        self._forget_stale_children(stats.num_running + stats.num_waiting)
        self.num_running.set(stats.num_running)
        self.num_waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage if stats.num_total_blocks else 0.0)
        for name, counter in self.cumulative.items():
            total = getattr(stats, name)
            last = self._last_totals[name]
            counter.inc(total - last if total >= last else total)  # a smaller total means the totals restarted
            self._last_totals[name] = total
        queries = stats.prefix_cache_queries
        self.prefix_cache_hit_rate.set(stats.prefix_cache_hits / queries if queries else 0.0)

    def on_request_finished(self, output: RequestOutput) -> None:
        """Take a request's final output: its finish reason, token counts and phase latencies."""
        self.request_success[_finish_reason(output)].inc()
        metrics = output.metrics
        if metrics is None:
            return
        self.prompt_tokens.inc(metrics.num_prompt_tokens)
        self.request_prompt_tokens.observe(metrics.num_prompt_tokens)
        self.request_generation_tokens.observe(metrics.num_generation_tokens)
        end = metrics.finished_time if metrics.finished_time is not None else metrics.last_token_time
        decode = _span(metrics.first_token_time, metrics.last_token_time)
        spans = [
            (self.e2e_latency, _span(metrics.arrival_time, end)),
            (self.time_to_first_token, _span(metrics.arrival_time, metrics.first_token_time)),
            (self.queue_time, _span(metrics.arrival_time, metrics.first_scheduled_time)),
            (self.prefill_time, _span(metrics.first_scheduled_time, metrics.first_token_time)),
            (self.decode_time, decode),
            (self.inference_time, _span(metrics.first_scheduled_time, end)),
        ]
        for histogram, seconds in spans:
            if seconds is not None:
                histogram.observe(seconds)
        if decode is not None and metrics.num_generation_tokens > 1:
            self.time_per_output_token.observe(decode / (metrics.num_generation_tokens - 1))

    def on_request_aborted(self) -> None:
        """A request ended before it finished (client gone, timeout, engine failure): no latencies to record."""
        self.request_success["abort"].inc()

    def observe_http(self, status: int) -> None:
        """Count one answered HTTP request; status 0 (the client left before a response started) counts as "0"."""
        self.http_requests.labels(self.model_name, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _observe_tokens(self, output: EngineCoreOutput, now: float) -> None:
        count = len(output.new_token_ids)
        if count:
            self.generation_tokens.inc(count)
            last = self._last_token_time.pop(output.request_id, None)  # re-added at the end: oldest stay first
            if last is not None:
                for _ in range(count):  # several tokens in one step share the gap
                    self.inter_token_latency.observe((now - last) / count)
            self._last_token_time[output.request_id] = now
        if output.finished:
            self._last_token_time.pop(output.request_id, None)

    def _forget_stale_children(self, num_live: int) -> None:
        """Aborted children (client gone, stop string, timeout) send no finishing output. The engine core
        holds only `num_live` requests, so any beyond that are gone: forget the longest silent."""
        while len(self._last_token_time) > num_live:
            del self._last_token_time[next(iter(self._last_token_time))]

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        family = Histogram(PREFIX + name, documentation, ["model_name"], buckets=buckets, registry=self.registry)
        return family.labels(self.model_name)

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(PREFIX + name, documentation, ["model_name"], registry=self.registry).labels(self.model_name)

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(PREFIX + name, documentation, ["model_name"], registry=self.registry).labels(self.model_name)


def _finish_reason(output: RequestOutput) -> FinishReason:
    """The request's reason; when its samples (n > 1) ended differently, abort beats length beats stop."""
    reasons = {sample.finish_reason for sample in output.outputs}
    return next((reason for reason in ("abort", "length") if reason in reasons), "stop")


def _span(start: float | None, end: float | None) -> float | None:
    """Seconds from start to end, or None when either is unknown (e.g. a request aborted before its first token)."""
    return None if start is None or end is None else max(end - start, 0.0)
