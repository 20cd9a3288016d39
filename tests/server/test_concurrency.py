"""Many clients at once: every stream finishes with the offline greedy text, and the metrics settle after.

64 streams against a server running at most 32 sequences at a time, so half of them queue and the batch
changes composition at almost every step. The shared server serves other tests too, so counters are
compared before and after rather than read as totals.
"""

from __future__ import annotations

import asyncio
import time

import openai

from lmserve import SamplingParams
from tests.server.server_process import ServerProcess

NUM_CLIENTS = 64
MAX_TOKENS = 16
# Different prompts of different lengths (a few tokens to a few KV blocks).
PROMPTS = [f"Client {index} asks:{' why' * (index % 9)} what is {index} squared?" for index in range(NUM_CLIENTS)]
METRICS_SETTLE_SECONDS = 5.0


def wait_until_idle(server: ServerProcess) -> None:
    """Let requests of earlier tests (a client that left mid-stream, say) finish before counting tokens."""
    deadline = time.monotonic() + METRICS_SETTLE_SECONDS
    while server.metric("lmserve:num_requests_running") or server.metric("lmserve:num_requests_waiting"):
        assert time.monotonic() < deadline, "the shared server never went idle"
        time.sleep(0.05)


async def stream_completion(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str | None, int]:
    """One client's streamed greedy completion: (text, finish reason, completion tokens from the usage chunk)."""
    stream = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish_reason, completion_tokens = "", None, -1
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.text
            finish_reason = choice.finish_reason or finish_reason
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
    return text, finish_reason, completion_tokens


async def stream_all(base_url: str) -> list[tuple[str, str | None, int]]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as client:
        return await asyncio.gather(*(stream_completion(client, prompt) for prompt in PROMPTS))


def test_64_concurrent_streams_equal_the_offline_llm_and_metrics_settle(server, llm):
    expected = [output.outputs[0] for output in llm.generate(
        PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False
    )]
    wait_until_idle(server)
    generation_tokens_before = server.metric("lmserve:generation_tokens_total")

    results = asyncio.run(stream_all(f"{server.url}/v1"))

    for prompt, (text, finish_reason, completion_tokens), reference in zip(PROMPTS, results, expected, strict=True):
        assert (text, finish_reason) == (reference.text, reference.finish_reason), prompt
        assert completion_tokens == len(reference.token_ids), prompt
    total_completion_tokens = sum(completion_tokens for _, _, completion_tokens in results)

    # The gauges change on the engine's next message after the last token: poll briefly.
    deadline = time.monotonic() + METRICS_SETTLE_SECONDS
    while True:
        running = server.metric("lmserve:num_requests_running")
        kv_cache_usage = server.metric("lmserve:kv_cache_usage_perc")
        generated = server.metric("lmserve:generation_tokens_total") - generation_tokens_before
        settled = (running, kv_cache_usage, generated) == (0, 0, total_completion_tokens)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert running == 0
    assert kv_cache_usage == 0
    assert generated == total_completion_tokens
