"""Tiny random Hugging Face checkpoints of every supported family, and a harness that runs lmserve on them.

The checkpoints are built by transformers itself, so tests compare lmserve with the reference implementation
rather than with our own reading of it. Each is a few hundred KB and builds in well under a second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from lmserve.attention import Attention, AttentionMetadata, TorchAttentionBackend

BLOCK_SIZE = 16
SLIDING_WINDOW = 16  # short, so that prompts of a few dozen tokens reach past it

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    # Large enough weights that logits are decisive: greedy argmax never ties between HF and lmserve.
    "initializer_range": 0.15,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "llama-mha-tied": {"model_type": "llama", "num_key_value_heads": 4, "tie_word_embeddings": True},
    "llama3-rope": {
        "model_type": "llama",
        # A short original context puts some frequencies in each of llama3's three bands.
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "mistral": {"model_type": "mistral", "sliding_window": SLIDING_WINDOW},
    # Qwen2's window applies from layer `max_window_layers` on: here the second layer only.
    "qwen2": {
        "model_type": "qwen2",
        "tie_word_embeddings": True,
        "use_sliding_window": True,
        "sliding_window": SLIDING_WINDOW,
        "max_window_layers": 1,
    },
    "qwen3": {"model_type": "qwen3", "head_dim": 32, "attention_bias": True},
}


def make_tiny_model(out_dir: str | Path, variant: str, seed: int = 0) -> Path:
    """Save a random float32 model of `variant` (a key of VARIANTS) as safetensors in `out_dir`."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(**{**_COMMON, **VARIANTS[variant]})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Hugging Face starts norms at 1 and biases at 0, which would hide a dropped or swapped vector.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def save_sharded_copy(model_dir: str | Path, out_dir: str | Path, max_shard_size: str = "50KB") -> Path:
    """Re-save a checkpoint as several shards with a `model.safetensors.index.json`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    return Path(out_dir)


class TinyModelCache:
    """Builds each variant at most once per test session; the `tiny_models` fixture holds one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, Path] = {}

    def get(self, variant: str) -> Path:
        """The directory of `variant`'s checkpoint; treat it as read-only."""
        if variant not in self._dirs:
            self._dirs[variant] = make_tiny_model(self.root / variant, variant)
        return self._dirs[variant]


def bind_kv_caches(model: nn.Module, num_blocks: int, cache_dtype: torch.dtype | None = None) -> None:
    """Give every attention layer a zeroed paged cache (of the model's dtype unless `cache_dtype` says
    otherwise) and the reference backend."""
    param = next(model.parameters())
    backend = TorchAttentionBackend()
    for module in model.modules():
        if isinstance(module, Attention):
            shape = (2, num_blocks, BLOCK_SIZE, module.num_kv_heads, module.head_dim)
            module.bind(torch.zeros(shape, dtype=cache_dtype or param.dtype, device=param.device), backend)


def single_request_metadata(num_cached: int, num_new: int, num_blocks: int, device: torch.device) -> AttentionMetadata:
    """One request owning blocks 0, 1, ... in order, so a token's cache slot equals its position."""
    seq_len = num_cached + num_new
    return AttentionMetadata(
        slot_mapping=torch.arange(num_cached, seq_len, device=device),
        block_tables=torch.arange(num_blocks, device=device)[None],
        seq_lens=torch.tensor([seq_len], device=device),
        query_start_loc=torch.tensor([0, num_new], device=device),
        max_query_len=num_new,
        max_seq_len=seq_len,
    )


@torch.inference_mode()
def lmserve_logits(
    model: nn.Module, token_ids: Sequence[int], split_at: Sequence[int] = (), cache_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Logits at every position of one request fed in chunks starting at `split_at`.

    The first chunk is a prefill; each later one continues from the keys and values cached before it.
    """
    device = next(model.parameters()).device
    num_blocks = -(-len(token_ids) // BLOCK_SIZE)
    bind_kv_caches(model, num_blocks, cache_dtype)
    bounds = [0, *split_at, len(token_ids)]
    logits = []
    for start, end in itertools.pairwise(bounds):
        input_ids = torch.tensor(token_ids[start:end], device=device)
        positions = torch.arange(start, end, device=device)
        hidden = model(input_ids, positions, single_request_metadata(start, end - start, num_blocks, device))
        logits.append(model.compute_logits(hidden).float())
    return torch.cat(logits)
