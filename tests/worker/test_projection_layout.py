"""Projection weights stored [in, out] compute what [out, in] does; only their strides change."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from lmserve.config import RunnerConfig
from lmserve.errors import ConfigError
from lmserve.models import load_model
from lmserve.worker.projection_layout import apply_projection_layout
from tests.tiny_models import TinyModelCache, lmserve_logits

PROMPT = list(range(3, 23))


def projections(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def stored_in_out(module: nn.Linear) -> bool:
    return module.weight.stride() == (1, module.weight.shape[0])


def load(model_dir) -> nn.Module:
    return load_model(str(model_dir), AutoConfig.from_pretrained(model_dir), torch.float32, torch.device("cpu"))


def test_in_out_layout_computes_the_same_logits(tiny_models: TinyModelCache) -> None:
    model = load(tiny_models.get("qwen3"))
    expected = lmserve_logits(model, PROMPT)
    apply_projection_layout(model, "in_out")
    assert projections(model) and all(stored_in_out(m) for m in projections(model))
    torch.testing.assert_close(lmserve_logits(model, PROMPT), expected)


def test_out_in_keeps_the_checkpoint_layout(tiny_models: TinyModelCache) -> None:
    model = load(tiny_models.get("llama"))
    apply_projection_layout(model, "out_in")
    assert not any(stored_in_out(m) for m in projections(model))


def test_unknown_layout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="projection_layout"):
        RunnerConfig(projection_layout="transposed")
