"""The fused RMSNorm kernel matches the torch reference, with and without the residual add, per row or per head."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.rms_norm import reference_rms_norm, rms_norm
from lmserve.models.layers import RMSNorm
from tests.kernels.paged_batch import DEVICE

TOLERANCES = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def random_tensor(*shape: int, dtype: torch.dtype, seed: int, device: str = DEVICE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) + 0.5).to(device=device, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tolerance = TOLERANCES[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("width", [64, 96, 1000])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(dtype: torch.dtype, width: int, with_residual: bool) -> None:
    x = random_tensor(5, width, dtype=dtype, seed=0)
    weight = random_tensor(width, dtype=dtype, seed=1)
    residual = random_tensor(5, width, dtype=dtype, seed=2) if with_residual else None

    actual = rms_norm(x, weight, 1e-6, residual)
    expected = reference_rms_norm(x, weight, 1e-6, residual)

    if with_residual:
        assert_close(actual[0], expected[0])
        assert_close(actual[1], expected[1])
        if dtype != torch.bfloat16:  # the interpreter truncates float32 to bfloat16; GPUs round to nearest
            assert torch.equal(actual[1], expected[1])
    else:
        assert_close(actual, expected)


def test_normalizes_each_head_of_a_fused_projection_view() -> None:
    # Qwen3's q_norm: [tokens, heads, head_dim] views of the query columns of a fused QKV output.
    tokens, heads, kv_heads, head_dim = 3, 4, 2, 32
    qkv = random_tensor(tokens, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16, seed=3)
    query = qkv[:, : heads * head_dim].unflatten(-1, (heads, head_dim))
    weight = random_tensor(head_dim, dtype=torch.bfloat16, seed=4)

    actual = rms_norm(query, weight, 1e-6)

    assert actual.is_contiguous()
    assert_close(actual, reference_rms_norm(query, weight, 1e-6))


def test_reference_is_the_layer() -> None:
    # The reference must stay what the model's CPU path computes.
    norm = RMSNorm(48, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = random_tensor(48, dtype=torch.bfloat16, seed=5, device="cpu")
    x = random_tensor(4, 48, dtype=torch.bfloat16, seed=6, device="cpu")
    residual = random_tensor(4, 48, dtype=torch.bfloat16, seed=7, device="cpu")

    assert torch.equal(norm(x), reference_rms_norm(x, norm.weight, 1e-5))
    for actual, expected in zip(norm(x, residual), reference_rms_norm(x, norm.weight, 1e-5, residual), strict=True):
        assert torch.equal(actual, expected)


def test_rejects_rows_wider_than_one_program() -> None:
    with pytest.raises(ValueError, match="width must be at most"):
        rms_norm(torch.ones(1, 16384, device=DEVICE), torch.ones(16384, device=DEVICE), 1e-6)
