"""The fused SwiGLU activation kernel equals the torch ops it replaces."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.activation import reference_silu_and_mul, silu_and_mul
from tests.kernels.paged_batch import DEVICE

TOLERANCES = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize(("tokens", "width"), [(1, 16), (5, 1000), (3, 2500)])  # 2500: several column blocks
def test_matches_reference(dtype: torch.dtype, tokens: int, width: int) -> None:
    generator = torch.Generator().manual_seed(width)
    # A view with a token stride wider than the row, as a slice of a bigger projection output would be.
    wide = (4 * torch.randn(tokens, 2 * width + 8, generator=generator)).to(device=DEVICE, dtype=dtype)
    gate_up = wide[:, : 2 * width]

    out = silu_and_mul(gate_up)

    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(out, reference_silu_and_mul(gate_up), atol=tolerance, rtol=tolerance)


def test_empty_batch_and_bad_shapes() -> None:
    assert silu_and_mul(torch.empty(0, 8, device=DEVICE)).shape == (0, 4)
    with pytest.raises(ValueError, match="gate_up must be"):
        silu_and_mul(torch.empty(2, 7, device=DEVICE))
