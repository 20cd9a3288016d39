"""The summary of a run: latency distributions, throughputs and goodput under latency SLOs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmserve.bench.client import RequestRecord
from lmserve.bench.config import SLO_METRICS
from lmserve.errors import ConfigError


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in milliseconds."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of_seconds(cls, values: list[float]) -> Distribution | None:
        """Percentiles interpolate linearly between samples (numpy's default); None when there are no samples."""
        if not values:
            return None
        ms = np.asarray(values, dtype=np.float64) * 1000.0
        p50, p90, p99 = np.percentile(ms, [50, 90, 99]).tolist()
        return cls(float(ms.mean()), p50, p90, p99)


@dataclass(frozen=True)
class Goodput:
    """The requests that succeeded within every SLO: how many, what fraction of all sent, and per second."""

    slos_ms: dict[str, float]
    good_requests: int
    fraction: float
    rate: float


@dataclass(frozen=True)
class Summary:
    """What one load level measured. Token totals and latencies count successful requests only."""

    completed: int
    failed: int
    duration: float  # seconds from the run's start to the last request's end
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second
    output_throughput: float  # output tokens per second
    total_token_throughput: float  # prompt and output tokens per second
    ttft_ms: Distribution | None
    tpot_ms: Distribution | None
    itl_ms: Distribution | None
    e2el_ms: Distribution | None
    goodput: Goodput | None


def time_per_output_token(record: RequestRecord) -> float | None:
    """Seconds per output token after the first: (e2e - ttft) / (output tokens - 1); None below two tokens."""
    if not record.success or record.output_tokens < 2:
        return None
    return (record.e2e_latency - record.ttft) / (record.output_tokens - 1)


def parse_slos(items: list[str]) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` -> {"ttft": 500.0, "tpot": 50.0}: each a metric and its limit in ms."""
    slos = {}
    for item in items:
        name, _, limit = item.partition(":")
        try:
            slos[name] = float(limit)
        except ValueError:
            raise ConfigError(f"--goodput takes NAME:MILLISECONDS, got {item!r}") from None
        if name not in SLO_METRICS or not slos[name] > 0:
            raise ConfigError(f"--goodput takes {', '.join(SLO_METRICS)} with a positive limit, got {item!r}")
    return slos


def meets_slos(record: RequestRecord, slos_ms: dict[str, float]) -> bool:
    """Whether the request succeeded within every limit; a request of one token has no TPOT to miss."""
    if not record.success:
        return False
    values = {"ttft": record.ttft, "tpot": time_per_output_token(record) or 0.0, "e2el": record.e2e_latency}
    return all(values[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def summarize(records: list[RequestRecord], duration: float, slos_ms: dict[str, float]) -> Summary:
    """The summary of one load level's records, which took `duration` seconds."""
    done = [record for record in records if record.success]
    input_tokens = sum(record.prompt_tokens for record in done)
    output_tokens = sum(record.output_tokens for record in done)
    tpots = [tpot for record in done if (tpot := time_per_output_token(record)) is not None]
    goodput = None
    if slos_ms:
        good = sum(meets_slos(record, slos_ms) for record in records)
        goodput = Goodput(dict(slos_ms), good, good / len(records) if records else 0.0, _per_second(good, duration))
    return Summary(
        completed=len(done),
        failed=len(records) - len(done),
        duration=duration,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=_per_second(len(done), duration),
        output_throughput=_per_second(output_tokens, duration),
        total_token_throughput=_per_second(input_tokens + output_tokens, duration),
        ttft_ms=Distribution.of_seconds([record.ttft for record in done]),
        tpot_ms=Distribution.of_seconds(tpots),
        itl_ms=Distribution.of_seconds([gap for record in done for gap in record.itl]),
        e2el_ms=Distribution.of_seconds([record.e2e_latency for record in done]),
        goodput=goodput,
    )


def _per_second(count: float, duration: float) -> float:
    return count / duration if duration > 0 else 0.0
