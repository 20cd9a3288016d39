"""Architecture names resolve to lmserve classes; anything else is refused with the list of options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmserve.errors import UnsupportedArchitectureError
from lmserve.models import resolve_model_class
from lmserve.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from lmserve.models.qwen3 import Qwen3ForCausalLM


@pytest.mark.parametrize(
    ("architecture", "model_class"),
    [
        ("LlamaForCausalLM", LlamaForCausalLM),
        ("MistralForCausalLM", LlamaForCausalLM),
        ("Qwen2ForCausalLM", Qwen2ForCausalLM),
        ("Qwen3ForCausalLM", Qwen3ForCausalLM),
    ],
)
def test_supported_architectures(architecture: str, model_class: type) -> None:
    assert resolve_model_class(SimpleNamespace(architectures=[architecture])) is model_class


def test_first_supported_name_wins() -> None:
    config = SimpleNamespace(architectures=["FooForCausalLM", "Qwen2ForCausalLM"])
    assert resolve_model_class(config) is Qwen2ForCausalLM


@pytest.mark.parametrize("architectures", [["FooForCausalLM"], None])
def test_unsupported_architecture_names_the_supported_ones(architectures: list[str] | None) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM, MistralForCausalLM"):
        resolve_model_class(SimpleNamespace(architectures=architectures))
