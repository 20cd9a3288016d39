"""Penalties lower seen tokens' logits exactly as vLLM and OpenAI define them."""

import torch

from lmserve.sampling_params import SamplingParams
from tests.sample.conftest import seen_token_penalties


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)]
    penalties = seen_token_penalties(params, [[3]], [[1, 1, 2]], vocab_size=5)
    penalised = penalties.apply(torch.zeros(1, 5))
    # token 1: twice (2 * 0.5 + 0.25), token 2: once (0.5 + 0.25), prompt token 3: untouched
    assert penalised.tolist() == [[0.0, -1.25, -0.75, 0.0, 0.0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    params = [SamplingParams(repetition_penalty=2.0), SamplingParams()]
    penalties = seen_token_penalties(params, prompts=[[3], [3]], outputs=[[2], [2]], vocab_size=5)
    logits = torch.tensor([[1.0, 2.0, -2.0, 4.0, 1.0]] * 2)
    assert penalties.apply(logits).tolist() == [[1.0, 2.0, -4.0, 2.0, 1.0], [1.0, 2.0, -2.0, 4.0, 1.0]]


def test_a_request_without_penalties_reads_the_zero_row() -> None:
    penalties = seen_token_penalties([SamplingParams(presence_penalty=1.0)] * 2, [[], []], [[1], [2]], vocab_size=3)
    penalties.rows = torch.tensor([1, 0])  # the second request has no penalty: the model runner gives it row 0
    assert penalties.apply(torch.zeros(2, 3)).tolist() == [[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
