"""A float8 KV cache: what it stores, and how close the model's logits stay to a full-precision cache's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from lmserve.attention.cache_dtype import kv_cache_torch_dtype, to_cache_dtype
from lmserve.config import CacheConfig
from lmserve.errors import ConfigError
from lmserve.models import load_model
from tests.tiny_models import TinyModelCache, lmserve_logits


def test_float8_rounds_to_nearest_even_and_saturates() -> None:
    x = torch.tensor([1000.0, -3000.0, 125.5, 116.0, 1.0625, 0.0], dtype=torch.bfloat16)
    stored = to_cache_dtype(x, torch.float8_e4m3fn)
    assert stored.dtype == torch.float8_e4m3fn
    # 116 lies halfway between 112 and 120: the even mantissa (112) wins; 1.0625 halfway between 1 and 1.125.
    assert stored.float().tolist() == [448.0, -448.0, 128.0, 112.0, 1.0, 0.0]


def test_auto_is_the_models_dtype_and_fp8_is_e4m3() -> None:
    assert kv_cache_torch_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert kv_cache_torch_dtype("fp8", torch.bfloat16) == kv_cache_torch_dtype("fp8_e4m3", torch.float16)
    assert kv_cache_torch_dtype("fp8", torch.bfloat16) == torch.float8_e4m3fn


def test_unknown_kv_cache_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype="fp8_e5m2")


@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_logits_over_a_float8_cache_stay_close(tiny_models: TinyModelCache, variant: str) -> None:
    # A prefill, then a chunk that reads the first one's keys and values back from the float8 cache.
    model_dir = tiny_models.get(variant)
    model = load_model(str(model_dir), AutoConfig.from_pretrained(model_dir), torch.float32, torch.device("cpu"))
    prompt = list(range(3, 43))
    full = lmserve_logits(model, prompt, split_at=[17])
    float8 = lmserve_logits(model, prompt, split_at=[17], cache_dtype=torch.float8_e4m3fn)
    # e4m3 keeps 3 mantissa bits (about 3% per value); these random models' logits moved 5-8%.
    assert 0 < (float8 - full).norm() / full.norm() < 0.15
