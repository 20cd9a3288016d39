"""Shared helpers for the sampler tests."""

from collections.abc import Callable

import pytest

from lmserve.sample import SamplingMetadata
from lmserve.sampling_params import SamplingParams


@pytest.fixture
def build_metadata() -> Callable[..., SamplingMetadata]:
    """SamplingMetadata.build on CPU with empty histories and no EOS unless given."""

    def build(
        params: list[SamplingParams],
        vocab_size: int,
        prompts: list[list[int]] | None = None,
        outputs: list[list[int]] | None = None,
        eos: list[tuple[int, ...]] | None = None,
    ) -> SamplingMetadata:
        rows = len(params)
        return SamplingMetadata.build(
            params,
            prompt_token_ids=prompts or [[] for _ in range(rows)],
            output_token_ids=outputs or [[] for _ in range(rows)],
            num_output_tokens=[len(output) for output in outputs or [[]] * rows],
            eos_token_ids=eos or [() for _ in range(rows)],
            vocab_size=vocab_size,
            device="cpu",
        )

    return build
