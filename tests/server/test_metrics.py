"""ServerMetrics driven by hand-made engine outputs, stats and request outputs, read back from /metrics text."""

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lmserve.engine.messages import EngineCoreOutput
from lmserve.engine.scheduler_stats import SchedulerStats
from lmserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from lmserve.server.metrics import ServerMetrics

MODEL = "tiny-model"
DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "lmserve-dashboard.json"


def samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the rendered text, keyed by its name and labels (model_name left out)."""
    body, _ = metrics.render()
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            assert sample.labels.get("model_name") == metrics.model_name
            labels = frozenset((key, value) for key, value in sample.labels.items() if key != "model_name")
            found[(sample.name, labels)] = sample.value
    return found


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def stats(
    running: int = 0,
    waiting: int = 0,
    used_blocks: int = 0,
    queries: int = 0,
    hits: int = 0,
    preemptions: int = 0,
) -> SchedulerStats:
    return SchedulerStats(running, waiting, used_blocks, 100, queries, hits, preemptions)


def token(request_id: str, finish_reason: str | None = None) -> EngineCoreOutput:
    return EngineCoreOutput(request_id=request_id, new_token_ids=[7], finish_reason=finish_reason)


def finished_request(*reasons: str, **timings: float) -> RequestOutput:
    """A finished request whose samples ended for `reasons`; `timings` fill its RequestMetrics."""
    completions = [CompletionOutput(index, "", [7], finish_reason=reason) for index, reason in enumerate(reasons)]
    return RequestOutput("request", None, [1, 2, 3], completions, finished=True, metrics=RequestMetrics(**timings))


def test_a_finished_request_lands_in_each_latency_histogram() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_request_finished(
        finished_request(
            "stop",
            arrival_time=100.0,
            first_scheduled_time=100.125,
            first_token_time=100.25,
            last_token_time=101.25,
            finished_time=101.25,
            num_prompt_tokens=7,
            num_generation_tokens=5,
        )
    )

    ttft = "lmserve:time_to_first_token_seconds"
    assert value(metrics, ttft + "_count") == 1
    assert value(metrics, ttft + "_sum") == 0.25
    assert value(metrics, ttft + "_bucket", le="0.2") == 0  # buckets count observations <= le
    assert value(metrics, ttft + "_bucket", le="0.25") == 1
    assert value(metrics, ttft + "_bucket", le="+Inf") == 1
    assert value(metrics, "lmserve:request_queue_time_seconds_sum") == 0.125
    assert value(metrics, "lmserve:request_prefill_time_seconds_sum") == 0.125
    assert value(metrics, "lmserve:request_decode_time_seconds_sum") == 1.0
    assert value(metrics, "lmserve:request_inference_time_seconds_sum") == 1.125
    assert value(metrics, "lmserve:e2e_request_latency_seconds_sum") == 1.25
    assert value(metrics, "lmserve:request_time_per_output_token_seconds_sum") == 0.25  # 1 s over 4 tokens
    assert value(metrics, "lmserve:prompt_tokens_total") == 7
    assert value(metrics, "lmserve:request_prompt_tokens_sum") == 7
    assert value(metrics, "lmserve:request_generation_tokens_sum") == 5
    assert value(metrics, "lmserve:request_success_total", finished_reason="stop") == 1
    assert value(metrics, "lmserve:request_success_total", finished_reason="length") == 0


def test_a_request_aborted_before_its_first_token_only_counts_what_it_has() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_request_finished(finished_request("abort", arrival_time=5.0, finished_time=6.0, num_prompt_tokens=3))

    assert value(metrics, "lmserve:request_success_total", finished_reason="abort") == 1
    assert value(metrics, "lmserve:e2e_request_latency_seconds_sum") == 1.0
    assert value(metrics, "lmserve:time_to_first_token_seconds_count") == 0
    assert value(metrics, "lmserve:request_time_per_output_token_seconds_count") == 0


def test_samples_that_end_differently_report_the_strongest_reason() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_request_finished(finished_request("stop", "length", arrival_time=0.0))
    metrics.on_request_finished(finished_request("stop", "stop", arrival_time=0.0))

    assert value(metrics, "lmserve:request_success_total", finished_reason="length") == 1
    assert value(metrics, "lmserve:request_success_total", finished_reason="stop") == 1


def test_inter_token_latency_comes_from_consecutive_steps_and_a_finished_child_is_forgotten() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_step([token("a")], stats(running=1), now=10.0)
    metrics.on_step([token("a")], stats(running=1), now=10.5)
    metrics.on_step([token("a", finish_reason="length")], stats(), now=10.75)

    assert value(metrics, "lmserve:inter_token_latency_seconds_count") == 2
    assert value(metrics, "lmserve:inter_token_latency_seconds_sum") == 0.75
    assert value(metrics, "lmserve:inter_token_latency_seconds_bucket", le="0.3") == 1
    assert value(metrics, "lmserve:generation_tokens_total") == 3
    assert metrics._last_token_time == {}


def test_children_aborted_without_a_final_output_are_forgotten() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_step([token("a"), token("b"), token("c")], stats(running=3), now=1.0)
    metrics.on_step([token("b"), token("c")], stats(running=2), now=2.0)  # "a" was aborted
    assert set(metrics._last_token_time) == {"b", "c"}

    metrics.on_step([], stats(), now=3.0)  # aborts emptied the engine
    assert metrics._last_token_time == {}


def test_gauges_show_the_last_stats_and_running_totals_become_counters() -> None:
    metrics = ServerMetrics(MODEL)
    metrics.on_step([], stats(running=3, waiting=2, used_blocks=25, queries=100, hits=40, preemptions=1), now=1.0)
    metrics.on_step([], stats(running=1, waiting=0, used_blocks=50, queries=150, hits=90, preemptions=3), now=2.0)
    metrics.on_step([], stats(running=1, waiting=0, used_blocks=50, queries=150, hits=90, preemptions=3), now=3.0)

    assert value(metrics, "lmserve:num_requests_running") == 1
    assert value(metrics, "lmserve:num_requests_waiting") == 0
    assert value(metrics, "lmserve:kv_cache_usage_perc") == 0.5
    assert value(metrics, "lmserve:prefix_cache_hit_rate") == 0.6
    assert value(metrics, "lmserve:num_preemptions_total") == 3
    assert value(metrics, "lmserve:prefix_cache_queries_total") == 150
    assert value(metrics, "lmserve:prefix_cache_hits_total") == 90


def test_http_responses_are_counted_by_status() -> None:
    metrics = ServerMetrics(MODEL)
    for status in (200, 200, 404, 0):
        metrics.observe_http(status)

    assert value(metrics, "lmserve:http_requests_total", status="200") == 2
    assert value(metrics, "lmserve:http_requests_total", status="404") == 1
    assert value(metrics, "lmserve:http_requests_total", status="0") == 1  # the client went away


def test_two_servers_in_one_process_share_nothing() -> None:
    first, second = ServerMetrics("first"), ServerMetrics("second")
    first.observe_http(200)
    first.on_step([token("a")], stats(running=4), now=1.0)

    assert value(first, "lmserve:generation_tokens_total") == 1
    assert value(second, "lmserve:generation_tokens_total") == 0
    assert value(second, "lmserve:num_requests_running") == 0
    assert not any(name == "lmserve:http_requests_total" for name, _ in samples(second))


def test_render_gives_prometheus_text() -> None:
    body, content_type = ServerMetrics(MODEL).render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE lmserve:time_to_first_token_seconds histogram" in body


def test_the_dashboard_only_charts_metrics_the_server_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    metrics = ServerMetrics(MODEL)
    metrics.observe_http(200)  # labelled series appear with their first observation
    exported = {name for name, _ in samples(metrics)}

    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    charted = {name for expr in expressions for name in re.findall(r"lmserve:[a-zA-Z0-9_:]+", expr)}
    assert len(charted) >= 10
    assert charted <= exported, charted - exported


def test_an_aborted_request_counts_as_finished_by_abort():
    metrics = ServerMetrics("m")
    metrics.on_request_aborted()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render()[0].decode())}
    samples = {s.labels["finished_reason"]: s.value for s in families["lmserve:request_success"].samples
               if s.name.endswith("_total")}
    assert samples == {"stop": 0.0, "length": 0.0, "abort": 1.0}
