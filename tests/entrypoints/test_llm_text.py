"""Text in, text out: detokenized outputs, stop strings, streaming, chat, generation_config.json and the CLI.

The tiny model writes gibberish, so stop strings are taken from its own greedy output, where they are sure
to appear. The reference for every text is the tokenizer as transformers loads it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from lmserve import LLM, SamplingParams
from lmserve.sampling_params import RequestOutputKind
from tests.tiny_tokenizer import CHATML_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["def fibonacci(n):", "Café, naïve façade", "日本語のテキスト", "Emoji: 😀 🎉", "import json\n"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


@pytest.fixture(scope="module")
def llm(text_model_dir) -> LLM:
    return LLM(str(text_model_dir), dtype="float32")


@pytest.fixture(scope="module")
def greedy_outputs(llm):
    """Each prompt's greedy completion: the stop-string tests take their stop strings from it."""
    return [output.outputs[0] for output in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def clean_prefix_lengths(tokenizer, token_ids: list[int], text: str) -> dict[int, int]:
    """{k: length of the text of the first k tokens}, for each k where that text is a prefix of `text`.

    Tokens ending mid-character decode to U+FFFD, so where they end there is no clean boundary.
    """
    lengths = {}
    for k in range(len(token_ids) + 1):
        prefix = tokenizer.decode(token_ids[:k], skip_special_tokens=True)
        if text.startswith(prefix):
            lengths[k] = len(prefix)
    return lengths


def find_stop_string(tokenizer, completions, spanning: bool) -> tuple[int, str, int, int]:
    """A stop string taken from a greedy completion: (prompt index, stop, its start, tokens up to its end).

    `spanning`: the last character of one token plus the first of the next; otherwise one token's whole
    text. Only printable text is used, and only where this is the stop's first appearance.
    """
    for prompt_index, completion in enumerate(completions):
        text = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        lengths = clean_prefix_lengths(tokenizer, completion.token_ids, text)
        for k in range(1, len(completion.token_ids)):
            if not {k - 1, k, k + 1} <= lengths.keys():
                continue
            start, middle, end = lengths[k - 1], lengths[k], lengths[k + 1]
            if spanning and start < middle < end:
                stop_start, stop = middle - 1, text[middle - 1 : middle + 1]
            elif not spanning and end - middle >= 2:
                stop_start, stop = middle, text[middle:end]
            else:
                continue
            if stop.isprintable() and "\ufffd" not in stop and text.find(stop) == stop_start:
                return prompt_index, stop, stop_start, k + 1
    raise AssertionError("no usable stop string in the greedy outputs")


def test_output_text_is_the_decode_of_the_output_tokens(llm, text_tokenizer):
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert output.prompt == prompt
        assert output.prompt_token_ids == text_tokenizer.encode(prompt)
        completion = output.outputs[0]
        assert len(completion.token_ids) > 0
        assert completion.text == text_tokenizer.decode(completion.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("include_stop", [False, True], ids=["stop-cut", "stop-kept"])
@pytest.mark.parametrize("spanning", [False, True], ids=["in-one-token", "across-two-tokens"])
def test_stop_string_ends_the_text(llm, text_tokenizer, greedy_outputs, spanning, include_stop):
    prompt_index, stop, stop_start, num_tokens = find_stop_string(text_tokenizer, greedy_outputs, spanning)
    full_ids = greedy_outputs[prompt_index].token_ids
    full_text = text_tokenizer.decode(full_ids, skip_special_tokens=True)
    params = SamplingParams(temperature=0.0, max_tokens=32, stop=[stop], include_stop_str_in_output=include_stop)
    completion = llm.generate(PROMPTS[prompt_index], params, use_tqdm=False)[0].outputs[0]
    assert completion.text == full_text[: stop_start + (len(stop) if include_stop else 0)]
    assert completion.token_ids == full_ids[:num_tokens]  # up to the token that completed the stop
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop


def run_to_completion(engine, requests: dict[str, tuple[str, SamplingParams]]) -> dict[str, list]:
    """Add every request and step until all finish; return each request's outputs in the order they came."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    outputs = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs[output.request_id].append(output)
    return outputs


@pytest.mark.parametrize("with_stop", [False, True], ids=["no-stop", "stop-strings"])
def test_streamed_deltas_join_to_the_final_text(llm, text_tokenizer, greedy_outputs, with_stop):
    # A stop string across two tokens makes the stream hold back its first character until it can tell.
    stop_prompt_index, stop, _, _ = find_stop_string(text_tokenizer, greedy_outputs, spanning=True)
    params = {"temperature": 0.0, "max_tokens": 32, "stop": [stop] if with_stop else []}
    requests = {}
    for index, prompt in enumerate(PROMPTS):
        requests[f"delta-{index}"] = (prompt, SamplingParams(**params, output_kind=RequestOutputKind.DELTA))
        requests[f"final-{index}"] = (prompt, SamplingParams(**params, output_kind=RequestOutputKind.FINAL_ONLY))
    outputs = run_to_completion(llm.engine, requests)

    for index in range(len(PROMPTS)):
        (final,) = outputs[f"final-{index}"]
        deltas = outputs[f"delta-{index}"]
        assert final.finished and [delta.finished for delta in deltas] == [False] * (len(deltas) - 1) + [True]
        assert "".join(delta.outputs[0].text for delta in deltas) == final.outputs[0].text
        assert [token for delta in deltas for token in delta.outputs[0].token_ids] == final.outputs[0].token_ids
        assert deltas[-1].outputs[0].finish_reason == final.outputs[0].finish_reason
    if with_stop:
        assert outputs[f"final-{stop_prompt_index}"][0].outputs[0].stop_reason == stop
    assert llm.engine.stats().num_used_blocks == 0


def test_chat_prompt_is_the_chat_template_tokens(llm, text_tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    (output,) = llm.chat(messages, GREEDY, use_tqdm=False)
    expected = text_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert output.prompt_token_ids == expected
    assert output.outputs[0].token_ids


def test_chat_template_that_writes_bos_gets_a_single_bos(text_model_dir, text_tokenizer, tmp_path):
    # Like Llama's: encode() adds BOS, and the chat template writes it too; the prompt must hold one.
    model_dir = tmp_path / "bos_model"
    shutil.copytree(text_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(text_model_dir)
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    tokenizer.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).encode("hi")[0] == bos

    messages = [{"role": "user", "content": "hi"}]
    (output,) = LLM(str(model_dir), dtype="float32").chat(messages, GREEDY, use_tqdm=False)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert output.prompt_token_ids == expected
    assert output.prompt_token_ids.count(bos) == 1


def test_generation_config_sets_defaults_and_extra_eos(text_model_dir, tmp_path):
    model_dir = tmp_path / "with_generation_config"
    shutil.copytree(text_model_dir, model_dir)
    generation_config = {"eos_token_id": [2, 7], "temperature": 0.0, "max_new_tokens": 5}
    (model_dir / "generation_config.json").write_text(json.dumps(generation_config))
    llm = LLM(str(model_dir), dtype="float32")

    defaults = llm.get_default_sampling_params()
    assert defaults.temperature == 0.0 and defaults.max_tokens == 5
    by_default = llm.generate(PROMPTS[0], use_tqdm=False)[0].outputs[0]
    explicit = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)[0].outputs[0]
    assert by_default.token_ids == explicit.token_ids and len(by_default.token_ids) <= 5

    # Token 7 is an EOS only through generation_config.json.
    forced = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, logit_bias={7: 100}), use_tqdm=False)
    assert forced[0].outputs[0].token_ids == [7]
    assert forced[0].outputs[0].finish_reason == "stop"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmserve.entrypoints.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_generate_prints_what_llm_generate_returns(llm, text_model_dir):
    result = run_cli("generate", "--model", str(text_model_dir), "--prompt", "def", "--max-tokens", "5",
                     "--temperature", "0", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    expected = llm.generate("def", SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)[0].outputs[0]
    assert result.stdout == expected.text + "\n"


def test_cli_reports_a_missing_model_directory_without_a_traceback(tmp_path):
    missing = tmp_path / "no_such_model"
    result = run_cli("generate", "--model", str(missing), "--prompt", "def")
    assert result.returncode != 0
    assert "not found" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr
