"""The Sampler's deterministic behaviour: greedy choice, logit processing, seeds and logprobs."""

import dataclasses
import math

import torch

from lmserve.sample import Sampler
from lmserve.sampling_params import SamplingParams

VOCAB_SIZE = 20


def test_greedy_rows_take_the_argmax(build_metadata) -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    metadata = build_metadata([SamplingParams(temperature=0.0)] * 6, vocab_size=50)
    assert torch.equal(Sampler()(logits, metadata).sampled_token_ids, logits.argmax(dim=-1))


def test_16_bit_logits_give_the_tokens_and_logprobs_of_their_float32_values(build_metadata) -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    greedy = build_metadata([SamplingParams(temperature=0.0)] * 6, vocab_size=50)  # argmax straight on bf16
    assert torch.equal(Sampler()(logits, greedy).sampled_token_ids, logits.float().argmax(dim=-1))
    with_logprobs = build_metadata([SamplingParams(temperature=0.0, logprobs=2)] * 6, vocab_size=50)
    output = Sampler()(logits, with_logprobs)
    assert output.logprobs.logprobs.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), dim=-1).gather(-1, output.sampled_token_ids[:, None])
    torch.testing.assert_close(output.logprobs.logprobs[:, :1], expected)


def test_greedy_rows_stay_greedy_beside_random_rows(build_metadata) -> None:
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0.0 if row % 2 else 1.0) for row in range(8)]
    sampled = Sampler()(logits, build_metadata(params, vocab_size=50)).sampled_token_ids
    assert torch.equal(sampled[1::2], logits[1::2].argmax(dim=-1))


def test_logit_bias_moves_the_greedy_choice(build_metadata) -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 2)
    params = [
        SamplingParams(temperature=0.0, logit_bias={0: 4.0}),
        SamplingParams(temperature=0.0, logit_bias={3: -100.0}),
    ]
    sampled = Sampler()(logits, build_metadata(params, vocab_size=4)).sampled_token_ids
    assert sampled.tolist() == [0, 2]


def test_repetition_penalty_moves_the_greedy_choice(build_metadata) -> None:
    logits = torch.tensor([[2.0, 1.5, 0.0]] * 3)
    params = [SamplingParams(temperature=0.0, repetition_penalty=2.0)] * 2 + [SamplingParams(temperature=0.0)]
    metadata = build_metadata(params, vocab_size=3, prompts=[[0], [], [0]], outputs=[[], [0], [0]])
    # Token 0 was seen (in the prompt, in the output) and drops to 1.0, below token 1; row 2 has no penalty.
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [1, 1, 0]


def test_min_tokens_keeps_greedy_off_stop_tokens(build_metadata) -> None:
    # EOS (3) is the most likely token, then the stop token id 2, then 1.
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 3)
    params = [
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2]),
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2], ignore_eos=True),
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2]),
    ]
    metadata = build_metadata(params, vocab_size=4, outputs=[[1], [1], [1, 1]], eos=[(3,)] * 3)
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [1, 3, 3]


def seeded_row_tokens(build_metadata, seed: int, position: int, batch_size: int, steps: int = 8) -> list[int]:
    """The tokens a seeded row samples over `steps` steps, at `position` in a batch of varied other rows."""
    row_logits = torch.randn(steps, VOCAB_SIZE, generator=torch.Generator().manual_seed(123)) * 0.5
    torch.manual_seed(1000 * position + batch_size)  # the unseeded rows' draws differ in every batch
    params = [SamplingParams(temperature=0.0 if row % 3 == 0 else 0.7, top_k=5) for row in range(batch_size)]
    for row in range(1, batch_size, 2):
        params[row] = dataclasses.replace(params[row], seed=row)
    params[position] = SamplingParams(temperature=0.9, top_p=0.95, seed=seed)
    tokens = []
    for step in range(steps):
        logits = torch.randn(batch_size, VOCAB_SIZE) * 3
        logits[position] = row_logits[step]
        # Each row sampled `step` tokens before; the other rows' histories differ in every batch.
        outputs = [[0] * (step if row == position else row + step) for row in range(batch_size)]
        metadata = build_metadata(params, vocab_size=VOCAB_SIZE, outputs=outputs)
        tokens.append(Sampler()(logits, metadata).sampled_token_ids[position].item())
    return tokens


def test_seeded_row_ignores_the_rest_of_the_batch(build_metadata) -> None:
    alone = seeded_row_tokens(build_metadata, seed=7, position=0, batch_size=1)
    assert len(set(alone)) > 1
    for position, batch_size in [(0, 8), (5, 8), (7, 8), (2, 3)]:
        assert seeded_row_tokens(build_metadata, seed=7, position=position, batch_size=batch_size) == alone


def test_different_seeds_give_different_tokens(build_metadata) -> None:
    first = seeded_row_tokens(build_metadata, seed=7, position=0, batch_size=1)
    assert seeded_row_tokens(build_metadata, seed=8, position=0, batch_size=1) != first


def test_min_p_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_top_one(build_metadata) -> None:
    # Tokens 1 and 2 lie a hair above and below a quarter of the top token's probability.
    logits = torch.tensor([[2.0, 2.0 - math.log(4) + 1e-4, 2.0 - math.log(4) - 1e-4, -50.0]] * 64)
    params = [SamplingParams(min_p=0.25, seed=row) for row in range(64)]
    sampled = Sampler()(logits, build_metadata(params, vocab_size=4)).sampled_token_ids
    assert set(sampled.tolist()) == {0, 1}  # each of 64 draws: 0 or 1 at 4:1+, both seen (P(miss) < 1e-6)


def test_logprobs_are_of_the_raw_logits(build_metadata) -> None:
    logits = torch.randn(4, VOCAB_SIZE, generator=torch.Generator().manual_seed(2)) * 2
    original = logits.clone()
    params = [
        SamplingParams(temperature=0.5, top_k=3, logprobs=3, logit_bias={0: 5.0}),
        SamplingParams(temperature=0.0, repetition_penalty=1.5, presence_penalty=1.0, logprobs=0),
        SamplingParams(min_p=0.2, logprobs=None),
        SamplingParams(top_p=0.5, frequency_penalty=0.5, logprobs=2),
    ]
    metadata = build_metadata(params, vocab_size=VOCAB_SIZE, prompts=[[1, 2]] * 4, outputs=[[3, 3]] * 4)
    output = Sampler()(logits, metadata)

    assert torch.equal(logits, original)
    expected = torch.log_softmax(original, dim=-1)
    top = expected.topk(3, dim=-1)
    sampled = output.sampled_token_ids
    assert torch.equal(output.logprobs.token_ids[:, 0], sampled)
    assert torch.equal(output.logprobs.token_ids[:, 1:], top.indices)
    raw = expected.gather(1, output.logprobs.token_ids)
    torch.testing.assert_close(output.logprobs.logprobs, raw, atol=1e-6, rtol=0)
    ranks = (expected.argsort(dim=-1, descending=True) == sampled[:, None]).int().argmax(dim=-1) + 1
    assert torch.equal(output.logprobs.ranks, ranks)


def test_no_logprobs_unless_asked(build_metadata) -> None:
    output = Sampler()(torch.zeros(2, VOCAB_SIZE), build_metadata([SamplingParams()] * 2, vocab_size=VOCAB_SIZE))
    assert output.logprobs is None
