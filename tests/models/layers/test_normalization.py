"""RMSNorm matches transformers' and fuses the residual add without changing the result."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from lmserve.models.layers import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, generator=generator)
    x = torch.randn(5, 64, generator=generator).to(dtype)
    norm, expected = RMSNorm(64, eps=1e-5).to(dtype), LlamaRMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        expected.weight.copy_(weight)
        assert torch.equal(norm(x), expected(x))


def test_fused_residual_add() -> None:
    generator = torch.Generator().manual_seed(0)
    x, residual = torch.randn(2, 5, 64, generator=generator)
    norm = RMSNorm(64)

    normed, new_residual = norm(x, residual)

    assert torch.equal(new_residual, x + residual)
    assert torch.equal(normed, norm(x + residual))
