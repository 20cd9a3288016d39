"""Every supported family computes the same logits as transformers, in one prefill or chunk by chunk."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lmserve.models import load_model
from tests.tiny_models import SLIDING_WINDOW, VARIANTS, TinyModelCache, lmserve_logits

_generator = torch.Generator().manual_seed(0)
# A short prompt inside one cache block, and one spanning blocks and reaching past the sliding window.
PROMPTS = [torch.randint(3, 512, (length,), generator=_generator).tolist() for length in (7, 40)]
assert len(PROMPTS[1]) > 2 * SLIDING_WINDOW


@pytest.fixture(scope="module", params=list(VARIANTS))
def models(request: pytest.FixtureRequest, tiny_models: TinyModelCache) -> tuple[nn.Module, PreTrainedModel]:
    """(lmserve model, transformers model) of one variant, both float32."""
    model_dir = tiny_models.get(request.param)
    hf_config = AutoConfig.from_pretrained(model_dir)
    model = load_model(str(model_dir), hf_config, torch.float32, torch.device("cpu"))
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, hf_model


def hf_logits(hf_model: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda prompt: f"{len(prompt)}-tokens")
def test_prefill_logits_match_transformers(models: tuple[nn.Module, PreTrainedModel], prompt: list[int]) -> None:
    model, hf_model = models
    expected = hf_logits(hf_model, prompt)

    logits = lmserve_logits(model, prompt)

    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_chunks_continuing_a_cached_prefix_match_transformers(
    models: tuple[nn.Module, PreTrainedModel],
) -> None:
    model, hf_model = models
    prompt = PROMPTS[1]
    expected = hf_logits(hf_model, prompt)

    # A prefill of 13 tokens, a chunk crossing block boundaries, then one-token decode steps.
    logits = lmserve_logits(model, prompt, split_at=(13, 30, 31, 32))

    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
