"""The GPU attention backend: Triton kernels for the cache write and the paged attention."""

from __future__ import annotations

import torch

from lmserve.attention.backend import AttentionMetadata
from lmserve.kernels import paged_attention, write_kv_cache


class TritonAttentionBackend:
    """Same contract and results as `TorchAttentionBackend`, without gathering the context into copies.

    Two launches per layer and no host synchronisation (the metadata's ints are already on the host),
    so a step can be captured in a CUDA graph; padding tokens with slot -1 are not written.
    `split_counters` (int32 zeros, decode tokens times kv heads) is where decode steps that split their
    keys count the splits; the kernel leaves it zero, so one buffer at a fixed address serves every layer
    and every replayed graph. Without it each such launch allocates its own.
    """

    def __init__(self, split_counters: torch.Tensor | None = None) -> None:
        self.split_counters = split_counters

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
        write_kv_cache(key, value, kv_cache, metadata.slot_mapping)
        return paged_attention(
            query,
            kv_cache,
            metadata.block_tables,
            metadata.seq_lens,
            metadata.query_start_loc,
            metadata.max_query_len,
            scale,
            sliding_window,
            max_seq_len=metadata.max_seq_len,
            split_counters=self.split_counters,
        )
