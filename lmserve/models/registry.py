"""Which lmserve class implements each Hugging Face architecture name."""

from __future__ import annotations

from typing import Any

from torch import nn

from lmserve.errors import UnsupportedArchitectureError
from lmserve.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from lmserve.models.qwen3 import Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,  # Llama plus a sliding window, which the config carries
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def resolve_model_class(hf_config: Any) -> type[nn.Module]:
    """The class for the first of the config's `architectures` that lmserve implements."""
    architectures = getattr(hf_config, "architectures", None) or []
    for architecture in architectures:
        if architecture in MODEL_CLASSES:
            return MODEL_CLASSES[architecture]
    raise UnsupportedArchitectureError(
        f"model architectures {architectures} are not supported; lmserve supports: {', '.join(MODEL_CLASSES)}"
    )
