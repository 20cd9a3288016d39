"""The top-p kernel draws the tokens of the host path (lmserve.sample.gumbel.top_p_race): same bits, same rounds."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.top_p import top_p_race
from lmserve.sample import gumbel
from tests.kernels.paged_batch import DEVICE
from tests.kernels.triton_setup import record_launches
from tests.sample.test_gumbel import edge_of_the_nucleus


def race_inputs(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=generator) * 2
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator)
    counters = torch.randint(0, 2**40, (rows,), generator=generator)
    return scores.to(DEVICE), keys.to(DEVICE), counters.to(DEVICE)


# Stage 1's chunks: one tile each (the default launch at these sizes), a few tiles each, one chunk a row.
@pytest.mark.parametrize("target_programs", [1024, 8, 1])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 17), (4, 300), (6, 1000)])
def test_draws_the_tokens_of_the_host_path(rows: int, vocab: int, target_programs: int) -> None:
    scores, keys, counters = race_inputs(rows, vocab, seed=vocab)
    scores[0, vocab // 2 :] = float("-inf")  # as top-k or min_p leave a row
    top_p = torch.tensor([0.05, 0.5, 0.9, 1.0, 0.3, 0.7][:rows], device=DEVICE)
    for step in range(3):
        expected = gumbel.top_p_race(scores, top_p, keys, counters + step)
        tokens = top_p_race(scores, top_p, keys, counters + step, tile=16, target_programs=target_programs)
        assert torch.equal(tokens, expected)


def test_rows_cut_to_a_few_tokens_by_top_k_draw_as_the_host_path() -> None:
    """Most tiles then hold no token above the pivot, and skip their noise."""
    scores, keys, counters = race_inputs(5, 700, seed=6)
    kept = torch.rand(5, 700, generator=torch.Generator().manual_seed(7)).to(DEVICE) < 0.02
    scores = scores.masked_fill(~kept, float("-inf"))
    top_p = torch.tensor([0.95, 0.5, 0.2, 0.99, 1.0], device=DEVICE)
    for step in range(4):
        expected = gumbel.top_p_race(scores, top_p, keys, counters + step)
        assert torch.equal(top_p_race(scores, top_p, keys, counters + step, tile=16, target_programs=16), expected)


def test_a_small_nucleus_of_flat_tokens_takes_many_rounds_as_the_host_path() -> None:
    """Over 600 near-equal tokens a first draw almost never lands in the three-token nucleus: up to six rounds
    here, each among the tokens above the last rejected draw."""
    scores = torch.linspace(0.3, 0.0, 600, device=DEVICE).repeat(4, 1)
    _, keys, counters = race_inputs(4, 600, seed=8)
    top_p = torch.full((4,), 2.5 / 600, device=DEVICE)
    for step in range(3):
        tokens = top_p_race(scores, top_p, keys, counters + step, tile=16, target_programs=32)
        assert torch.equal(tokens, gumbel.top_p_race(scores, top_p, keys, counters + step))
        assert (tokens < 3).all()


def test_after_the_last_round_rejects_the_row_takes_its_top_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmserve.kernels import top_p as top_p_module

    monkeypatch.setattr(top_p_module, "MAX_ROUNDS", 1)
    monkeypatch.setattr(gumbel, "MAX_ROUNDS", 1)
    scores = torch.linspace(0.0, 0.3, 600, device=DEVICE).repeat(3, 1)  # the top token is the last
    _, keys, counters = race_inputs(3, 600, seed=9)
    top_p = torch.full((3,), 0.001, device=DEVICE)
    tokens = top_p_race(scores, top_p, keys, counters, tile=16)
    assert torch.equal(tokens, gumbel.top_p_race(scores, top_p, keys, counters))
    assert tokens.tolist() == [599, 599, 599]


def test_rows_of_a_wider_buffer_no_rows_and_bad_shapes() -> None:
    scores, keys, counters = race_inputs(3, 520, seed=0)
    top_p = torch.full((3,), 0.4, device=DEVICE)
    assert torch.equal(top_p_race(scores[:, :500], top_p, keys, counters, tile=16),
                       gumbel.top_p_race(scores[:, :500], top_p, keys, counters))
    assert top_p_race(scores[:0], top_p[:0], keys[:0], counters[:0]).shape == (0,)
    for bad in (scores[:, :0], scores[0]):  # no vocabulary; one row without its batch dimension
        with pytest.raises(ValueError, match="scores must be"):
            top_p_race(bad, top_p, keys, counters)


def test_every_row_count_launches_the_same_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling runs outside the CUDA graphs at every batch size: no constant may follow the row count."""
    from lmserve.kernels import top_p as top_p_module

    launched = record_launches(monkeypatch, top_p_module, ("_chunk_kernel", "_row_kernel"))
    for rows in (1, 3, 9, 20):  # 19 chunks of one tile each down to one chunk of 19 tiles
        scores, keys, counters = race_inputs(rows, 300, seed=rows)
        top_p = torch.full((rows,), 0.8, device=DEVICE)
        tokens = top_p_race(scores, top_p, keys, counters, tile=16, target_programs=32)
        assert torch.equal(tokens, gumbel.top_p_race(scores, top_p, keys, counters))
    assert len(set(launched)) == 2


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


def test_a_draw_at_the_edge_of_the_nucleus_does_not_depend_on_the_chunks_or_the_batch() -> None:
    # Stage 1 cuts a row into fewer, longer chunks as rows are added; the decision must not follow.
    scores, keys, counters = race_inputs(3, 512, seed=8)
    for top_p in edge_of_the_nucleus(scores[1].cpu(), keys[1].item(), counters[1].item(), ulps=2):
        batch_top_p = torch.tensor([0.9, top_p, 0.5], device=DEVICE)
        drawn = {top_p_race(scores[1:2], batch_top_p[1:2], keys[1:2], counters[1:2], tile=16,
                            target_programs=target)[0].item() for target in (1, 8, 1024)}
        drawn.add(top_p_race(scores, batch_top_p, keys, counters, tile=16, target_programs=8)[1].item())
        assert len(drawn) == 1, (top_p, drawn)
