"""The two-stage argmax kernel equals torch.argmax (first index on ties, NaN ranked above everything), and
its random-sampling form draws the tokens of the torch race (lmserve.sample.gumbel) from the same bits."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.argmax import argmax, gumbel_race, reference_argmax
from lmserve.sample import gumbel
from tests.kernels.paged_batch import DEVICE
from tests.kernels.triton_setup import record_launches

# Small tiles and launches, so that rows span several chunks and stage 2 has work under the interpreter.
SMALL = {"tile": 16, "target_programs": 8}


def random_logits(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 1), (1, 17), (3, 500), (5, 1001), (2, 40)])
def test_matches_torch(dtype: torch.dtype, rows: int, vocab: int) -> None:
    logits = random_logits(rows, vocab, dtype, seed=vocab)
    assert torch.equal(argmax(logits, **SMALL), reference_argmax(logits))


def test_default_launch_on_a_wide_row() -> None:
    logits = random_logits(2, 40_000, torch.bfloat16)
    assert torch.equal(argmax(logits), reference_argmax(logits))


def test_ties_go_to_the_first_index() -> None:
    logits = torch.zeros(4, 300, device=DEVICE)
    logits[0, [5, 200]] = 3.0  # in different chunks
    logits[1, [40, 41]] = 3.0  # in one tile
    logits[2, [290, 17]] = 3.0  # the later chunk written first
    # Row 3: all zeros, the first column wins.
    assert argmax(logits, **SMALL).tolist() == [5, 40, 17, 0] == reference_argmax(logits).tolist()


def test_nan_and_infinities_rank_as_torch_ranks_them() -> None:
    logits = random_logits(4, 300, torch.float32)
    logits[0, [250, 70]] = float("nan")  # the first NaN wins, over everything
    logits[0, 3] = float("inf")
    logits[1] = float("-inf")  # every column -inf: the first
    logits[2, 123] = float("inf")
    logits[3, 299] = float("nan")  # the last column, in the last, partial chunk
    assert argmax(logits, **SMALL).tolist() == [70, 0, 123, 299] == reference_argmax(logits).tolist()


def test_rows_of_a_wider_buffer_and_bad_shapes() -> None:
    wide = random_logits(3, 520, torch.float16)
    logits = wide[:, :500]  # rows with a stride wider than the vocabulary
    assert torch.equal(argmax(logits, **SMALL), reference_argmax(logits))
    assert argmax(torch.empty(0, 8, device=DEVICE)).shape == (0,)
    with pytest.raises(ValueError, match="scores must be"):
        argmax(torch.empty(2, 0, device=DEVICE))
    with pytest.raises(ValueError, match="scores must be"):
        argmax(torch.empty(8, device=DEVICE))


def race_inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys over the whole int64 range, counters past 32 bits, temperatures in [0.3, 1.3)."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator)
    counters = torch.randint(0, 2**40, (rows,), generator=generator)
    temperature = torch.rand(rows, generator=generator) + 0.3
    return keys.to(DEVICE), counters.to(DEVICE), temperature.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 17), (3, 500), (5, 1001)])
@pytest.mark.parametrize("tempered", [False, True], ids=["untempered", "tempered"])
def test_race_draws_the_tokens_of_the_torch_race(dtype: torch.dtype, rows: int, vocab: int, tempered: bool) -> None:
    logits = random_logits(rows, vocab, dtype, seed=vocab) * 3
    keys, counters, temperature = race_inputs(rows, seed=vocab)
    temperature = temperature if tempered else None
    expected = gumbel.gumbel_race(logits, temperature, keys, counters)
    assert torch.equal(gumbel_race(logits, temperature, keys, counters, **SMALL), expected)


def test_race_keeps_masked_tokens_out_and_follows_each_rows_stream() -> None:
    logits = random_logits(4, 300, torch.float32)
    logits[:, 20:] = float("-inf")  # as top-k leaves a row
    keys, counters, _ = race_inputs(4, seed=1)
    tokens = torch.stack([gumbel_race(logits, None, keys, counters + step, **SMALL) for step in range(12)])
    assert (tokens < 20).all()
    assert len(set(tokens[:, 0].tolist())) > 1  # a row's counter moves its draw
    # A row's draw depends on its own key and counter only, not on its place in the batch.
    flipped = gumbel_race(logits.flip(0), None, keys.flip(0), counters.flip(0), **SMALL)
    assert torch.equal(flipped.flip(0), tokens[0])


def test_every_row_count_launches_the_same_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling meets every batch size outside the CUDA graphs: a constant that followed the row count
    would compile a new kernel variant (a stalled step) at each new one."""
    from lmserve.kernels import argmax as argmax_module

    launched = record_launches(monkeypatch, argmax_module, ("_chunk_argmax_kernel", "_row_argmax_kernel"))
    for rows in (1, 3, 9, 40):
        logits = random_logits(rows, 3000, torch.float32, seed=rows)
        assert torch.equal(argmax(logits, tile=16, target_programs=64), reference_argmax(logits))
    assert len(set(launched)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_no_row_count_compiles_a_new_variant() -> None:
    from lmserve.kernels import argmax as argmax_module

    kernels = (argmax_module._chunk_argmax_kernel, argmax_module._row_argmax_kernel)
    argmax(random_logits(1, 128256, torch.bfloat16))
    keys, counters, temperature = race_inputs(1, seed=0)
    gumbel_race(random_logits(1, 128256, torch.bfloat16), temperature, keys, counters)
    device = torch.cuda.current_device()
    compiled = [len(kernel.device_caches[device][0]) for kernel in kernels]
    for rows in (2, 9, 16, 17, 33, 64, 100, 256):
        logits = random_logits(rows, 128256, torch.bfloat16, seed=rows)
        assert torch.equal(argmax(logits), reference_argmax(logits))
        keys, counters, temperature = race_inputs(rows, seed=rows)
        assert torch.equal(gumbel_race(logits, temperature, keys, counters),
                           gumbel.gumbel_race(logits, temperature, keys, counters))
    assert [len(kernel.device_caches[device][0]) for kernel in kernels] == compiled
