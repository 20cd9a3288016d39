"""Writing a step's new keys and values into the paged KV cache, one token per program.

A float8 cache stores each value rounded to nearest even and saturated at +-448, as
`lmserve.attention.cache_dtype.to_cache_dtype` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmserve.attention.cache_dtype import FP8_MAX, store_rows

_FLOAT8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def cast_for_cache(x, dtype: tl.constexpr):
    """`x` as a cache of `dtype` stores it; float8 e4m3 saturates rather than overflowing (a NaN stays NaN)."""
    if dtype == tl.float8e4nv:
        x = tl.clamp(x.to(tl.float32), -_FLOAT8_MAX, _FLOAT8_MAX, propagate_nan=tl.PropagateNan.ALL)
    return x.to(dtype)


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    cache_ptr,
    slot_mapping_ptr,
    num_kv_heads,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_kv,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    BLOCK_SIZE: tl.constexpr,  # cache slots per block: fixed per engine, so the division compiles to a shift
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    # A slot of -1 marks a padding token (a CUDA graph replays a fixed batch size): nothing to store.
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    mask = (heads < num_kv_heads)[:, None]
    # The cache's last dimension is contiguous (checked by the launcher), as is the source's.
    cache_offsets = block * stride_cache_block + offset * stride_cache_slot + heads[:, None] * stride_cache_head
    cache_offsets += dims[None, :]

    cache_dtype = cache_ptr.dtype.element_ty
    key = tl.load(key_ptr + token * stride_key_token + heads[:, None] * stride_key_head + dims[None, :], mask=mask)
    tl.store(cache_ptr + cache_offsets, cast_for_cache(key, cache_dtype), mask=mask)
    value = tl.load(
        value_ptr + token * stride_value_token + heads[:, None] * stride_value_head + dims[None, :], mask=mask
    )
    tl.store(cache_ptr + stride_cache_kv + cache_offsets, cast_for_cache(value, cache_dtype), mask=mask)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store token t's key and value at cache slot `slot_mapping[t]` (= block * block_size + offset).

    `key`/`value` are [num_tokens, num_kv_heads, head_dim] (any token and head strides, e.g. views of a
    fused QKV projection); `kv_cache` is [2, num_blocks, block_size, num_kv_heads, head_dim], of their
    dtype or float8 e4m3. Tokens whose slot is -1 are skipped. Equal to
    `lmserve.attention.backend.write_kv_cache` otherwise.
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    check_kv_cache_write(key, value, kv_cache)
    _write_kv_cache_kernel[(num_tokens,)](
        key,
        value,
        kv_cache,
        slot_mapping,
        num_kv_heads,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        BLOCK_SIZE=kv_cache.shape[2],
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim,
    )


def reference_write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """The torch reference of `write_kv_cache`, padding slots (-1) included."""
    keep = slot_mapping >= 0
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    store_rows(kv_cache[0].view(-1, num_kv_heads, head_dim), slot_mapping[keep], key[keep])
    store_rows(kv_cache[1].view(-1, num_kv_heads, head_dim), slot_mapping[keep], value[keep])


def check_kv_cache_write(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor) -> None:
    """Raise unless keys and values [tokens, kv_heads, head_dim] can be stored in `kv_cache` as the kernels do."""
    check_kv_cache_layout(kv_cache, key.shape[1], key.shape[2])
    if value.shape != key.shape:
        raise ValueError(f"value {tuple(value.shape)} differs from key {tuple(key.shape)}")
    if key.stride(2) != 1 or value.stride(2) != 1:
        raise ValueError("key and value must be contiguous in head_dim")
    if key.dtype != value.dtype or kv_cache.dtype not in (key.dtype, torch.float8_e4m3fn):
        raise ValueError(f"key/value dtype {key.dtype}/{value.dtype} cannot be stored in a {kv_cache.dtype} cache")


def check_kv_cache_layout(kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    """Raise unless `kv_cache` has the layout both kernels assume; a clear error beats a silent wrong read."""
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[3:] != (num_kv_heads, head_dim):
        raise ValueError(
            f"kv_cache must be [2, num_blocks, block_size, {num_kv_heads}, {head_dim}], got {tuple(kv_cache.shape)}"
        )
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in head_dim")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
