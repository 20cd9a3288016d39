"""Rotary position embedding over flat query/key projections, with Hugging Face's scaling variants."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lmserve.attention.backend import Rotation
from lmserve.errors import UnsupportedArchitectureError
from lmserve.models.layers.normalization import RMSNorm

_HAS_TRITON = importlib.util.find_spec("triton") is not None


def rope_settings(hf_config: Any) -> tuple[str, float]:
    """(rope_type, rope_theta): transformers 5 keeps both in `rope_parameters`, older configs in
    `rope_scaling` and a top-level `rope_theta`."""
    parameters = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    theta = parameters.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return rope_type, theta


def inverse_frequencies(hf_config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    """Per-pair rotation frequencies and the factor cos/sin are scaled by (yarn and longrope use it).

    Scaled variants come from transformers' own functions so that they match Hugging Face exactly.
    """
    rope_type, theta = rope_settings(hf_config)
    if rope_type == "default":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (theta**exponents), 1.0
    if rope_type not in ROPE_INIT_FUNCTIONS:
        supported = ", ".join(["default", *sorted(ROPE_INIT_FUNCTIONS)])
        raise UnsupportedArchitectureError(f"rope_type {rope_type!r} is not supported; supported: {supported}")
    return ROPE_INIT_FUNCTIONS[rope_type](hf_config)


class RotaryEmbedding(nn.Module):
    """Rotates each head of the queries and keys by its token's position.

    cos and sin of every position below `max_position_embeddings` are computed once, in float32; a step
    only gathers the rows of its positions. One instance is shared by all layers of a model.
    """

    def __init__(self, hf_config: Any, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq, attention_scaling = inverse_frequencies(hf_config, head_dim)
        positions = torch.arange(hf_config.max_position_embeddings, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]
        self.register_buffer("cos_cache", angles.cos() * attention_scaling, persistent=False)
        self.register_buffer("sin_cache", angles.sin() * attention_scaling, persistent=False)

    def forward(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        head_norms: tuple[RMSNorm, RMSNorm] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate flat [num_tokens, heads * head_dim] queries and keys; `positions` is [num_tokens].

        `head_norms` (query norm, key norm) RMS-normalise each head first, as Qwen3 does. On CUDA one
        Triton launch does it all in place; the torch code below is the reference (and the CPU path).
        """
        if query.is_cuda and _HAS_TRITON:
            from lmserve.kernels.rotary import rotary_embedding  # needs triton: import on demand

            rotary_embedding(positions, query, key, self.cos_cache, self.sin_cache, _norm_weights(head_norms))
            return query, key
        if head_norms is not None:
            query_norm, key_norm = head_norms
            query = query_norm(query.unflatten(-1, (-1, self.head_dim))).flatten(-2)
            key = key_norm(key.unflatten(-1, (-1, self.head_dim))).flatten(-2)
        # Cast like Hugging Face does, so that low-precision results match it.
        cos = self.cos_cache[positions].to(query.dtype)[:, None, :]
        sin = self.sin_cache[positions].to(query.dtype)[:, None, :]
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def rotation(self, positions: torch.Tensor, head_norms: tuple[RMSNorm, RMSNorm] | None = None) -> Rotation:
        """This step's rotation, for the attention backend to apply as it stores the keys."""
        return Rotation(positions, self.cos_cache, self.sin_cache, _norm_weights(head_norms),
                        apply=lambda query, key: self(positions, query, key, head_norms))

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # Pairs are (i, i + head_dim / 2): the "rotate half" layout of Hugging Face checkpoints.
        first, second = x.unflatten(-1, (-1, self.head_dim)).chunk(2, dim=-1)
        rotated = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
        return rotated.flatten(-2)


def _norm_weights(head_norms: tuple[RMSNorm, RMSNorm] | None) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(query weight, key weight, eps) of the per-head norms, as the rotary kernel takes them."""
    if head_norms is None:
        return None
    query_norm, key_norm = head_norms
    return query_norm.weight, key_norm.weight, query_norm.eps
