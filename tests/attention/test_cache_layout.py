"""Each block's values lie transposed in the cache tensor, and writes through the planes land there."""

from __future__ import annotations

import pytest
import torch

from lmserve.attention.cache_layout import key_plane, store_slots, value_plane


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_a_slot_is_a_key_row_and_a_value_column(dtype: torch.dtype) -> None:
    num_blocks, block_size, num_kv_heads, head_dim = 3, 4, 2, 8
    kv_cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    rows = torch.randn(2, num_kv_heads, head_dim)
    slots = torch.tensor([9, 2])  # block 2 offset 1, block 0 offset 2

    store_slots(key_plane(kv_cache), slots, rows)
    store_slots(value_plane(kv_cache), slots, rows * 2)

    stored = rows.to(dtype).float()
    assert torch.equal(kv_cache[0, 2, 1].float(), stored[0]) and torch.equal(kv_cache[0, 0, 2].float(), stored[1])
    transposed_blocks = kv_cache[1].view(num_blocks, num_kv_heads, head_dim, block_size)
    assert torch.equal(transposed_blocks[2, :, :, 1].float(), (rows[0] * 2).to(dtype).float())
    assert torch.equal(transposed_blocks[0, :, :, 2].float(), (rows[1] * 2).to(dtype).float())
    assert int(kv_cache.float().ne(0).sum()) == 4 * num_kv_heads * head_dim - (rows == 0).sum() * 2
    assert value_plane(kv_cache).shape == key_plane(kv_cache).shape == (num_blocks, block_size, num_kv_heads, head_dim)
