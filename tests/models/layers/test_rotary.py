"""Rotary embedding matches transformers' for every scaling type the Llama family uses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from lmserve.errors import UnsupportedArchitectureError
from lmserve.models.layers import RotaryEmbedding
from lmserve.models.layers.rotary import rope_settings

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
}


def make_config(rope_parameters: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=HEADS * HEAD_DIM,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rope_parameters=dict(rope_parameters),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope_type", list(ROPE_PARAMETERS))
def test_matches_transformers_bit_for_bit(rope_type: str, dtype: torch.dtype) -> None:
    config = make_config(ROPE_PARAMETERS[rope_type])
    positions = torch.tensor([0, 1, 5, 31, 32, 77, 127, 3])
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(len(positions), HEADS * HEAD_DIM, generator=generator).to(dtype)
    key = torch.randn(len(positions), KV_HEADS * HEAD_DIM, generator=generator).to(dtype)

    rotated_query, rotated_key = RotaryEmbedding(config, HEAD_DIM)(positions, query, key)

    # transformers works on [batch, heads, tokens, head_dim].
    cos, sin = LlamaRotaryEmbedding(config)(query, positions[None])
    expected_query, expected_key = apply_rotary_pos_emb(
        query.view(1, -1, HEADS, HEAD_DIM).transpose(1, 2),
        key.view(1, -1, KV_HEADS, HEAD_DIM).transpose(1, 2),
        cos,
        sin,
    )
    assert torch.equal(rotated_query, expected_query.transpose(1, 2).reshape(query.shape))
    assert torch.equal(rotated_key, expected_key.transpose(1, 2).reshape(key.shape))


def test_scaling_changes_frequencies() -> None:
    """Guards the comparison above: each scaled type really differs from plain RoPE here."""
    positions = torch.tensor([100])
    query, key = torch.ones(1, HEADS * HEAD_DIM), torch.ones(1, KV_HEADS * HEAD_DIM)
    plain, _ = RotaryEmbedding(make_config(ROPE_PARAMETERS["default"]), HEAD_DIM)(positions, query, key)
    for rope_type in ("linear", "yarn", "llama3"):
        scaled, _ = RotaryEmbedding(make_config(ROPE_PARAMETERS[rope_type]), HEAD_DIM)(positions, query, key)
        assert not torch.allclose(scaled, plain), rope_type


def test_reads_configs_from_before_rope_parameters() -> None:
    old_config = SimpleNamespace(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=500000.0)
    assert rope_settings(old_config) == ("linear", 500000.0)
    assert rope_settings(SimpleNamespace(rope_scaling=None, rope_theta=1e6)) == ("default", 1e6)


def test_unknown_rope_type_is_unsupported() -> None:
    config = SimpleNamespace(rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}, max_position_embeddings=8)
    with pytest.raises(UnsupportedArchitectureError, match="spiral"):
        RotaryEmbedding(config, HEAD_DIM)
