"""Reference attention in plain torch: gathers each request's context through its block table."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmserve.attention.backend import AttentionMetadata, Rotation, write_kv_cache


class TorchAttentionBackend:
    """Correct on any device and simple to read; the Triton kernels are tested against it.

    Queries are padded into a [requests, max_query_len] grid so one batched
    `scaled_dot_product_attention` call covers prefill chunks and decode tokens alike.
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
        if rotation is not None:
            rotated_query, rotated_key = rotation.apply(query.flatten(1), key.flatten(1))
            query, key = rotated_query.view(query.shape), rotated_key.view(key.shape)
        write_kv_cache(key, value, kv_cache, metadata.slot_mapping)
        return self.attend(query, kv_cache, metadata, scale, sliding_window)

    def attend(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
        block_size = kv_cache.shape[2]
        num_requests = metadata.num_requests
        num_tokens, num_heads, head_dim = query.shape

        # Each request's context, in order: [requests, num_kv_heads, context, head_dim].
        num_blocks = -(-metadata.max_seq_len // block_size)
        block_tables = metadata.block_tables[:, :num_blocks]
        keys = kv_cache[0][block_tables].flatten(1, 2).transpose(1, 2).to(query.dtype)
        values = kv_cache[1][block_tables].flatten(1, 2).transpose(1, 2).to(query.dtype)

        # Token t of the flat batch is query row `offset[t]` of request `owner[t]`.
        query_lens = metadata.query_start_loc[1:] - metadata.query_start_loc[:-1]
        owner = torch.repeat_interleave(torch.arange(num_requests, device=query.device), query_lens)
        offset = torch.arange(num_tokens, device=query.device) - metadata.query_start_loc[owner]
        padded = query.new_zeros(num_requests, metadata.max_query_len, num_heads, head_dim)
        padded[owner, offset] = query

        # A query at position p sees keys at positions <= p (and > p - window with a sliding window).
        query_pos = (metadata.seq_lens - query_lens)[:, None] + torch.arange(
            metadata.max_query_len, device=query.device
        )
        key_pos = torch.arange(keys.shape[2], device=query.device)
        mask = key_pos[None, None, :] <= query_pos[:, :, None]
        if sliding_window is not None:
            mask &= key_pos[None, None, :] > query_pos[:, :, None] - sliding_window

        # Each key/value head serves `group` query heads. Repeating them beats `enable_gqa=True`, which
        # takes a path hundreds of times slower on the CPU (torch 2.13).
        group = num_heads // keys.shape[1]
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(padded.transpose(1, 2), keys, values, attn_mask=mask[:, None], scale=scale)
        return out.transpose(1, 2)[owner, offset]
