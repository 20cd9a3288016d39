"""Rotary position embedding of a step's queries and keys, one program per token, q and k in one launch.

Optionally each query and key head is RMS-normalised first (Qwen3's q_norm/k_norm), in the same launch:
the head is already in registers, so the two norms cost no extra pass over memory and no extra launch.
The rotated keys go back in place, or, given a paged KV cache, into their cache slots together with the
values: the cache write then needs no launch of its own, and the keys no second pass through memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmserve.kernels.kv_cache import cast_for_cache, check_kv_cache_write
from lmserve.kernels.rms_norm import reference_rms_norm


@triton.jit
def _normalize_head_half(x, inverse_rms, weight_ptr, offsets, pair_mask, dtype):
    # As the RMSNorm layer: normalise in float32, round to the input dtype, then scale by the weight in it.
    weight = tl.load(weight_ptr + offsets, mask=pair_mask, other=0.0).to(tl.float32)
    normalized = (x * inverse_rms[:, None]).to(dtype).to(tl.float32)
    return (normalized * weight[None, :]).to(dtype).to(tl.float32)


@triton.jit
def _rotate_heads(
    head_ptr, out_ptr, stride_out_head, heads, num_heads, pairs, pair_mask, cos, sin, norm_weight_ptr, eps,
    HALF: tl.constexpr, HAS_NORM: tl.constexpr,
):
    # Pairs are (i, i + head_dim / 2), the "rotate half" layout; heads are contiguous within a token.
    mask = (heads < num_heads)[:, None] & pair_mask[None, :]
    first_ptrs = head_ptr + heads[:, None] * (2 * HALF) + pairs[None, :]
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = head_ptr.dtype.element_ty
    if HAS_NORM:
        mean_square = (tl.sum(first * first, axis=1) + tl.sum(second * second, axis=1)) / (2 * HALF)
        inverse_rms = tl.rsqrt(mean_square + eps)
        first = _normalize_head_half(first, inverse_rms, norm_weight_ptr, pairs, pair_mask, dtype)
        second = _normalize_head_half(second, inverse_rms, norm_weight_ptr, pairs + HALF, pair_mask, dtype)
    # Each product is rounded to the input dtype before the sum, as the unfused torch ops (and Hugging Face) do.
    first_cos = (first * cos[None, :]).to(dtype).to(tl.float32)
    first_sin = (first * sin[None, :]).to(dtype).to(tl.float32)
    second_cos = (second * cos[None, :]).to(dtype).to(tl.float32)
    second_sin = (second * sin[None, :]).to(dtype).to(tl.float32)
    out_dtype = out_ptr.dtype.element_ty
    out_ptrs = out_ptr + heads[:, None] * stride_out_head + pairs[None, :]
    tl.store(out_ptrs, cast_for_cache((first_cos - second_sin).to(dtype), out_dtype), mask=mask)
    tl.store(out_ptrs + HALF, cast_for_cache((second_cos + first_sin).to(dtype), out_dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,
    key_ptr,
    value_ptr,  # STORE_KV: [tokens, kv_heads * head_dim]
    kv_cache_ptr,  # STORE_KV: [2, num_blocks, BLOCK_SIZE, kv_heads, head_dim]
    slot_mapping_ptr,  # STORE_KV: [tokens]
    cos_ptr,
    sin_ptr,
    positions_ptr,
    query_norm_ptr,
    key_norm_ptr,
    eps,
    num_heads,
    num_kv_heads,
    stride_query_token,
    stride_key_token,
    stride_value_token,
    stride_cache_position,
    stride_kv_cache_kv,
    stride_kv_cache_block,
    stride_kv_cache_slot,
    stride_kv_cache_head,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
    STORE_KV: tl.constexpr,  # keys and values go to their cache slots; else keys are rotated in place
    BLOCK_SIZE: tl.constexpr,  # cache slots per block (STORE_KV): fixed per engine, a shift
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    pairs = tl.arange(0, HALF_PAD)
    pair_mask = pairs < HALF
    # cos/sin are rounded to the query dtype first, as Hugging Face does, then used in float32.
    dtype = query_ptr.dtype.element_ty
    cos = tl.load(cos_ptr + position * stride_cache_position + pairs, mask=pair_mask, other=0.0)
    sin = tl.load(sin_ptr + position * stride_cache_position + pairs, mask=pair_mask, other=0.0)
    cos = cos.to(dtype).to(tl.float32)
    sin = sin.to(dtype).to(tl.float32)
    heads = tl.arange(0, HEADS_PAD)
    query_row = query_ptr + token * stride_query_token
    _rotate_heads(query_row, query_row, 2 * HALF, heads, num_heads, pairs, pair_mask, cos, sin,
                  query_norm_ptr, eps, HALF, HAS_NORM)
    key_row = key_ptr + token * stride_key_token
    if not STORE_KV:
        _rotate_heads(key_row, key_row, 2 * HALF, heads, num_kv_heads, pairs, pair_mask, cos, sin,
                      key_norm_ptr, eps, HALF, HAS_NORM)
    else:
        slot = tl.load(slot_mapping_ptr + token)
        # A slot of -1 marks a padding token (a CUDA graph replays a fixed batch size): nothing to store.
        if slot >= 0:
            slot_ptr = kv_cache_ptr + (slot // BLOCK_SIZE) * stride_kv_cache_block
            slot_ptr += (slot % BLOCK_SIZE) * stride_kv_cache_slot
            _rotate_heads(key_row, slot_ptr, stride_kv_cache_head, heads, num_kv_heads, pairs, pair_mask, cos,
                          sin, key_norm_ptr, eps, HALF, HAS_NORM)
            # Values are stored as they are, in the same two halves of each head.
            mask = (heads < num_kv_heads)[:, None] & pair_mask[None, :]
            value_ptrs = value_ptr + token * stride_value_token + heads[:, None] * (2 * HALF) + pairs[None, :]
            value_slot_ptrs = slot_ptr + stride_kv_cache_kv + heads[:, None] * stride_kv_cache_head + pairs[None, :]
            cache_dtype = kv_cache_ptr.dtype.element_ty
            for half in tl.static_range(2):
                value = tl.load(value_ptrs + half * HALF, mask=mask)
                tl.store(value_slot_ptrs + half * HALF, cast_for_cache(value, cache_dtype), mask=mask)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    head_norms: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    store: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Rotate flat queries [num_tokens, heads * head_dim] and keys [num_tokens, kv_heads * head_dim].

    Any token stride works (views of a fused QKV projection), but each row must be contiguous.
    `cos_cache`/`sin_cache` are [max_positions, head_dim / 2]. `head_norms` (query weight, key weight,
    eps; weights [head_dim]) RMS-normalises every head first. Queries are rotated in place. Keys are too,
    unless `store` (values [num_tokens, kv_heads * head_dim], a paged KV cache as `write_kv_cache` takes,
    slot mapping) is given: then the rotated keys and the values go to their tokens' cache slots (slot -1:
    nowhere) and `key` is left as it was. Equal to `reference_rotary_embedding` (then `write_kv_cache`).
    """
    half = cos_cache.shape[1]
    head_dim = 2 * half
    num_tokens = query.shape[0]
    if query.shape[1] % head_dim or key.shape[1] % head_dim or key.shape[0] != num_tokens:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} are not [tokens, heads * {head_dim}]")
    if query.stride(1) != 1 or key.stride(1) != 1 or not cos_cache.is_contiguous() or not sin_cache.is_contiguous():
        raise ValueError("query and key rows and the cos/sin caches must be contiguous")
    if query.dtype != key.dtype:
        raise ValueError(f"query dtype {query.dtype} differs from key dtype {key.dtype}")
    num_heads, num_kv_heads = query.shape[1] // head_dim, key.shape[1] // head_dim
    value, kv_cache, slot_mapping = store if store is not None else (key, key, positions)  # unread without
    if store is not None:
        if value.shape != key.shape or value.stride(1) != 1:
            shape = tuple(value.shape)
            raise ValueError(f"value must be shaped as key, {tuple(key.shape)}, with contiguous rows, got {shape}")
        heads_view = (num_tokens, num_kv_heads, head_dim)
        check_kv_cache_write(key.view(heads_view), value.view(heads_view), kv_cache)
        if slot_mapping.shape != (num_tokens,):
            raise ValueError(f"slot_mapping must be [{num_tokens}], got {tuple(slot_mapping.shape)}")
    if num_tokens == 0:
        return
    query_norm, key_norm, eps = head_norms if head_norms is not None else (query, key, 0.0)  # unread without
    if head_norms is not None and (query_norm.shape != (head_dim,) or key_norm.shape != (head_dim,)):
        shapes = f"{tuple(query_norm.shape)}, {tuple(key_norm.shape)}"
        raise ValueError(f"head norm weights must be [{head_dim}], got {shapes}")
    cache_strides = kv_cache.stride()[:4] if store is not None else (0, 0, 0, 0)
    _rotary_kernel[(num_tokens,)](
        query,
        key,
        value,
        kv_cache,
        slot_mapping,
        cos_cache,
        sin_cache,
        positions,
        query_norm,
        key_norm,
        eps,
        num_heads,
        num_kv_heads,
        query.stride(0),
        key.stride(0),
        value.stride(0),
        cos_cache.stride(0),
        *cache_strides,
        HALF=half,
        HALF_PAD=triton.next_power_of_2(half),
        HEADS_PAD=triton.next_power_of_2(max(num_heads, num_kv_heads)),
        HAS_NORM=head_norms is not None,
        STORE_KV=store is not None,
        BLOCK_SIZE=kv_cache.shape[2] if store is not None else 1,
    )


def reference_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    head_norms: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path of `lmserve.models.layers.RotaryEmbedding`, returning new tensors."""
    head_dim = 2 * cos_cache.shape[1]
    if head_norms is not None:
        query_norm, key_norm, eps = head_norms
        query = reference_rms_norm(query.unflatten(-1, (-1, head_dim)), query_norm, eps).flatten(-2)
        key = reference_rms_norm(key.unflatten(-1, (-1, head_dim)), key_norm, eps).flatten(-2)
    cos = cos_cache[positions].to(query.dtype)[:, None, :]
    sin = sin_cache[positions].to(query.dtype)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.unflatten(-1, (-1, head_dim)).chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).flatten(-2)

    return rotate(query), rotate(key)
