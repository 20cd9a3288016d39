"""How keys and values lie in a layer's KV cache tensor, [2, num_blocks, block_size, num_kv_heads, head_dim].

Keys lie as the shape says: each slot's heads, each head's dims contiguous. Each block's values lie
transposed, as [num_kv_heads, head_dim, block_size]: a slot's value is a column. Attention multiplies the
softmax weights by the values with the keys' axis as the reduction axis, and the tensor cores take that
operand with the reduction axis contiguous. A float8 cache must be read that way: Hopper's transposing
shared-memory load has no 8-bit form, and with values laid out like keys the compiled kernel read them
from shared memory one byte at a time (64 byte loads per 64-key tile).

Everything that reads or writes the cache goes through `key_plane` and `value_plane`, views of the same
logical shape [num_blocks, block_size, num_kv_heads, head_dim] with their own strides.
"""

from __future__ import annotations

import torch

from lmserve.attention.cache_dtype import to_cache_dtype


def key_plane(kv_cache: torch.Tensor) -> torch.Tensor:
    """Keys as [num_blocks, block_size, num_kv_heads, head_dim]."""
    return kv_cache[0]


def value_plane(kv_cache: torch.Tensor) -> torch.Tensor:
    """Values as [num_blocks, block_size, num_kv_heads, head_dim]: a strided view of their transposed blocks."""
    num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape[1:]
    return kv_cache[1].view(num_blocks, num_kv_heads, head_dim, block_size).permute(0, 3, 1, 2)


def store_slots(plane: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """plane[slot] = row for each flat slot (block * block_size + offset), in the cache's dtype.

    Indexing has no float8 kernels: a float8 plane is written as its bytes."""
    rows = to_cache_dtype(rows, plane.dtype)
    if plane.dtype == torch.float8_e4m3fn:
        plane, rows = plane.view(torch.uint8), rows.view(torch.uint8)
    block_size = plane.shape[1]
    plane[slots // block_size, slots % block_size] = rows
