"""Bad input fails with lmserve's own error types, and the engine is unharmed: the next request runs as before.

Request errors are InvalidRequestError; bad engine options ConfigError; a missing, unsupported or corrupted
model ModelLoadError (UnsupportedArchitectureError for the architecture). All are LmserveErrors.
"""

import json
import shutil

import pytest

from lmserve import LLM, SamplingParams
from lmserve.errors import ConfigError, InvalidRequestError, ModelLoadError, UnsupportedArchitectureError

MAX_MODEL_LEN = 64
VOCAB_SIZE = 512
GOOD_PROMPT = [5, 6, 7, 8, 9]
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)


@pytest.fixture(scope="module")
def llm(text_model_dir) -> LLM:
    return LLM(str(text_model_dir), dtype="float32", max_model_len=MAX_MODEL_LEN, num_kv_blocks=16)


@pytest.fixture(scope="module")
def good_output(llm) -> list[int]:
    """GOOD_PROMPT's greedy tokens from the fresh engine, before any bad request reached it."""
    return llm.generate(GOOD_PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def assert_engine_unharmed(llm: LLM, good_output: list[int]) -> None:
    """Nothing of the failed request is left, and a good request still gets the output it got before."""
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.stats().num_used_blocks == 0
    assert llm.generate(GOOD_PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == good_output
    assert llm.engine.stats().num_used_blocks == 0


@pytest.mark.parametrize("length", [MAX_MODEL_LEN, MAX_MODEL_LEN + 40])
def test_prompt_without_room_for_a_token_is_refused(llm, good_output, length):
    with pytest.raises(InvalidRequestError, match="maximum length"):
        llm.generate([5] * length, GREEDY, use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


def test_longest_allowed_prompt_gets_one_token(llm, good_output):
    (output,) = llm.generate([5] * (MAX_MODEL_LEN - 1), GREEDY, use_tqdm=False)
    assert len(output.outputs[0].token_ids) == 1 and output.outputs[0].finish_reason == "length"
    assert_engine_unharmed(llm, good_output)


def test_long_text_prompt_is_refused(llm, good_output):
    with pytest.raises(InvalidRequestError, match="maximum length"):
        llm.generate("def fibonacci(n): return n " * 40, GREEDY, use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


@pytest.mark.parametrize("prompts", ["", [[]], []], ids=["empty-text", "empty-token-list", "no-prompts"])
def test_empty_prompt_is_refused(llm, good_output, prompts):
    with pytest.raises(InvalidRequestError, match="empty|no prompts"):
        llm.generate(prompts, GREEDY, use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


@pytest.mark.parametrize("bad_token", [VOCAB_SIZE, VOCAB_SIZE + 1000, -1])
def test_token_id_outside_the_vocabulary_is_refused(llm, good_output, bad_token):
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate([5, bad_token, 6], GREEDY, use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 3}, "min_tokens"),
        ({"logprobs": 21}, "logprobs"),
        # Counts that are not integers, and floats that float32 turns into inf or 0 (then NaN in the sampler).
        ({"logprobs": 2.5}, "logprobs"),
        ({"n": 2.0}, "n"),
        ({"top_k": True}, "top_k"),
        ({"seed": 1.5}, "seed"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"temperature": 1e39}, "temperature"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"repetition_penalty": 1e-39}, "repetition_penalty"),
    ],
)
def test_invalid_sampling_params_are_refused(llm, good_output, options, field):
    with pytest.raises(InvalidRequestError, match=rf"^{field}\b"):
        llm.generate(GOOD_PROMPT, SamplingParams(**options), use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


@pytest.mark.parametrize("bad_token", [VOCAB_SIZE, VOCAB_SIZE + 1000])
def test_logit_bias_outside_the_vocabulary_is_refused(llm, good_output, bad_token):
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        llm.generate(GOOD_PROMPT, SamplingParams(logit_bias={bad_token: 5.0}), use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


def test_bad_prompt_in_a_batch_leaves_no_request_behind(llm, good_output):
    prompts = [GOOD_PROMPT, "def fibonacci(n):", [5, VOCAB_SIZE], [7, 8]]
    params = [GREEDY, SamplingParams(n=3, max_tokens=4), GREEDY, GREEDY]
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate(prompts, params, use_tqdm=False)
    stats = llm.engine.stats()
    assert stats.num_waiting == 0 and stats.num_running == 0
    assert_engine_unharmed(llm, good_output)


def test_text_needs_a_tokenizer(text_model_dir):
    llm = LLM(str(text_model_dir), dtype="float32", skip_tokenizer_init=True, max_model_len=MAX_MODEL_LEN)
    good_output = llm.generate(GOOD_PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        llm.generate("def fibonacci(n):", GREEDY, use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        llm.generate(GOOD_PROMPT, SamplingParams(stop=["def"]), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False)
    assert_engine_unharmed(llm, good_output)


def test_unknown_engine_option_is_refused(text_model_dir):
    with pytest.raises(ConfigError, match="no_such_option"):
        LLM(str(text_model_dir), no_such_option=1)


def test_missing_model_directory_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LLM(str(tmp_path / "no_such_model"))


def test_unsupported_architecture_is_refused(text_model_dir, tmp_path):
    model_dir = tmp_path / "gpt2ish"
    shutil.copytree(text_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
        LLM(str(model_dir))


@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["half", "header-cut"])
def test_truncated_weights_are_refused(text_model_dir, tmp_path, keep):
    model_dir = tmp_path / "truncated"
    shutil.copytree(text_model_dir, model_dir)
    weights = model_dir / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(int(weights.stat().st_size * keep))
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLM(str(model_dir))
