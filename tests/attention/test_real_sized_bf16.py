"""On the GPU, in bf16, a real-sized model's logits through the Triton backend match the torch reference.

Two layers of the Qwen3-0.6B shape (hidden 1024, 16 heads over 8 kv heads of 128, q/k norms), random
weights from one seed for both backends, a mixed batch of fresh prefills, a chunk continuing a cached
context and decodes. bf16 rounds differently in the two backends, so the check is a tolerance on the
logits, finiteness, and the same greedy token almost everywhere.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from lmserve.config import EngineConfig
from lmserve.worker.input_preparation import layout_step, to_device
from lmserve.worker.model_runner import ModelRunner
from tests.engine.test_scheduler import make_batch, make_request

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def real_sized_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("qwen3-0.6b-2-layers")
    AutoConfig.for_model(
        "qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=2,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096, architectures=["Qwen3ForCausalLM"],
    ).save_pretrained(directory)
    return str(directory)


@torch.inference_mode()
def logits_of(model_dir: str, backend: str) -> torch.Tensor:
    config = EngineConfig.from_options(
        model_dir, load_format="dummy", dtype="bfloat16", attention_backend=backend, enforce_eager=True,
        skip_tokenizer_init=True, max_model_len=2048, num_kv_blocks=400,
    )
    runner = ModelRunner(config)
    runner.allocate_kv_cache(400)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 150000, (n,), generator=generator).tolist() for n in (700, 37, 1200, 300)]
    requests = [make_request(f"r{i}", prompt) for i, prompt in enumerate(prompts)]
    block_ids = [list(range(1 + 80 * i, 1 + 80 * (i + 1))) for i in range(len(prompts))]
    # First step: prefill all but the last token of request 0 and 1, and the first 1000 of request 2.
    first = make_batch(requests, [699, 36, 1000, 300], block_ids)
    runner.execute(first)
    for request, computed in zip(requests, (699, 36, 1000, 300), strict=True):
        request.num_computed_tokens = computed
    # Second step: two decodes and a 200-token chunk continuing a cached context.
    second = make_batch(requests[:3], [1, 1, 200], block_ids[:3])
    inputs = to_device(layout_step(second, config.cache.block_size), runner.staging)
    hidden = runner.model(inputs.input_ids, inputs.positions, inputs.metadata)
    return runner.model.compute_logits(hidden).float()


def test_triton_logits_match_the_torch_reference_in_bf16(real_sized_dir):
    reference = logits_of(real_sized_dir, "torch")
    triton = logits_of(real_sized_dir, "triton")
    assert torch.isfinite(reference).all() and torch.isfinite(triton).all()
    scale = reference.abs().max()
    assert (triton - reference).abs().max() <= 0.05 * scale
    agreement = (triton.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agreement >= 0.95
