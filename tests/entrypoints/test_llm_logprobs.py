"""Logprobs of prompt and sampled tokens equal Hugging Face's log-softmax of its logits (float32)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmserve import LLM, SamplingParams
from tests.entrypoints.test_llm_matches_hf import PROMPTS

NUM_TOP = 3
MAX_TOKENS = 6


def hf_reference(model_dir, prompt):
    """HF's log-softmax at every prompt position, and at every greedy generation step."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        prompt_logprobs = torch.log_softmax(model(torch.tensor([prompt])).logits[0], dim=-1)
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )
    step_logprobs = [torch.log_softmax(logits[0], dim=-1) for logits in generated.logits]
    return prompt_logprobs, generated.sequences[0, len(prompt) :].tolist(), step_logprobs


def assert_position_matches(position, reference, chosen):
    """`position` holds the chosen token with HF's logprob and rank, plus HF's top-NUM_TOP tokens."""
    assert position[chosen].logprob == pytest.approx(reference[chosen].item(), abs=1e-4)
    assert position[chosen].rank == int((reference > reference[chosen]).sum()) + 1
    top = torch.topk(reference, NUM_TOP)
    for token, logprob in zip(top.indices.tolist(), top.values.tolist(), strict=True):
        assert position[token].logprob == pytest.approx(logprob, abs=1e-4)
    assert len(position) <= NUM_TOP + 1


@pytest.mark.parametrize("options", [{}, {"max_model_len": 160, "num_kv_blocks": 10}], ids=["plain", "preempted"])
def test_prompt_and_sample_logprobs_match_hf(tiny_models, options):
    model_dir = tiny_models.get("qwen3")
    llm = LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=32, **options)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_TOP, prompt_logprobs=NUM_TOP)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    if options:
        assert llm.engine.stats().num_preemptions > 0
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        prompt_reference, tokens, step_reference = hf_reference(model_dir, prompt)
        # One entry per prompt token, the first None (nothing precedes it), none repeated by recompute.
        assert len(output.prompt_logprobs) == len(prompt) and output.prompt_logprobs[0] is None
        for index in range(1, len(prompt)):
            assert_position_matches(output.prompt_logprobs[index], prompt_reference[index - 1], prompt[index])
        completion = output.outputs[0]
        assert completion.token_ids == tokens and len(completion.logprobs) == len(tokens)
        for position, reference, token in zip(completion.logprobs, step_reference, tokens, strict=True):
            assert_position_matches(position, reference, token)
        expected_sum = sum(reference[token].item() for reference, token in zip(step_reference, tokens, strict=True))
        assert completion.cumulative_logprob == pytest.approx(expected_sum, abs=1e-3)
