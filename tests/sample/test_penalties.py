"""Penalties lower seen tokens' logits exactly as vLLM and OpenAI define them."""

import torch

from lmserve.sample.penalties import Penalties
from lmserve.sampling_params import SamplingParams


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)]
    penalties = Penalties.build(params, [[3]], [[1, 1, 2]], vocab_size=5, device="cpu")
    penalised = penalties.apply(torch.zeros(1, 5))
    # token 1: twice (2 * 0.5 + 0.25), token 2: once (0.5 + 0.25), prompt token 3: untouched
    assert penalised.tolist() == [[0.0, -1.25, -0.75, 0.0, 0.0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    params = [SamplingParams(repetition_penalty=2.0), SamplingParams()]
    penalties = Penalties.build(
        params, prompt_token_ids=[[3], [3]], output_token_ids=[[2], [2]], vocab_size=5, device="cpu"
    )
    logits = torch.tensor([[1.0, 2.0, -2.0, 4.0, 1.0]] * 2)
    assert penalties.apply(logits).tolist() == [[1.0, 2.0, -4.0, 2.0, 1.0], [1.0, 2.0, -2.0, 4.0, 1.0]]


def test_no_penalties_builds_nothing() -> None:
    params = [SamplingParams(), SamplingParams(temperature=0.0)]
    assert Penalties.build(params, [[1], [2]], [[3], []], vocab_size=5, device="cpu") is None
