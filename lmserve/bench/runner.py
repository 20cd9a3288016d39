"""One load level: send every request at its arrival time, at most `max_concurrency` at once, and summarize."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from lmserve.bench.arrivals import arrival_times
from lmserve.bench.client import RequestRecord, Target, send_request
from lmserve.bench.metrics import Summary, summarize
from lmserve.bench.workload import BenchRequest


@dataclass
class LoadResult:
    """A load level (the offered request rate; inf: all at once) with its per-request records and summary."""

    request_rate: float
    records: list[RequestRecord]
    summary: Summary


async def run_load(
    client: httpx.AsyncClient,
    target: Target,
    requests: list[BenchRequest],
    request_rate: float,
    burstiness: float = 1.0,
    seed: int = 0,
    max_concurrency: int | None = None,
    slos_ms: dict[str, float] | None = None,
    show_progress: bool = True,
) -> LoadResult:
    """Send each request at its arrival time (see arrivals.py) or, under max_concurrency, once a slot
    frees up after that; its latencies count from when it is actually sent."""
    times = arrival_times(len(requests), request_rate, burstiness, seed)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    progress = tqdm(total=len(requests), desc=f"rate {request_rate:g}", unit="req", disable=not show_progress)
    start = time.perf_counter()

    async def arrive(index: int, request: BenchRequest, at: float) -> RequestRecord:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        async with limit or contextlib.nullcontext():
            record = await send_request(client, target, request, index, start)
        progress.update()
        return record

    with progress:
        arrivals = [arrive(index, request, at) for index, (request, at) in enumerate(zip(requests, times, strict=True))]
        records = list(await asyncio.gather(*arrivals))
    duration = time.perf_counter() - start
    return LoadResult(request_rate, records, summarize(records, duration, slos_ms or {}))
