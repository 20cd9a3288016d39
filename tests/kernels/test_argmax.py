"""The two-stage argmax kernel equals torch.argmax: first index on ties, NaN ranked above everything."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.argmax import argmax, reference_argmax
from tests.kernels.paged_batch import DEVICE

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
    with pytest.raises(ValueError, match="logits must be"):
        argmax(torch.empty(2, 0, device=DEVICE))
    with pytest.raises(ValueError, match="logits must be"):
        argmax(torch.empty(8, device=DEVICE))
