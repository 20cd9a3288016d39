"""The GPU attention backend: Triton kernels for the rotation and cache write, and the paged attention."""

from __future__ import annotations

import torch

from lmserve.attention.backend import AttentionMetadata, Rotation
from lmserve.kernels import paged_attention, rotary_embedding, write_kv_cache


class TritonAttentionBackend:
    """Same contract and results as `TorchAttentionBackend`, without gathering the context into copies.

    Two launches per layer and no host synchronisation (the metadata's ints are already on the host),
    so a step can be captured in a CUDA graph; padding tokens with slot -1 are not written. Given a
    `Rotation`, the first launch rotates the queries in place and the keys on their way into the cache.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        if rotation is None:
            write_kv_cache(key, value, kv_cache, metadata.slot_mapping)
        else:
            store = (value.flatten(1), kv_cache, metadata.slot_mapping)
            rotary_embedding(rotation.positions, query.flatten(1), key.flatten(1), rotation.cos_cache,
                             rotation.sin_cache, rotation.head_norms, store)
        return self.attend(query, kv_cache, metadata, scale, sliding_window)

    def attend(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
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
            decode_order=metadata.decode_order,
        )
