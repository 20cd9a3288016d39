"""The asyncio engine hands each request its own outputs, also when a finished request's id is reused."""

from __future__ import annotations

import asyncio

from lmserve.config import EngineConfig
from lmserve.engine.async_engine import AsyncEngine
from lmserve.sampling_params import RequestOutputKind, SamplingParams


def test_an_id_reused_before_the_first_stream_is_closed_gets_its_own_outputs(text_model_dir):
    async def scenario() -> None:
        engine = AsyncEngine(EngineConfig.from_options(str(text_model_dir), dtype="float32"))
        await engine.start()
        try:
            short = SamplingParams(max_tokens=2, output_kind=RequestOutputKind.FINAL_ONLY)
            first = engine.generate("Hello", short, "same-id")
            assert (await anext(first)).finished  # the frontend forgets the id now
            long = SamplingParams(max_tokens=50, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
            second = engine.generate("Hello", long, "same-id")
            pending = asyncio.ensure_future(anext(second))
            await asyncio.sleep(0)  # the second request is queued
            await first.aclose()  # closing the first stream must leave the second one's outputs alone
            output = await asyncio.wait_for(pending, timeout=60)
            assert output.finished and len(output.outputs[0].token_ids) == 50
        finally:
            engine.shutdown()

    asyncio.run(scenario())
