"""Greedy generation through the whole engine is token-for-token identical to Hugging Face `generate`.

Every architecture variant runs the same prompts (some longer than the per-step token budget, so they
are prefilled in chunks) three ways: plainly, with a KV pool so small that requests get preempted and
recomputed, and with prompts sharing long prefixes, prefix caching on and off.
"""

import importlib
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmserve import LLM, SamplingParams
from tests.tiny_models import VARIANTS

MAX_TOKENS = 12
BUDGET = 32  # max_num_batched_tokens: prompts past it span several steps


def random_prompts(seed: int, lengths: list[int], prefix: list[int] = ()) -> list[list[int]]:
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(3, 512) for _ in range(n)] for n in lengths]


PROMPTS = random_prompts(0, [1, 5, 17, 31, 40, 64, 90, 130])
SHARED = random_prompts(1, [48])[0]
PREFIXED_PROMPTS = random_prompts(2, [3, 9, 20, 33, 1, 16, 7, 50], prefix=SHARED)


@pytest.fixture(scope="module")
def hf_greedy():
    """HF's greedy continuation of a prompt, per variant; computed once per (variant, prompt)."""
    models, cache = {}, {}

    def generate(model_dir, variant: str, prompt: list[int]) -> list[int]:
        key = (variant, tuple(prompt))
        if key not in cache:
            if variant not in models:
                models[variant] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            output = models[variant].generate(
                torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0
            )
            cache[key] = output[0, len(prompt) :].tolist()
        return cache[key]

    return generate


def run_lmserve(model_dir, prompts, **options):
    llm = LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=BUDGET, **options)
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return [output.outputs[0].token_ids for output in outputs], llm.engine.stats()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_matches_hf_with_chunked_prefill(tiny_models, hf_greedy, variant):
    model_dir = tiny_models.get(variant)
    ours, stats = run_lmserve(model_dir, PROMPTS)
    assert ours == [hf_greedy(model_dir, variant, p) for p in PROMPTS]
    assert stats.num_preemptions == 0 and stats.num_running == 0 and stats.num_used_blocks == 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_matches_hf_under_preemption(tiny_models, hf_greedy, variant):
    model_dir = tiny_models.get(variant)
    # 160 tokens of context at most per request, 10 blocks of 16: the 8 prompts cannot all fit at once.
    ours, stats = run_lmserve(model_dir, PROMPTS, max_model_len=160, num_kv_blocks=10)
    assert stats.num_preemptions > 0
    assert ours == [hf_greedy(model_dir, variant, p) for p in PROMPTS]
    assert stats.num_used_blocks == 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_matches_hf_with_and_without_prefix_caching(tiny_models, hf_greedy, variant):
    model_dir = tiny_models.get(variant)
    expected = [hf_greedy(model_dir, variant, p) for p in PREFIXED_PROMPTS]
    cached, cached_stats = run_lmserve(model_dir, PREFIXED_PROMPTS)
    assert cached == expected
    assert cached_stats.prefix_cache_hits >= 7 * 48  # every prompt after the first reuses the shared blocks
    uncached, uncached_stats = run_lmserve(model_dir, PREFIXED_PROMPTS, enable_prefix_caching=False)
    assert uncached == expected
    assert uncached_stats.prefix_cache_hits == 0


@pytest.mark.parametrize("split", [True, False], ids=["decode-split", "unsplit"])
@pytest.mark.parametrize("variant", ["qwen3", "mistral"])
def test_greedy_matches_hf_with_the_triton_backend(tiny_models, hf_greedy, variant, split, monkeypatch):
    """The Triton kernels in the whole engine (natively on a GPU, in Triton's interpreter on the CPU).

    Small decode batches split their keys over several programs merged after (flash-decoding), windowed
    layers too; with at most one split, each (request, kv head) is one program.
    """
    kernels = importlib.import_module("lmserve.kernels.paged_attention")  # the package re-exports the function
    if not split:
        monkeypatch.setattr(kernels, "_MAX_SPLITS", 1)
    chosen = []
    choose = kernels._decode_num_splits

    def recording_choose(*args):
        chosen.append(choose(*args))
        return chosen[-1]

    monkeypatch.setattr(kernels, "_decode_num_splits", recording_choose)
    model_dir = tiny_models.get(variant)
    prompts = [PROMPTS[1], PROMPTS[4], PROMPTS[7]]  # decode, chunked prefill, past the sliding window
    ours, _ = run_lmserve(model_dir, prompts, attention_backend="triton")
    assert ours == [hf_greedy(model_dir, variant, p) for p in prompts]
    assert (max(chosen) > 1) == split


@pytest.mark.parametrize("preempted", [False, True], ids=["steady", "preempted"])
def test_repetition_penalty_matches_hf(tiny_models, hf_greedy, preempted):
    """Seen tokens are counted on the device as they are sampled, with steps overlapped: greedy decoding with
    a repetition penalty still equals HF's, preemption and recomputation included."""
    model_dir = tiny_models.get("llama")
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    expected = [
        hf_model.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0,
                          repetition_penalty=1.8)[0, len(p):].tolist()
        for p in PROMPTS
    ]
    assert expected != [hf_greedy(model_dir, "llama", p) for p in PROMPTS]  # the penalty changes some outputs
    options = {"max_model_len": 160, "num_kv_blocks": 10} if preempted else {}
    llm = LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=BUDGET, **options)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, repetition_penalty=1.8)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert [output.outputs[0].token_ids for output in outputs] == expected
    assert (llm.engine.stats().num_preemptions > 0) == preempted
