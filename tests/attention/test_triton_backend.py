"""The Triton backend is a drop-in for the torch reference: same outputs, same cache contents."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.triton_setup import use_interpreter_without_gpu

use_interpreter_without_gpu()  # before lmserve.kernels is imported

from lmserve.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from lmserve.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from tests.kernels.paged_batch import MIXED, make_batch  # noqa: E402


@pytest.mark.parametrize("sliding_window", [None, 6])
def test_matches_torch_backend_on_a_mixed_batch(sliding_window: int | None) -> None:
    # Two decode rows, a fresh prefill and a continued chunk; GQA with two query heads per kv head.
    batch = make_batch(MIXED, num_heads=4, num_kv_heads=2, head_dim=16, block_size=16)
    reference_cache = batch.kv_cache.clone()
    args = (batch.query, batch.key, batch.value)

    expected = TorchAttentionBackend().forward(*args, reference_cache, batch.metadata, 0.3, sliding_window)
    out = TritonAttentionBackend().forward(*args, batch.kv_cache, batch.metadata, 0.3, sliding_window)

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.kv_cache, reference_cache)


def test_matches_torch_backend_over_a_float8_cache() -> None:
    batch = make_batch(MIXED, 4, 2, 16, 16, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    reference_cache = batch.kv_cache.clone()
    args = (batch.query, batch.key, batch.value)

    expected = TorchAttentionBackend().forward(*args, reference_cache, batch.metadata, 0.3, None)
    out = TritonAttentionBackend().forward(*args, batch.kv_cache, batch.metadata, 0.3, None)

    torch.testing.assert_close(out, expected, rtol=1.6e-2, atol=1e-2)
    assert torch.equal(batch.kv_cache.view(torch.uint8), reference_cache.view(torch.uint8))
