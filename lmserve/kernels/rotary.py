"""Rotary position embedding of a step's queries and keys in place, one program per token, q and k in one launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(head_ptr, heads, num_heads, pairs, pair_mask, cos, sin, HALF: tl.constexpr):
    # Pairs are (i, i + head_dim / 2), the "rotate half" layout; heads are contiguous within a token.
    mask = (heads < num_heads)[:, None] & pair_mask[None, :]
    first_ptrs = head_ptr + heads[:, None] * (2 * HALF) + pairs[None, :]
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    # Each product is rounded to the input dtype before the sum, as the unfused torch ops (and Hugging Face) do.
    dtype = head_ptr.dtype.element_ty
    first_cos = (first * cos[None, :]).to(dtype).to(tl.float32)
    first_sin = (first * sin[None, :]).to(dtype).to(tl.float32)
    second_cos = (second * cos[None, :]).to(dtype).to(tl.float32)
    second_sin = (second * sin[None, :]).to(dtype).to(tl.float32)
    tl.store(first_ptrs, (first_cos - second_sin).to(dtype), mask=mask)
    tl.store(first_ptrs + HALF, (second_cos + first_sin).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,
    key_ptr,
    cos_ptr,
    sin_ptr,
    positions_ptr,
    num_heads,
    num_kv_heads,
    stride_query_token,
    stride_key_token,
    stride_cache_position,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
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
    _rotate_heads(query_ptr + token * stride_query_token, heads, num_heads, pairs, pair_mask, cos, sin, HALF)
    _rotate_heads(key_ptr + token * stride_key_token, heads, num_kv_heads, pairs, pair_mask, cos, sin, HALF)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> None:
    """Rotate flat queries [num_tokens, heads * head_dim] and keys [num_tokens, kv_heads * head_dim] in place.

    Any token stride works (views of a fused QKV projection), but each row must be contiguous.
    `cos_cache`/`sin_cache` are [max_positions, head_dim / 2]; equal to `reference_rotary_embedding` otherwise.
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
    if num_tokens == 0:
        return
    num_heads, num_kv_heads = query.shape[1] // head_dim, key.shape[1] // head_dim
    _rotary_kernel[(num_tokens,)](
        query,
        key,
        cos_cache,
        sin_cache,
        positions,
        num_heads,
        num_kv_heads,
        query.stride(0),
        key.stride(0),
        cos_cache.stride(0),
        HALF=half,
        HALF_PAD=triton.next_power_of_2(half),
        HEADS_PAD=triton.next_power_of_2(max(num_heads, num_kv_heads)),
    )


def reference_rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path of `lmserve.models.layers.RotaryEmbedding`, returning new tensors."""
    head_dim = 2 * cos_cache.shape[1]
    cos = cos_cache[positions].to(query.dtype)[:, None, :]
    sin = sin_cache[positions].to(query.dtype)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.unflatten(-1, (-1, head_dim)).chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).flatten(-2)

    return rotate(query), rotate(key)
