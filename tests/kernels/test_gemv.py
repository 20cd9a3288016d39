"""The small-batch projection kernel equals the unfused torch ops it replaces, for each fused prologue."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.gemv import MAX_ROWS, GemvTile, gemv, reference_gemv, supports
from tests.kernels.paged_batch import DEVICE

# Relative to the output's size: the kernel and torch sum the products in other orders and round
# the normalised input at other points.
TOLERANCES = {torch.float16: 4e-3, torch.bfloat16: 2e-2}
SMALL_TILE = GemvTile(block_n=16, block_k=64, num_stages=3)  # several column blocks and iterations


def random_tensor(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(device=DEVICE, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    error = (actual.float() - expected.float()).abs().max()
    assert error <= TOLERANCES[expected.dtype] * expected.float().abs().max(), error


def inputs(prologue: str, rows: int, num_in: int, num_out: int, dtype: torch.dtype, bias: bool) -> dict:
    width = 2 * num_in if prologue == "silu_and_mul" else num_in
    # A wider buffer's first columns: rows of x need not be packed.
    x = random_tensor(rows, width + 8, dtype=dtype, seed=rows * num_in, scale=2.0)[:, :width]
    arguments = {"x": x, "weight": random_tensor(num_out, num_in, dtype=dtype, seed=1, scale=num_in**-0.5)}
    if bias:
        arguments["bias"] = random_tensor(num_out, dtype=dtype, seed=2)
    if prologue != "none":
        arguments["prologue"] = prologue
    if prologue in ("rms_norm", "add_rms_norm"):
        arguments.update(norm_weight=random_tensor(num_in, dtype=dtype, seed=3) + 1, eps=1e-6)
    if prologue == "add_rms_norm":
        arguments["residual"] = random_tensor(rows, num_in, dtype=dtype, seed=4, scale=3.0)
    return arguments


SHAPES = [(1, 200, 40, False), (3, 64, 70, True), (4, 130, 17, False), (2, 40, 33, False)]  # rows, in, out, bias


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("prologue", ["none", "rms_norm", "add_rms_norm", "silu_and_mul"])
@pytest.mark.parametrize(("rows", "num_in", "num_out", "bias"), SHAPES)
def test_matches_reference(dtype: torch.dtype, prologue: str, rows: int, num_in: int, num_out: int, bias: bool) -> None:
    arguments = inputs(prologue, rows, num_in, num_out, dtype, bias)

    actual = gemv(**arguments, tile=SMALL_TILE)
    expected = reference_gemv(**arguments)

    if prologue == "add_rms_norm":
        assert_close(actual[0], expected[0])
        # Every column of the sum is written once, by the first column block of programs.
        assert_close(actual[1], expected[1])
    else:
        assert_close(actual, expected)


def test_default_tile_matches_reference() -> None:
    arguments = inputs("add_rms_norm", 2, 600, 50, torch.bfloat16, bias=False)
    actual, new_residual = gemv(**arguments)
    expected, expected_residual = reference_gemv(**arguments)
    assert_close(actual, expected)
    assert_close(new_residual, expected_residual)


def test_leaves_inputs_alone() -> None:
    arguments = inputs("add_rms_norm", 4, 96, 48, torch.float16, bias=False)
    before = {name: value.clone() for name, value in arguments.items() if isinstance(value, torch.Tensor)}
    gemv(**arguments, tile=SMALL_TILE)
    for name, value in before.items():
        assert torch.equal(arguments[name], value), name


def test_empty_batch_and_bad_inputs() -> None:
    weight = random_tensor(8, 32, dtype=torch.bfloat16, seed=0)
    assert gemv(torch.empty(0, 32, dtype=torch.bfloat16, device=DEVICE), weight).shape == (0, 8)
    too_many = random_tensor(MAX_ROWS + 1, 32, dtype=torch.bfloat16, seed=1)
    assert not supports(too_many, weight)
    with pytest.raises(ValueError, match="at most"):
        gemv(too_many, weight)
    with pytest.raises(ValueError, match="16-bit"):
        gemv(random_tensor(1, 32, dtype=torch.float32, seed=2), weight.float())
    with pytest.raises(ValueError, match=r"x must be \[rows, 64\]"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=3), weight, prologue="silu_and_mul")
    with pytest.raises(ValueError, match="norm weight"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=4), weight, prologue="rms_norm")
    with pytest.raises(ValueError, match="residual"):
        x, norm_weight = (random_tensor(*shape, dtype=torch.bfloat16, seed=5) for shape in ((1, 32), (32,)))
        gemv(x, weight, prologue="add_rms_norm", norm_weight=norm_weight)
    with pytest.raises(ValueError, match="prologue must be"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=7), weight, prologue="gelu")
