"""The Llama decoder family: Llama, Mistral and Qwen2; Qwen3 parametrises it in `qwen3.py`.

Module names follow Hugging Face's (`model.layers.N.self_attn...`) so checkpoint names map over directly,
except that q/k/v and gate/up are fused into `qkv_proj` and `gate_up_proj`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.attention import Attention, AttentionMetadata
from lmserve.errors import UnsupportedArchitectureError
from lmserve.models.layers import MergedLinear, RMSNorm, RotaryEmbedding
from lmserve.models.layers.projection import (
    fuses,
    gated_projection,
    normed_projection,
    projection,
    stored_qkv_projection,
)
from lmserve.models.weights import StackedMapping, load_stacked_weights

STACKED_PARAMS: StackedMapping = (
    ("qkv_proj", "q_proj", 0),
    ("qkv_proj", "k_proj", 1),
    ("qkv_proj", "v_proj", 2),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


@dataclass(frozen=True)
class AttentionOptions:
    """Where a family's attention block departs from Llama's."""

    qkv_bias: bool
    output_bias: bool
    qk_norm: bool = False  # RMS-normalise each query and key head before rotary (Qwen3)


def head_dim_of(hf_config: Any) -> int:
    """Explicit `head_dim` when the config sets one (Qwen3 does), else hidden size / heads."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def sliding_window_of(hf_config: Any, layer_index: int) -> int | None:
    """The layer's attention window, or None for full attention.

    Mistral's `sliding_window` covers every layer; Qwen2/3 apply theirs only with `use_sliding_window`,
    and then only to the layers that `layer_types` marks as sliding.
    """
    window = getattr(hf_config, "sliding_window", None)
    if window is None or not getattr(hf_config, "use_sliding_window", True):
        return None
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None and layer_types[layer_index] != "sliding_attention":
        return None
    return window


class LlamaAttention(nn.Module):
    """The norm before it, the fused q/k/v projection, rotary and paged attention, the output projection.

    At one row on the GPU (decode at batch 1) the projection itself rotates and stores the keys and values
    (`stored_qkv_projection`), unless per-head norms need whole heads first (Qwen3) or the heads are not a
    power of two >= 16 wide, which only the torch backend serves."""

    def __init__(
        self, hf_config: Any, layer_index: int, rotary_emb: RotaryEmbedding, options: AttentionOptions
    ) -> None:
        super().__init__()
        num_heads = hf_config.num_attention_heads
        num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
        self.head_dim = head_dim_of(hf_config)
        self.q_size = num_heads * self.head_dim
        self.kv_size = num_kv_heads * self.head_dim
        hidden_size = hf_config.hidden_size
        self.qkv_proj = MergedLinear(hidden_size, [self.q_size, self.kv_size, self.kv_size], options.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, hidden_size, bias=options.output_bias)
        self.q_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps) if options.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps) if options.qk_norm else None
        self.head_norms = (self.q_norm, self.k_norm) if options.qk_norm else None
        # The projection stores keys and values itself only where the cache kernels take the heads (a power of
        # two >= 16; the torch backend takes any other) and no per-head norm needs whole heads first.
        cache_kernels_take = self.head_dim >= 16 and not self.head_dim & (self.head_dim - 1)
        self.stores_in_projection = cache_kernels_take and not options.qk_norm
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            num_heads, num_kv_heads, self.head_dim, self.head_dim**-0.5, sliding_window_of(hf_config, layer_index)
        )

    def forward(
        self,
        positions: torch.Tensor,
        norm: RMSNorm,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, residual) of attention over norm(hidden + residual), as `normed_projection` adds."""
        rotation = self.rotary_emb.rotation(positions, self.head_norms)  # applied by the attention backend
        if self.stores_in_projection and fuses(hidden, self.qkv_proj):
            query, residual = stored_qkv_projection(norm, self.qkv_proj, hidden, residual, self.attn, rotation,
                                                    metadata)
            attended = self.attn.attend(query, metadata)
        else:
            qkv, residual = normed_projection(norm, self.qkv_proj, hidden, residual)
            query, key, value = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            attended = self.attn(query, key, value, metadata, rotation)
        return projection(self.o_proj, attended), residual


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), with gate and up fused into one projection.

    The decoder layer runs `gate_up_proj` itself, with the norm before it (`normed_projection`)."""

    def __init__(self, hf_config: Any) -> None:
        super().__init__()
        if hf_config.hidden_act != "silu":
            raise UnsupportedArchitectureError(f"hidden_act {hf_config.hidden_act!r} is not supported; only 'silu'")
        bias = bool(getattr(hf_config, "mlp_bias", False))
        hidden_size, intermediate_size = hf_config.hidden_size, hf_config.intermediate_size
        self.gate_up_proj = MergedLinear(hidden_size, [intermediate_size, intermediate_size], bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return gated_projection(self.down_proj, gate_up)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block; the residual travels beside the hidden states so each norm can fuse its add."""

    def __init__(
        self, hf_config: Any, layer_index: int, rotary_emb: RotaryEmbedding, options: AttentionOptions
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(hf_config, layer_index, rotary_emb, options)
        self.mlp = LlamaMLP(hf_config)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (block output, residual); their sum is the block's output in Hugging Face terms."""
        hidden, residual = self.self_attn(positions, self.input_layernorm, hidden, residual, metadata)
        gate_up, residual = normed_projection(self.post_attention_layernorm, self.mlp.gate_up_proj, hidden, residual)
        return self.mlp(gate_up), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm; returns the last hidden states."""

    def __init__(self, hf_config: Any, options: AttentionOptions) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(hf_config.vocab_size, hf_config.hidden_size)
        rotary_emb = RotaryEmbedding(hf_config, head_dim_of(hf_config))
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hf_config, index, rotary_emb, options) for index in range(hf_config.num_hidden_layers)
        )
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """A causal LM over the flat token batch of one engine step; Mistral uses this class unchanged."""

    def __init__(self, hf_config: Any) -> None:
        super().__init__()
        self.model = LlamaModel(hf_config, self.attention_options(hf_config))
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        # Tied checkpoints reuse the embedding matrix as the output projection.
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = nn.Linear(hf_config.hidden_size, hf_config.vocab_size, bias=False)

    @staticmethod
    def attention_options(hf_config: Any) -> AttentionOptions:
        """Llama's `attention_bias` covers q/k/v and the output projection alike."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return AttentionOptions(qkv_bias=bias, output_bias=bias)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] for the step's flat `input_ids` at `positions`."""
        return self.model(input_ids, positions, metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] in the model's dtype; callers pass only the rows they sample from.

        The sampler upcasts them to float32 where it computes with them; a greedy argmax needs no copy.
        """
        return F.linear(hidden_states, self.lm_head.weight)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy Hugging Face-named checkpoint tensors in; return the names of the parameters loaded."""
        # inv_freq is recomputed, and a tied checkpoint's lm_head (when present) is the embedding again.
        skip = ["rotary_emb.inv_freq", *(["lm_head.weight"] if self.tie_word_embeddings else [])]
        return load_stacked_weights(self, weights, STACKED_PARAMS, skip)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with biases on q/k/v (never on the output projection)."""

    @staticmethod
    def attention_options(hf_config: Any) -> AttentionOptions:
        return AttentionOptions(qkv_bias=True, output_bias=False)
