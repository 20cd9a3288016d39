"""`lmserve bench serve`: its flags (one per BenchConfig field), then each load level in turn and the reports."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import httpx

from lmserve.bench.client import Target
from lmserve.bench.config import BenchConfig
from lmserve.bench.metrics import parse_slos
from lmserve.bench.report import format_summary, plot_latency, write_result
from lmserve.bench.runner import LoadResult, run_load
from lmserve.bench.workload import DEFAULT_NUM_RANDOM_PROMPTS, BenchRequest, load_dataset, random_requests
from lmserve.errors import ConfigError

ENDPOINT_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench` (with its `serve` subcommand) to a CLI's subcommands; the handler is `args.handler(args)`."""
    add_bench_commands(subparsers.add_parser("bench", help="benchmark a running server"))


def add_bench_commands(parser: argparse.ArgumentParser) -> None:
    """The benchmark subcommands under `parser`: `serve`."""
    commands = parser.add_subparsers(dest="bench_command", required=True)
    serve = commands.add_parser(
        "serve",
        help="an online load generator for an OpenAI-compatible endpoint",
        description="Stream requests to an OpenAI-compatible server at one or more request rates and "
        "measure TTFT, TPOT, ITL, end-to-end latency, throughput and goodput.",
    )
    _add_serve_arguments(serve)
    serve.set_defaults(handler=run_bench_serve)


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    add = parser.add_argument
    add("--base-url", default=defaults.base_url, help="the server's root URL (default: %(default)s)")
    add("--endpoint", choices=list(ENDPOINT_PATHS), default=defaults.endpoint, help="the OpenAI API to call")
    add("--model", help="the model name to send (default: the first one the server's /v1/models lists)")
    add("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="sent as a bearer token ($OPENAI_API_KEY)")
    add("--dataset", help='a JSONL file, a line each: {"prompt": ...} or {"messages": [...]}, and "max_tokens"')
    add("--num-prompts", type=int, help=f"requests per load level (default: the whole dataset, or "
        f"{DEFAULT_NUM_RANDOM_PROMPTS} random prompts)")
    add("--random-input-len", type=int, default=defaults.random_input_len, help="words per random prompt")
    add("--random-output-len", type=int, default=defaults.random_output_len, help="max_tokens of random prompts")
    add("--fixed-output-len", action=argparse.BooleanOptionalAction, default=defaults.fixed_output_len,
        help="send ignore_eos and min_tokens = max_tokens (vLLM's extras), so each request generates exactly "
        "max_tokens; --no-fixed-output-len for servers that refuse them")
    add("--seed", type=int, default=defaults.seed, help="seeds the random prompts and the arrival times")
    add("--request-rate", type=float, nargs="+", default=defaults.request_rate, metavar="RATE",
        help="requests per second; inf sends all at once; several values run one after another (default: inf)")
    add("--burstiness", type=float, default=defaults.burstiness,
        help="gamma shape of the gaps between arrivals: 1 is Poisson, below 1 burstier, above 1 steadier")
    add("--max-concurrency", type=int, help="at most this many requests in flight at once")
    add("--goodput", nargs="+", default=[], metavar="NAME:MS",
        help="SLOs a request must all meet to count as good, e.g. ttft:500 tpot:50 e2el:2000 (milliseconds)")
    add("--result-file", help="write the command, config, per-request records and summaries as JSON here")
    add("--plot-file", help="write the latency-vs-load PNG here (default: beside --result-file, as .png)")
    add("--timeout", type=float, default=defaults.timeout,
        help="seconds a request may wait to connect or for its next chunk (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig the flags give; raises ConfigError when they are invalid."""
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(BenchConfig)}
    return BenchConfig(**{**options, "goodput": parse_slos(args.goodput)})


def run_bench_serve(args: argparse.Namespace) -> None:
    """Run every load level against the server, print each summary, then write the JSON and the plot."""
    config = config_from_args(args)
    config, results = asyncio.run(benchmark(config))
    if any(result.summary.failed for result in results):
        print("lmserve bench: some requests failed; see the summaries and the records", file=sys.stderr)
    if config.result_file:
        write_result(config.result_file, shlex.join(sys.orig_argv), config, results)
    plot_file = config.plot_file or (Path(config.result_file).with_suffix(".png") if config.result_file else None)
    if plot_file:
        plot_latency(plot_file, config, results)


async def benchmark(config: BenchConfig) -> tuple[BenchConfig, list[LoadResult]]:
    """Each request rate in turn; returns the config with the model resolved, and one result per rate."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # No connection pool limit: a request waiting for a pooled connection would count that wait as latency.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(headers=headers, timeout=config.timeout, limits=limits) as client:
        config = dataclasses.replace(config, model=config.model or await first_model(client, config.api_base))
        target = Target(config.api_base + ENDPOINT_PATHS[config.endpoint], config.endpoint, config.model,
                        config.fixed_output_len)
        results = []
        for level, rate in enumerate(config.request_rate):
            # Fresh random prompts per level: the prefix cache must not serve one level the last one's prompts.
            requests = load_requests(config, config.seed + level)
            result = await run_load(client, target, requests, rate, config.burstiness, config.seed + level,
                                    config.max_concurrency, config.goodput)
            print(format_summary(result), end="\n\n", flush=True)
            results.append(result)
    return config, results


def load_requests(config: BenchConfig, seed: int) -> list[BenchRequest]:
    """The dataset's requests, or random ones drawn with `seed`."""
    if config.dataset is None:
        num_prompts = config.num_prompts or DEFAULT_NUM_RANDOM_PROMPTS
        return random_requests(num_prompts, config.random_input_len, config.random_output_len, seed)
    requests = load_dataset(config.dataset, config.num_prompts)
    if config.endpoint == "completions" and any(request.messages is not None for request in requests):
        raise ConfigError(f"{config.dataset} holds chat messages: use --endpoint chat")
    return requests


async def first_model(client: httpx.AsyncClient, api_base: str) -> str:
    """The first model the server lists, for when --model is not given."""
    try:
        response = await client.get(f"{api_base}/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
        raise ConfigError(f"could not list the models at {api_base}/v1/models ({error}); give --model") from error

