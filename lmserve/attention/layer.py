"""The attention layer a model holds: it owns a layer's KV cache and delegates to a backend."""

from __future__ import annotations

import torch
from torch import nn

from lmserve.attention.backend import AttentionBackend, AttentionMetadata, Rotation


class Attention(nn.Module):
    """Paged attention for one layer. The model runner binds its cache and backend after allocation."""

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, sliding_window: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.kv_cache: torch.Tensor | None = None
        self.backend: AttentionBackend | None = None

    def bind(self, kv_cache: torch.Tensor, backend: AttentionBackend) -> None:
        self.kv_cache = kv_cache
        self.backend = backend

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        metadata: AttentionMetadata,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        """Take flat [num_tokens, heads * head_dim] projections, queries and keys not yet rotated when a
        `rotation` is given; return the same shape for queries."""
        num_tokens = query.shape[0]
        out = self.backend.forward(
            query.view(num_tokens, self.num_heads, self.head_dim),
            key.view(num_tokens, self.num_kv_heads, self.head_dim),
            value.view(num_tokens, self.num_kv_heads, self.head_dim),
            self.kv_cache,
            metadata,
            self.scale,
            self.sliding_window,
            rotation,
        )
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def attend(self, query: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Attention of flat, already rotated queries [num_tokens, heads * head_dim] over a cache that already
        holds this step's keys and values; returns the same shape."""
        num_tokens = query.shape[0]
        out = self.backend.attend(query.view(num_tokens, self.num_heads, self.head_dim), self.kv_cache, metadata,
                                  self.scale, self.sliding_window)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)
