"""The rotary kernel rotates queries and keys in place exactly as the torch reference (the layer's CPU path) does."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from lmserve.kernels.kv_cache import reference_write_kv_cache
from lmserve.kernels.rotary import reference_rotary_embedding, rotary_embedding
from lmserve.models.layers import RMSNorm, RotaryEmbedding
from tests.kernels.paged_batch import DEVICE, MIXED, make_batch

TOLERANCES = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
POSITIONS = torch.tensor([0, 1, 7, 63, 64, 200, 255, 3])


def make_rotary(head_dim: int) -> RotaryEmbedding:
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, max_position_embeddings=256)
    return RotaryEmbedding(config, head_dim)


def random_tensor(*shape: int, dtype: torch.dtype, seed: int, device: str = DEVICE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) + 0.5).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 2, 16), (3, 3, 24), (2, 5, 64)])
def test_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    rotary, positions = make_rotary(head_dim).to(DEVICE), POSITIONS.to(DEVICE)
    # Views of a fused QKV output: rows are strided, as in the model.
    qkv = random_tensor(len(POSITIONS), (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=0)
    query, key = qkv[:, : heads * head_dim], qkv[:, heads * head_dim : (heads + kv_heads) * head_dim]
    value_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    expected_query, expected_key = reference_rotary_embedding(positions, query, key, rotary.cos_cache, rotary.sin_cache)

    rotary_embedding(positions, query, key, rotary.cos_cache, rotary.sin_cache)

    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(query, expected_query, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(key, expected_key, atol=tolerance, rtol=tolerance)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], value_before)  # values are left alone


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 2, 16), (3, 3, 24)])
def test_head_norms_are_fused_before_the_rotation(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    rotary, positions = make_rotary(head_dim).to(DEVICE), POSITIONS.to(DEVICE)
    qkv = random_tensor(len(POSITIONS), (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=3) * 3
    query, key = qkv[:, : heads * head_dim], qkv[:, heads * head_dim : (heads + kv_heads) * head_dim]
    norms = (random_tensor(head_dim, dtype=dtype, seed=4), random_tensor(head_dim, dtype=dtype, seed=5), 1e-6)
    expected_query, expected_key = reference_rotary_embedding(
        positions, query, key, rotary.cos_cache, rotary.sin_cache, norms
    )

    rotary_embedding(positions, query, key, rotary.cos_cache, rotary.sin_cache, norms)

    # The norm's sum of squares adds up in another order than torch's mean; in 16 bits, an ulp it rounds
    # differently then passes through three more roundings.
    tolerance = 2 * TOLERANCES[dtype]
    torch.testing.assert_close(query, expected_query, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(key, expected_key, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(
    ("dtype", "cache_dtype", "block_size", "heads", "kv_heads", "norms"),
    [
        (torch.float32, torch.float32, 16, 4, 2, False),
        (torch.bfloat16, torch.bfloat16, 32, 6, 3, True),
        (torch.float16, torch.float16, 16, 2, 1, False),
        (torch.bfloat16, torch.float8_e4m3fn, 16, 4, 2, True),
    ],
)
def test_keys_and_values_can_go_straight_to_the_cache(
    dtype: torch.dtype, cache_dtype: torch.dtype, block_size: int, heads: int, kv_heads: int, norms: bool
) -> None:
    """Rotated keys and the values land in their cache slots as rotation then the cache write put them;
    padding tokens (slot -1) store nothing, and `key` itself is left alone."""
    head_dim = 32
    batch = make_batch(MIXED, heads, kv_heads, head_dim, block_size, dtype, cache_dtype=cache_dtype)
    num_tokens = batch.query.shape[0]
    rotary = make_rotary(head_dim).to(DEVICE)
    positions = torch.randint(0, 256, (num_tokens,), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    slot_mapping = batch.metadata.slot_mapping.clone()
    slot_mapping[2] = -1
    query, key, value = (x.flatten(1) for x in (batch.query, batch.key, batch.value))
    head_norms = (random_tensor(head_dim, dtype=dtype, seed=4), random_tensor(head_dim, dtype=dtype, seed=5), 1e-6)
    head_norms = head_norms if norms else None
    expected_query, expected_key = reference_rotary_embedding(
        positions, query, key, rotary.cos_cache, rotary.sin_cache, head_norms
    )
    expected_cache = batch.kv_cache.clone()
    reference_write_kv_cache(expected_key.view(batch.key.shape), batch.value, expected_cache, slot_mapping)
    key_before = key.clone()

    rotary_embedding(positions, query, key, rotary.cos_cache, rotary.sin_cache, head_norms,
                     store=(value, batch.kv_cache, slot_mapping))

    tolerance = 2 * TOLERANCES[dtype]
    torch.testing.assert_close(query, expected_query, atol=tolerance, rtol=tolerance)
    assert torch.equal(key, key_before)
    # Keys within the rotation's rounding (float8: that can tip a key one float8 step, an eighth of it);
    # values and untouched slots exactly.
    stored, expected = batch.kv_cache.float(), expected_cache.float()
    key_rtol = 0.13 if cache_dtype == torch.float8_e4m3fn else tolerance
    torch.testing.assert_close(stored[0], expected[0], atol=tolerance, rtol=key_rtol)
    assert torch.equal(batch.kv_cache[1].view(torch.uint8), expected_cache[1].view(torch.uint8))
    padding_slot = batch.metadata.slot_mapping[2]
    stored_at, expected_at = (cache.flatten(1, 2)[:, padding_slot] for cache in (batch.kv_cache, expected_cache))
    assert torch.equal(stored_at.view(torch.uint8), expected_at.view(torch.uint8))


def test_store_rejects_a_cache_of_another_layout() -> None:
    rotary = make_rotary(16)
    query, key = torch.ones(8, 64), torch.ones(8, 32)
    cache = torch.zeros(2, 4, 16, 3, 16)  # three kv heads, the keys have two
    with pytest.raises(ValueError, match="kv_cache must be"):
        rotary_embedding(POSITIONS, query, key, rotary.cos_cache, rotary.sin_cache,
                         store=(torch.ones(8, 32), cache, torch.arange(8)))


def test_reference_with_head_norms_is_the_layer() -> None:
    """The layer's CPU path normalises each head with the model's q/k RMSNorm modules, then rotates."""
    rotary = make_rotary(32)
    query_norm, key_norm = RMSNorm(32, eps=1e-6), RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        query_norm.weight.copy_(random_tensor(32, dtype=torch.float32, seed=6, device="cpu"))
        key_norm.weight.copy_(random_tensor(32, dtype=torch.float32, seed=7, device="cpu"))
    query = random_tensor(len(POSITIONS), 4 * 32, dtype=torch.float32, seed=1, device="cpu")
    key = random_tensor(len(POSITIONS), 2 * 32, dtype=torch.float32, seed=2, device="cpu")

    expected = rotary(POSITIONS, query, key, (query_norm, key_norm))
    norms = (query_norm.weight.detach(), key_norm.weight.detach(), 1e-6)
    actual = reference_rotary_embedding(POSITIONS, query, key, rotary.cos_cache, rotary.sin_cache, norms)

    for tensor, reference in zip(actual, expected, strict=True):
        assert torch.equal(tensor, reference)


def test_reference_is_the_layer() -> None:
    rotary = make_rotary(32)
    # On the CPU: the layer's torch path.
    query = random_tensor(len(POSITIONS), 4 * 32, dtype=torch.bfloat16, seed=1, device="cpu")
    key = random_tensor(len(POSITIONS), 2 * 32, dtype=torch.bfloat16, seed=2, device="cpu")

    expected = rotary(POSITIONS, query, key)
    actual = reference_rotary_embedding(POSITIONS, query, key, rotary.cos_cache, rotary.sin_cache)

    for tensor, reference in zip(actual, expected, strict=True):
        assert torch.equal(tensor, reference)


def test_rejects_queries_that_are_not_whole_heads() -> None:
    rotary = make_rotary(16)
    with pytest.raises(ValueError, match="not \\[tokens, heads"):
        rotary_embedding(POSITIONS, torch.ones(8, 40), torch.ones(8, 32), rotary.cos_cache, rotary.sin_cache)
