"""Projection weights stored [in, out] compute what [out, in] does; "auto" keeps the faster layout per shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from lmserve.config import RunnerConfig
from lmserve.errors import ConfigError
from lmserve.models import load_model
from lmserve.worker.projection_layout import apply_projection_layout, choose_layout, relative_times
from tests.tiny_models import TinyModelCache, lmserve_logits

PROMPT = list(range(3, 23))


def projections(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def stored_in_out(module: nn.Linear) -> bool:
    return module.weight.stride() == (1, module.weight.shape[0])


def load(model_dir, device: str = "cpu") -> nn.Module:
    return load_model(str(model_dir), AutoConfig.from_pretrained(model_dir), torch.float32, torch.device(device))


def test_in_out_layout_computes_the_same_logits(tiny_models: TinyModelCache) -> None:
    model = load(tiny_models.get("qwen3"))
    expected = lmserve_logits(model, PROMPT)
    assert apply_projection_layout(model, "in_out", max_rows=64) == []
    assert projections(model) and all(stored_in_out(m) for m in projections(model))
    torch.testing.assert_close(lmserve_logits(model, PROMPT), expected)


def test_auto_leaves_a_cpu_model_as_loaded(tiny_models: TinyModelCache) -> None:
    model = load(tiny_models.get("llama"))
    assert apply_projection_layout(model, "auto", max_rows=64) == []
    assert not any(stored_in_out(m) for m in projections(model))


def test_in_out_wins_where_one_batch_size_gets_a_slow_kernel() -> None:
    # Qwen3-0.6B's o_proj on an H200: 12.9 us [out, in] against 5.7 us [in, out] at one row, level above.
    times = {"out_in": [12.9, 5.8, 5.8], "in_out": [5.7, 5.9, 5.6]}
    assert choose_layout(times) == "in_out"
    assert relative_times(times)["in_out"] == pytest.approx((1.0 + 5.9 / 5.8 + 1.0) / 3)


def test_out_in_stays_where_in_out_loses_at_large_batches() -> None:
    times = {"out_in": [15.5, 15.7, 20.0], "in_out": [15.4, 15.6, 23.0]}
    assert choose_layout(times) == "out_in"


def test_a_tie_keeps_the_checkpoint_layout() -> None:
    assert choose_layout({"out_in": [10.0, 20.0], "in_out": [9.99, 20.01]}) == "out_in"


def test_unknown_layout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="projection_layout"):
        RunnerConfig(projection_layout="transposed")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_times_every_shape_on_the_gpu_and_keeps_the_logits(tiny_models: TinyModelCache) -> None:
    model = load(tiny_models.get("qwen3"), "cuda")
    expected = lmserve_logits(model, PROMPT)
    choices = apply_projection_layout(model, "auto", max_rows=256)
    layouts = {(c.in_features, c.out_features): c.layout for c in choices}
    assert set(layouts) == {(m.in_features, m.out_features) for m in projections(model)}
    for module in projections(model):
        assert stored_in_out(module) == (layouts[module.in_features, module.out_features] == "in_out")
    torch.testing.assert_close(lmserve_logits(model, PROMPT), expected, rtol=1e-4, atol=1e-4)
