"""Qwen3: the Llama decoder with RMS-normalised query and key heads before rotary."""

from __future__ import annotations

import dataclasses
from typing import Any

from lmserve.models.llama import AttentionOptions, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Per-head q_norm/k_norm; `attention_bias` works as in Llama (q/k/v and output together)."""

    @staticmethod
    def attention_options(hf_config: Any) -> AttentionOptions:
        return dataclasses.replace(LlamaForCausalLM.attention_options(hf_config), qk_norm=True)
