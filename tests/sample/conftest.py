"""Shared helpers for the sampler tests."""

from collections.abc import Callable

import pytest
import torch

from lmserve.sample import SamplingMetadata
from lmserve.sample.penalties import Penalties
from lmserve.sampling_params import SamplingParams


def seen_token_penalties(
    params: list[SamplingParams], prompts: list[list[int]], outputs: list[list[int]], vocab_size: int
) -> Penalties | None:
    """Penalties over tables built straight from token lists (row i + 1 holds request i's tokens), as the model
    runner's history holds them; None when no request has a penalty."""
    if not any(p.has_penalties for p in params):
        return None
    rows = len(params)
    prompt_mask = torch.zeros(rows + 1, vocab_size, dtype=torch.bool)
    output_counts = torch.zeros(rows + 1, vocab_size)
    for row, (prompt, output) in enumerate(zip(prompts, outputs, strict=True), start=1):
        prompt_mask[row, prompt] = True
        for token in output:
            output_counts[row, token] += 1

    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in params], dtype=torch.float32)

    return Penalties(
        repetition=column("repetition_penalty"),
        frequency=column("frequency_penalty"),
        presence=column("presence_penalty"),
        rows=torch.arange(1, rows + 1),
        prompt_mask=prompt_mask,
        output_counts=output_counts,
    )


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
        outputs = outputs or [[] for _ in range(rows)]
        return SamplingMetadata.build(
            params,
            num_output_tokens=[len(output) for output in outputs],
            eos_token_ids=eos or [() for _ in range(rows)],
            vocab_size=vocab_size,
            penalties=seen_token_penalties(params, prompts or [[] for _ in range(rows)], outputs, vocab_size),
        )

    return build
