"""The one-row matrix-vector kernel equals F.linear, with and without bias, on shapes that leave partial tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmserve.kernels.gemv import gemv
from tests.kernels.paged_batch import DEVICE

TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize(("features", "inputs", "block_n", "block_k"), [(40, 96, 8, 32), (17, 300, 16, 128)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_linear(dtype: torch.dtype, features: int, inputs: int, block_n: int, block_k: int,
                        with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(features * inputs)
    weight = (torch.randn(features, inputs, generator=generator) / inputs**0.5).to(device=DEVICE, dtype=dtype)
    bias = torch.randn(features, generator=generator).to(device=DEVICE, dtype=dtype) if with_bias else None
    x = torch.randn(1, inputs, generator=generator).to(device=DEVICE, dtype=dtype)

    out = gemv(x, weight, bias, block_n=block_n, block_k=block_k)

    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(dtype)
    tolerance = TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == (1, features)
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


def test_rejects_more_than_one_row() -> None:
    with pytest.raises(ValueError, match=r"x must be \[1, 8\]"):
        gemv(torch.zeros(2, 8, device=DEVICE), torch.zeros(4, 8, device=DEVICE))
