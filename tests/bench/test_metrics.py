"""The summary's maths: percentiles, TPOT, throughputs and goodput, from hand-made request records."""

import pytest

from lmserve.bench.client import RequestRecord
from lmserve.bench.metrics import Distribution, meets_slos, parse_slos, summarize, time_per_output_token
from lmserve.errors import ConfigError


def record(ttft: float, e2e: float, output_tokens: int, prompt_tokens: int = 10, index: int = 0) -> RequestRecord:
    """A successful request whose chunks came evenly between its first token and its end."""
    gap = (e2e - ttft) / max(output_tokens - 1, 1)
    return RequestRecord(index, 0.0, success=True, ttft=ttft, e2e_latency=e2e,
                         itl=[gap] * (output_tokens - 1), prompt_tokens=prompt_tokens, output_tokens=output_tokens)


def failure(index: int = 0) -> RequestRecord:
    return RequestRecord(index, 0.0, error="HTTP 404: no such model")


def test_percentiles_interpolate_between_samples_in_milliseconds():
    distribution = Distribution.of_seconds([value / 1000 for value in range(1, 101)])  # 1..100 ms
    assert distribution.mean == pytest.approx(50.5)
    assert distribution.p50 == pytest.approx(50.5)
    assert distribution.p90 == pytest.approx(90.1)
    assert distribution.p99 == pytest.approx(99.01)
    assert Distribution.of_seconds([0.25]) == Distribution(250.0, 250.0, 250.0, 250.0)
    assert Distribution.of_seconds([]) is None


def test_tpot_is_decode_time_over_the_tokens_after_the_first():
    assert time_per_output_token(record(ttft=0.1, e2e=1.1, output_tokens=11)) == pytest.approx(0.1)
    assert time_per_output_token(record(ttft=0.1, e2e=0.1, output_tokens=1)) is None
    assert time_per_output_token(failure()) is None


def test_summary_counts_only_successful_requests():
    records = [record(0.1, 0.5, 5, prompt_tokens=10), record(0.3, 1.3, 11, prompt_tokens=20), failure()]
    summary = summarize(records, duration=2.0, slos_ms={})
    assert (summary.completed, summary.failed) == (2, 1)
    assert (summary.total_input_tokens, summary.total_output_tokens) == (30, 16)
    assert summary.request_throughput == pytest.approx(1.0)
    assert summary.output_throughput == pytest.approx(8.0)
    assert summary.total_token_throughput == pytest.approx(23.0)
    assert summary.ttft_ms.mean == pytest.approx(200.0)
    assert summary.tpot_ms.mean == pytest.approx(100.0)  # 400 ms / 4 and 1000 ms / 10
    assert summary.itl_ms.p50 == pytest.approx(100.0)
    assert summary.e2el_ms.p99 == pytest.approx(1292.0)
    assert summary.goodput is None


def test_goodput_counts_requests_within_every_slo():
    records = [
        record(0.1, 0.5, 5),  # ttft 100 ms, tpot 100 ms, e2el 500 ms: good
        record(0.6, 1.0, 5),  # ttft too slow
        record(0.1, 2.1, 5),  # tpot 500 ms too slow
        record(0.2, 0.2, 1),  # one token: no TPOT to miss
        failure(),
    ]
    slos = parse_slos(["ttft:500", "tpot:150", "e2el:2000"])
    assert slos == {"ttft": 500.0, "tpot": 150.0, "e2el": 2000.0}
    assert [meets_slos(r, slos) for r in records] == [True, False, False, True, False]
    goodput = summarize(records, duration=4.0, slos_ms=slos).goodput
    assert (goodput.good_requests, goodput.fraction, goodput.rate) == (2, pytest.approx(0.4), pytest.approx(0.5))


@pytest.mark.parametrize("item", ["ttft", "ttft:fast", "latency:100", "tpot:0"])
def test_bad_slos_are_refused(item: str):
    with pytest.raises(ConfigError, match="--goodput"):
        parse_slos([item])
