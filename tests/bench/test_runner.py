"""A load level against the fake server: max concurrency holds, arrivals follow the rate, records stay in order."""

import asyncio
import math

from lmserve.bench.client import Target
from lmserve.bench.runner import LoadResult, run_load
from lmserve.bench.workload import random_requests
from tests.bench.fake_server import COMPLETIONS_URL, FakeServer

TARGET = Target(COMPLETIONS_URL, "completions", "fake-model", fixed_output_len=True)


def run(server: FakeServer, num: int, rate: float, max_concurrency: int | None = None) -> LoadResult:
    requests = random_requests(num, input_len=4, output_len=server.num_tokens, seed=0)

    async def level() -> LoadResult:
        async with server.client() as client:
            return await run_load(client, TARGET, requests, rate, max_concurrency=max_concurrency,
                                  show_progress=False)

    return asyncio.run(level())


def test_max_concurrency_is_reached_and_never_exceeded():
    server = FakeServer(num_tokens=4, chunk_gap=0.01)
    result = run(server, num=12, rate=math.inf, max_concurrency=3)
    assert server.max_in_flight == 3
    assert result.summary.completed == 12 and len(server.bodies) == 12


def test_an_infinite_rate_without_a_limit_sends_everything_at_once():
    server = FakeServer(num_tokens=4, chunk_gap=0.02)  # each takes 80 ms: all 12 start before one ends
    result = run(server, num=12, rate=math.inf)
    assert server.max_in_flight == 12
    assert result.summary.completed == 12


def test_requests_arrive_over_time_at_a_finite_rate_and_records_keep_their_order():
    server = FakeServer(num_tokens=2, chunk_gap=0.001)
    result = run(server, num=20, rate=200.0)
    assert [record.index for record in result.records] == list(range(20))
    assert all(record.success for record in result.records)
    starts = [record.start for record in result.records]
    assert starts == sorted(starts)
    assert 0.02 < starts[-1] < 1.0  # 20 Poisson arrivals at 200/s take about 0.1 s
    assert result.summary.duration >= starts[-1]
    assert result.summary.total_output_tokens == 40
