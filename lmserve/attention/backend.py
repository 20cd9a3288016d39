"""The contract between the model runner and an attention backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from lmserve.attention.cache_dtype import store_rows


@dataclass
class AttentionMetadata:
    """Where one step's tokens sit in the paged KV cache.

    The step's tokens are flattened: request i owns tokens `query_start_loc[i]:query_start_loc[i+1]`,
    which are the last tokens of its `seq_lens[i]`-long context. The KV cache of each layer is one tensor
    of shape [2, num_blocks, block_size, num_kv_heads, head_dim], of the model's dtype or float8;
    `block_tables[i]` lists request i's blocks in order (padded with 0), and `slot_mapping[t]` is the flat
    cache slot that token t writes.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64
    block_tables: torch.Tensor  # [num_requests, max_blocks_per_request] int64
    seq_lens: torch.Tensor  # [num_requests] int64
    query_start_loc: torch.Tensor  # [num_requests + 1] int64
    max_query_len: int
    max_seq_len: int  # an upper bound is enough (a CUDA graph's metadata holds the longest allowed)
    # Decode steps: the order in which attention takes the requests, longest context first (`longest_first`),
    # so that no long context starts last and runs on alone; None takes them in batch order.
    decode_order: torch.Tensor | None = None  # [num_requests] int64

    @property
    def num_requests(self) -> int:
        return self.seq_lens.shape[0]


@dataclass(frozen=True)
class Rotation:
    """A layer's rotary embedding of one step's queries and keys, left to the backend so that it can
    rotate the keys as it stores them (the Triton backend: in the launch that writes the cache).

    The kernels take the tensors; `apply(query, key)` rotates flat [num_tokens, heads * head_dim] tensors
    as the model's layer does (the same operation in torch), for a backend that rotates before it stores.
    """

    positions: torch.Tensor  # [num_tokens]
    cos_cache: torch.Tensor  # [max_positions, head_dim / 2], float32
    sin_cache: torch.Tensor
    head_norms: tuple[torch.Tensor, torch.Tensor, float] | None  # query weight, key weight, eps (Qwen3)
    apply: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class AttentionBackend(Protocol):
    """Rotates a step's queries and keys (given a `Rotation`), writes its new keys and values into the
    cache, then attends over each request's context (`forward`); or only attends, when the step's keys and
    values are already in the cache and its queries rotated (`attend`: the model fused those steps into its
    q/k/v projection).

    Without a rotation the keys are stored as given: for layers without rotary embeddings (NoPE layers,
    ALiBi models). With one, `query` and `key` are consumed: a backend may rotate them in place.
    """

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        ...

    def attend(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        ...


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store each token's key and value at its slot of the paged cache, in the cache's dtype."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    store_rows(kv_cache[0].view(-1, num_kv_heads, head_dim), slot_mapping, key)
    store_rows(kv_cache[1].view(-1, num_kv_heads, head_dim), slot_mapping, value)
