"""The top-p kernel draws the tokens of the host path (lmserve.sample.gumbel.top_p_race): same bits, same rounds."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.top_p import top_p_race
from lmserve.sample import gumbel
from tests.kernels.paged_batch import DEVICE


def race_inputs(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=generator) * 2
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator)
    counters = torch.randint(0, 2**40, (rows,), generator=generator)
    return scores.to(DEVICE), keys.to(DEVICE), counters.to(DEVICE)


@pytest.mark.parametrize(("rows", "vocab"), [(1, 17), (4, 300), (6, 1000)])
def test_draws_the_tokens_of_the_host_path(rows: int, vocab: int) -> None:
    scores, keys, counters = race_inputs(rows, vocab, seed=vocab)
    scores[0, vocab // 2 :] = float("-inf")  # as top-k or min_p leave a row
    top_p = torch.tensor([0.05, 0.5, 0.9, 1.0, 0.3, 0.7][:rows], device=DEVICE)
    for step in range(3):
        expected = gumbel.top_p_race(scores, top_p, keys, counters + step)
        assert torch.equal(top_p_race(scores, top_p, keys, counters + step, tile=16), expected)


def test_rows_of_a_wider_buffer_and_no_rows() -> None:
    scores, keys, counters = race_inputs(3, 520, seed=0)
    top_p = torch.full((3,), 0.4, device=DEVICE)
    assert torch.equal(top_p_race(scores[:, :500], top_p, keys, counters, tile=16),
                       gumbel.top_p_race(scores[:, :500], top_p, keys, counters))
    assert top_p_race(scores[:0], top_p[:0], keys[:0], counters[:0]).shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_real_vocabulary() -> None:
    scores, keys, counters = race_inputs(64, 151936, seed=3)
    top_p = torch.rand(64, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    assert torch.equal(top_p_race(scores, top_p, keys, counters), gumbel.top_p_race(scores, top_p, keys, counters))


def test_a_top_p_that_rounds_to_zero_draws_as_the_host_path() -> None:
    scores, keys, counters = race_inputs(4, 100, seed=5)
    scores[:, [7, 9]] = 10.0
    top_p = torch.zeros(4, device=DEVICE)
    for step in range(4):
        tokens = top_p_race(scores, top_p, keys, counters + step, tile=16)
        assert torch.equal(tokens, gumbel.top_p_race(scores, top_p, keys, counters + step))
        assert set(tokens.tolist()) <= {7, 9}
