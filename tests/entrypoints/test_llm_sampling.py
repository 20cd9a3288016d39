"""Sampling through the whole engine: seeds, n samples, logit bias and the token-level stopping rules.

The prompts are token ids, so these tests need no tokenizer. EOS is token 2 in every tiny model.
"""

import random

import pytest

from lmserve import LLM, SamplingParams

EOS = 2
BLOCK_SIZE = 16


def random_prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 480) for _ in range(length)]


PROMPT = random_prompt(0, 40)
OTHER_PROMPTS = [random_prompt(1, 5), random_prompt(2, 23), random_prompt(3, 50)]
LONG_PROMPT = random_prompt(4, 3 * BLOCK_SIZE + 2)  # three full blocks, and the last token still to compute


def new_llm(model_dir, **options) -> LLM:
    return LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True, **options)


@pytest.fixture(scope="module")
def llm(tiny_models) -> LLM:
    """One engine for the tests that look only at outputs, not at cache statistics."""
    return new_llm(tiny_models.get("llama"))


def generate_one(llm: LLM, prompt: list[int], params: SamplingParams):
    """The single CompletionOutput of a one-prompt, one-sample request."""
    (output,) = llm.generate(prompt, params, use_tqdm=False)
    (completion,) = output.outputs
    return completion


def seeded(seed: int, **overrides) -> SamplingParams:
    return SamplingParams(**{"temperature": 1.0, "seed": seed, "max_tokens": 12, "ignore_eos": True, **overrides})


def test_seeded_sample_depends_only_on_prompt_and_seed(tiny_models, llm):
    alone = generate_one(llm, PROMPT, seeded(7)).token_ids
    assert len(alone) == 12

    neighbours = [SamplingParams(temperature=1.0, max_tokens=12), SamplingParams(temperature=0.0, max_tokens=12),
                  seeded(3, temperature=0.8)]
    in_batch = llm.generate([*OTHER_PROMPTS, PROMPT], [*neighbours, seeded(7)], use_tqdm=False)
    assert in_batch[-1].outputs[0].token_ids == alone

    reordered_prompts, reordered_params = [PROMPT, *reversed(OTHER_PROMPTS)], [seeded(7), *reversed(neighbours)]
    reordered = llm.generate(reordered_prompts, reordered_params, use_tqdm=False)
    assert reordered[0].outputs[0].token_ids == alone

    # Prefilled in chunks of 16 tokens, in a KV pool too small for the whole batch.
    cramped = new_llm(tiny_models.get("llama"), max_num_batched_tokens=16, max_model_len=96, num_kv_blocks=8)
    chunked = cramped.generate(reordered_prompts, reordered_params, use_tqdm=False)
    assert cramped.engine.stats().num_preemptions > 0
    assert chunked[0].outputs[0].token_ids == alone


def test_different_seeds_give_different_samples(llm):
    assert generate_one(llm, PROMPT, seeded(7)).token_ids != generate_one(llm, PROMPT, seeded(8)).token_ids


def test_unseeded_random_sampling_runs_and_varies(llm):
    (output,) = llm.generate(PROMPT, SamplingParams(n=4, temperature=1.0, max_tokens=8, ignore_eos=True),
                             use_tqdm=False)
    samples = [completion.token_ids for completion in output.outputs]
    assert [len(sample) for sample in samples] == [8] * 4
    assert all(0 <= token < 512 for sample in samples for token in sample)
    assert len({tuple(sample) for sample in samples}) > 1


def test_n_samples_are_indexed_and_differ(llm):
    (output,) = llm.generate(PROMPT, SamplingParams(n=4, temperature=1.0, seed=0, max_tokens=8, ignore_eos=True),
                             use_tqdm=False)
    assert [completion.index for completion in output.outputs] == [0, 1, 2, 3]
    assert all(completion.finish_reason == "length" and len(completion.token_ids) == 8
               for completion in output.outputs)
    assert len({tuple(completion.token_ids) for completion in output.outputs}) > 1


def test_n_samples_of_the_largest_seed_wrap_around(llm):
    params = SamplingParams(n=2, temperature=1.0, seed=2**63 - 1, max_tokens=8, ignore_eos=True)
    (output,) = llm.generate(PROMPT, params, use_tqdm=False)
    last = generate_one(llm, PROMPT, seeded(2**63 - 1, max_tokens=8)).token_ids
    wrapped = generate_one(llm, PROMPT, seeded(-(2**63), max_tokens=8)).token_ids
    assert [completion.token_ids for completion in output.outputs] == [last, wrapped] and last != wrapped


def test_greedy_n_samples_are_identical(llm):
    (output,) = llm.generate(PROMPT, SamplingParams(n=4, temperature=0.0, max_tokens=8), use_tqdm=False)
    samples = [completion.token_ids for completion in output.outputs]
    assert len(samples) == 4 and samples[0] and all(sample == samples[0] for sample in samples)


def test_n_samples_share_the_prompt_blocks(tiny_models):
    llm = new_llm(tiny_models.get("llama"))
    (output,) = llm.generate(LONG_PROMPT, SamplingParams(n=4, temperature=1.0, seed=0, max_tokens=4),
                             use_tqdm=False)
    stats = llm.engine.stats()
    # The first sample computes the three full prompt blocks; the other three reuse them.
    assert stats.prefix_cache_hits == 3 * (3 * BLOCK_SIZE)
    assert output.num_cached_tokens == 3 * BLOCK_SIZE
    assert stats.num_used_blocks == 0


def test_without_prefix_caching_only_the_samples_of_one_request_share(tiny_models):
    llm = new_llm(tiny_models.get("llama"), enable_prefix_caching=False)
    llm.generate([LONG_PROMPT, LONG_PROMPT], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    assert llm.engine.stats().prefix_cache_hits == 0

    llm.generate(LONG_PROMPT, SamplingParams(n=4, temperature=1.0, seed=0, max_tokens=4), use_tqdm=False)
    assert llm.engine.stats().prefix_cache_hits == 3 * (3 * BLOCK_SIZE)
    assert llm.engine.stats().num_used_blocks == 0


def test_without_prefix_caching_a_reused_request_id_finds_nothing_cached(tiny_models):
    llm = new_llm(tiny_models.get("llama"), enable_prefix_caching=False)
    engine = llm.engine
    for _ in range(2):  # a server may reuse an id once its request has finished
        engine.add_request("same-id", LONG_PROMPT, SamplingParams(temperature=0.0, max_tokens=2))
        while engine.has_unfinished_requests():
            engine.step()
    assert engine.stats().prefix_cache_hits == 0


@pytest.mark.parametrize("temperature", [1e-6, 1e-40])
def test_tiny_temperature_samples_like_greedy(llm, temperature):
    # As the temperature goes to zero, sampling becomes argmax; it must not overflow into garbage tokens.
    greedy = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)).token_ids
    cold = generate_one(llm, PROMPT, seeded(0, temperature=temperature, max_tokens=8)).token_ids
    assert cold == greedy


def test_logit_bias_forces_a_token(llm):
    completion = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=6, logit_bias={300: 100}))
    assert completion.token_ids == [300] * 6
    assert completion.finish_reason == "length"


def test_min_tokens_holds_back_eos_until_enough_tokens(llm):
    completion = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=10, min_tokens=3,
                                                          logit_bias={EOS: 100}))
    # EOS is forbidden for the first three tokens, then the bias makes it win at once.
    assert len(completion.token_ids) == 4
    assert EOS not in completion.token_ids[:3] and completion.token_ids[3] == EOS
    assert completion.finish_reason == "stop"


def test_ignore_eos_runs_to_max_tokens(llm):
    completion = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True,
                                                          logit_bias={EOS: 100}))
    assert completion.token_ids == [EOS] * 6
    assert completion.finish_reason == "length"


def test_stop_token_id_ends_the_output_at_its_first_appearance(llm):
    greedy = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=10)).token_ids
    assert EOS not in greedy
    stop_at = next(index for index in range(2, len(greedy)) if greedy[index] not in greedy[:index])
    completion = generate_one(
        llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=[greedy[stop_at]])
    )
    assert completion.token_ids == greedy[: stop_at + 1]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == greedy[stop_at]


def test_max_tokens_cuts_the_output(llm):
    longer = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=10)).token_ids
    completion = generate_one(llm, PROMPT, SamplingParams(temperature=0.0, max_tokens=5))
    assert completion.token_ids == longer[:5]
    assert completion.finish_reason == "length" and completion.stop_reason is None
