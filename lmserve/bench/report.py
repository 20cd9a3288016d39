"""The results: a summary table on the terminal, a JSON file with every record, and a PNG of latency vs load."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmserve.bench.config import BenchConfig
from lmserve.bench.metrics import Distribution, time_per_output_token
from lmserve.bench.runner import LoadResult

PERCENTILES = ("p50", "p90", "p99")
API_KEY_MASK = "***"


def format_summary(result: LoadResult) -> str:
    """A few aligned lines for the terminal."""
    summary = result.summary
    rows = [
        ("request rate (req/s)", f"{result.request_rate:g}"),
        ("successful / failed requests", f"{summary.completed} / {summary.failed}"),
        ("duration (s)", f"{summary.duration:.2f}"),
        ("prompt / output tokens", f"{summary.total_input_tokens} / {summary.total_output_tokens}"),
        ("request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("output token throughput (tok/s)", f"{summary.output_throughput:.1f}"),
        ("total token throughput (tok/s)", f"{summary.total_token_throughput:.1f}"),
    ]
    for name in ("ttft", "tpot", "itl", "e2el"):
        distribution: Distribution | None = getattr(summary, f"{name}_ms")
        if distribution is not None:
            values = (distribution.mean, *(getattr(distribution, p) for p in PERCENTILES))
            rows.append((f"{name.upper()} mean/p50/p90/p99 (ms)", " / ".join(f"{value:.2f}" for value in values)))
    if summary.goodput is not None:
        goodput = summary.goodput
        rows.append(("goodput (req/s, fraction)", f"{goodput.rate:.2f}, {goodput.fraction:.1%}"))
    first_error = next((record.error for record in result.records if record.error), None)
    if first_error is not None:
        rows.append(("first error", first_error))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_result(path: str | Path, command: str, config: BenchConfig, results: list[LoadResult]) -> None:
    """The exact command, the config, and each load level's summary and per-request records (with TPOT).

    The API key, if any, is masked in both the command and the config.
    """
    runs = [
        {
            "request_rate": result.request_rate,
            "summary": dataclasses.asdict(result.summary),
            "requests": [
                {**dataclasses.asdict(record), "tpot": time_per_output_token(record)} for record in result.records
            ],
        }
        for result in results
    ]
    settings = dataclasses.asdict(config)
    if config.api_key:
        command = command.replace(config.api_key, API_KEY_MASK)
        settings["api_key"] = API_KEY_MASK
    document = {"command": command, "config": settings, "runs": runs}
    Path(path).write_text(json.dumps(_without_infinities(document), indent=2, allow_nan=False) + "\n")


def plot_latency(path: str | Path, config: BenchConfig, results: list[LoadResult]) -> None:
    """TTFT and TPOT percentiles (p50, p90, p99) against load: one x position per request rate, in order."""
    # The Agg canvas straight away, not pyplot: no global backend to pick, no display needed.
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    positions = range(len(results))
    labels = [f"{result.request_rate:g}\n({result.summary.request_throughput:.2f})" for result in results]
    for axis, name in zip(axes, ("ttft", "tpot"), strict=True):
        distributions = [getattr(result.summary, f"{name}_ms") for result in results]
        for percentile in PERCENTILES:
            values = [math.nan if d is None else getattr(d, percentile) for d in distributions]
            axis.plot(positions, values, marker="o", label=percentile)
        axis.set_title(f"{name.upper()} (ms)")
        axis.set_xticks(list(positions), labels)
        axis.set_xlabel("request rate, req/s: offered (achieved)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    limit = f", max concurrency {config.max_concurrency}" if config.max_concurrency else ""
    figure.suptitle(f"{config.model} at {config.base_url}, {config.endpoint}{limit}")
    figure.savefig(path, dpi=100)


def _without_infinities(value: Any) -> Any:
    """JSON has no infinity: an infinite request rate is written as the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _without_infinities(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_infinities(item) for item in value]
    return value
