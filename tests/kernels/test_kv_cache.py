"""The Triton cache write stores exactly what the torch reference stores, and skips padding slots."""

from __future__ import annotations

import pytest
import torch

from lmserve.attention.backend import write_kv_cache as backend_write_kv_cache  # noqa: E402
from lmserve.kernels.kv_cache import reference_write_kv_cache, write_kv_cache  # noqa: E402
from tests.kernels.paged_batch import MIXED, make_batch  # noqa: E402


@pytest.mark.parametrize(
    ("dtype", "block_size", "num_kv_heads"),
    [(torch.float32, 16, 2), (torch.bfloat16, 32, 3), (torch.float16, 16, 1)],
)
def test_write_matches_reference(dtype: torch.dtype, block_size: int, num_kv_heads: int) -> None:
    batch = make_batch(MIXED, num_kv_heads, num_kv_heads, 32, block_size, dtype)
    expected = batch.kv_cache.clone()
    backend_write_kv_cache(batch.key, batch.value, expected, batch.metadata.slot_mapping)

    write_kv_cache(batch.key, batch.value, batch.kv_cache, batch.metadata.slot_mapping)

    assert torch.equal(batch.kv_cache, expected)


def test_float8_cache_stores_what_the_torch_path_stores() -> None:
    # Keys scaled far past float8 e4m3's range: both paths round to nearest even and saturate at +-448.
    # (On a CPU the interpreter converts through torch too: the rounding is checked for real on the GPU.)
    batch = make_batch(MIXED, 2, 2, 32, 16, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    key, slots = batch.key * 300, batch.metadata.slot_mapping
    expected = batch.kv_cache.clone()
    backend_write_kv_cache(key, batch.value, expected, slots)

    write_kv_cache(key, batch.value, batch.kv_cache, slots)

    assert torch.equal(batch.kv_cache.view(torch.uint8), expected.view(torch.uint8))
    stored_keys = batch.kv_cache[0].flatten(0, 1)[slots].float()
    assert stored_keys.abs().max() == 448 and not stored_keys.isnan().any()
    torch.testing.assert_close(stored_keys, key.float().clamp(-448, 448), rtol=0.07, atol=0.02)


def test_a_nan_stays_nan_in_a_float8_cache() -> None:
    batch = make_batch(MIXED, 2, 2, 32, 16, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    key, slots = batch.key.clone(), batch.metadata.slot_mapping
    key[3, 1, 5] = float("nan")
    write_kv_cache(key, batch.value, batch.kv_cache, slots)
    stored_keys = batch.kv_cache[0].flatten(0, 1)[slots].float()
    assert stored_keys[3, 1, 5].isnan() and stored_keys.isnan().sum() == 1


def test_padding_slots_are_skipped() -> None:
    # Every other token is padding (slot -1): the cache keeps its old contents at those tokens' slots.
    batch = make_batch(MIXED, 2, 2, 16, 16)
    real_slots = batch.metadata.slot_mapping[1::2]
    padding_slots = batch.metadata.slot_mapping[::2]
    slot_mapping = batch.metadata.slot_mapping.clone()
    slot_mapping[::2] = -1
    before = batch.kv_cache.clone()

    write_kv_cache(batch.key, batch.value, batch.kv_cache, slot_mapping)

    slots = batch.kv_cache.flatten(1, 2)  # [2, num_slots, num_kv_heads, head_dim]
    assert torch.equal(slots[:, padding_slots], before.flatten(1, 2)[:, padding_slots])
    assert torch.equal(slots[0, real_slots], batch.key[1::2])
    assert torch.equal(slots[1, real_slots], batch.value[1::2])
    expected = before.clone()
    reference_write_kv_cache(batch.key, batch.value, expected, slot_mapping)
    assert torch.equal(batch.kv_cache, expected)


def test_rejects_a_cache_of_another_layout() -> None:
    batch = make_batch(MIXED, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="kv_cache must be"):
        write_kv_cache(batch.key, batch.value, batch.kv_cache.transpose(3, 4), batch.metadata.slot_mapping)
