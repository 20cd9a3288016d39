"""The Triton backend is a drop-in for the torch reference: same outputs, same cache contents."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.triton_setup import use_interpreter_without_gpu

use_interpreter_without_gpu()  # before lmserve.kernels is imported

from transformers import LlamaConfig  # noqa: E402

from lmserve.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from lmserve.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from lmserve.models.layers import RMSNorm, RotaryEmbedding  # noqa: E402
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


@pytest.mark.parametrize(("dtype", "cache_dtype", "norms"), [(torch.float32, None, False), (torch.bfloat16, None, True),
                                                           (torch.bfloat16, torch.float8_e4m3fn, True)])
def test_rotates_queries_and_keys_as_the_torch_backend_does(
    dtype: torch.dtype, cache_dtype: torch.dtype | None, norms: bool
) -> None:
    """Given a layer's rotation, the Triton backend rotates in its cache-write launch, the torch backend
    first: keys stored within the rotation's rounding, values exactly, and the same outputs (over a
    float8 cache a key one float8 step apart moves them further, so there the bound is loose)."""
    batch = make_batch(MIXED, 4, 2, 16, 16, dtype, cache_dtype=cache_dtype)
    rotary = RotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64), 16)
    rotary = rotary.to(batch.query.device)
    head_norms = (RMSNorm(16, eps=1e-6), RMSNorm(16, eps=1e-6)) if norms else None
    if head_norms:
        with torch.no_grad():
            for index, norm in enumerate(head_norms):
                norm.weight.copy_(torch.rand(16, generator=torch.Generator().manual_seed(index)) + 0.5)
            head_norms = tuple(norm.to(batch.query.device, dtype) for norm in head_norms)
    # Each token's position in its request: its context, then the new tokens in order.
    query_lens = batch.metadata.query_start_loc.diff()
    first = (batch.metadata.seq_lens - query_lens).repeat_interleave(query_lens)
    offset = torch.arange(len(first), device=first.device) - batch.metadata.query_start_loc[:-1].repeat_interleave(
        query_lens)
    positions = first + offset
    reference_cache = batch.kv_cache.clone()
    reference_args = tuple(x.clone() for x in (batch.query, batch.key, batch.value))

    expected = TorchAttentionBackend().forward(*reference_args, reference_cache, batch.metadata, 0.3, None,
                                               rotary.rotation(positions, head_norms))
    out = TritonAttentionBackend().forward(batch.query, batch.key, batch.value, batch.kv_cache, batch.metadata, 0.3,
                                           None, rotary.rotation(positions, head_norms))

    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    # 16 bits: keys an ulp apart (the head norm sums in another order) move an output by up to a few %.
    output_tolerance = 0.3 if cache_dtype else 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out, expected, rtol=output_tolerance, atol=output_tolerance)
    key_rtol = 0.13 if cache_dtype else tolerance  # float8: a rounding can tip a key one float8 step
    torch.testing.assert_close(batch.kv_cache[0].float(), reference_cache[0].float(), rtol=key_rtol, atol=tolerance)
    assert torch.equal(batch.kv_cache[1].view(torch.uint8), reference_cache[1].view(torch.uint8))
