"""The OpenAI API, asked with the official `openai` client, answers what the offline `LLM` computes.

Every expected text, token count and logprob comes from the offline `LLM` running the same tiny model
in this process (float32 on both sides), or from the tokenizer as transformers loads it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import httpx
import pytest

from lmserve import LLM, CompletionOutput, SamplingParams

MODEL = "tiny"  # the shared server's --served-model-name
MAX_TOKENS = 16
# Lengths from one token to several KV blocks (of 16), ASCII and not, text and token ids.
PROMPTS = [
    "Hello",
    "def fibonacci(n):\n    return",
    "Größe, Straße — 日本語のテキスト 😀",
    " ".join(f"word{index}" for index in range(40)),
    [5, 17, 42, 99, 250, 311],
]
PROMPT_IDS = ["short", "code", "non-ascii", "long", "token-ids"]
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What does os.path.join do? Größe?"},
]


def offline(llm: LLM, prompt, **params) -> list[CompletionOutput]:
    """The offline samples for one prompt; greedy with MAX_TOKENS unless `params` say otherwise."""
    params = {"temperature": 0.0, "max_tokens": MAX_TOKENS, **params}
    [output] = llm.generate([prompt], SamplingParams(**params), use_tqdm=False)
    return output.outputs


def offline_chat(llm: LLM, messages, **params) -> list[CompletionOutput]:
    params = {"temperature": 0.0, "max_tokens": MAX_TOKENS, **params}
    [output] = llm.chat(messages, SamplingParams(**params), use_tqdm=False)
    return output.outputs


def prompt_token_count(tokenizer, prompt) -> int:
    return len(prompt) if isinstance(prompt, list) else len(tokenizer.encode(prompt))


def chat_prompt_token_count(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))  # the template writes the special tokens


def stop_string_in(text: str, start: int = 2) -> str:
    """Two printable ASCII characters of `text`, at or after `start`, appearing there for the first time."""
    for index in range(start, len(text) - 1):
        candidate = text[index : index + 2]
        if candidate.isascii() and candidate.isprintable() and text.index(candidate) == index:
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


# ---- Completions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS, ids=PROMPT_IDS)
def test_greedy_completion_equals_the_offline_llm_with_exact_usage(client, llm, text_tokenizer, prompt):
    [expected] = offline(llm, prompt)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert response.model == MODEL and response.object == "text_completion"
    [choice] = response.choices
    assert (choice.index, choice.text, choice.finish_reason) == (0, expected.text, expected.finish_reason)
    prompt_tokens = prompt_token_count(text_tokenizer, prompt)
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.usage.total_tokens == prompt_tokens + len(expected.token_ids)


@pytest.mark.parametrize("prompt", PROMPTS, ids=PROMPT_IDS)
def test_streamed_completion_joins_to_the_whole_text_and_ends_with_usage(client, prompt):
    request = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = client.completions.create(**request)
    *deltas, usage_chunk = client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    assert deltas and all(chunk.usage is None and len(chunk.choices) == 1 for chunk in deltas)
    assert "".join(chunk.choices[0].text for chunk in deltas) == whole.choices[0].text
    finish_reasons = [chunk.choices[0].finish_reason for chunk in deltas]
    assert finish_reasons == [None] * (len(deltas) - 1) + [whole.choices[0].finish_reason]
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert {chunk.model for chunk in deltas} == {MODEL} and len({chunk.id for chunk in deltas + [usage_chunk]}) == 1


def test_a_batch_of_prompts_with_n_answers_prompt_times_n_plus_sample_and_sums_usage(client, llm, text_tokenizer):
    prompts = ["Hello", "import os"]
    response = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=8, temperature=0)
    expected = [sample for prompt in prompts for sample in offline(llm, prompt, n=2, max_tokens=8)]
    assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
    assert [choice.text for choice in response.choices] == [sample.text for sample in expected]
    assert response.usage.prompt_tokens == sum(len(text_tokenizer.encode(prompt)) for prompt in prompts)
    assert response.usage.completion_tokens == sum(len(sample.token_ids) for sample in expected)


def test_n_seeded_samples_are_distinct_reproducible_and_counted(client, llm, text_tokenizer):
    request = {"model": MODEL, "prompt": "Hello", "n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 8}
    response = client.completions.create(**request, logprobs=0)
    texts = [choice.text for choice in response.choices]
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert texts == [sample.text for sample in offline(llm, "Hello", n=3, temperature=1.0, seed=7, max_tokens=8)]
    assert [choice.text for choice in client.completions.create(**request).choices] == texts
    assert response.usage.prompt_tokens == len(text_tokenizer.encode("Hello"))  # the shared prompt counts once
    assert response.usage.completion_tokens == sum(len(choice.logprobs.tokens) for choice in response.choices)


def test_streamed_n_samples_join_per_index_to_the_whole_texts(client):
    request = {"model": MODEL, "prompt": "import json", "n": 3, "temperature": 1.0, "seed": 3, "max_tokens": 8}
    whole = client.completions.create(**request)
    texts: dict[int, str] = defaultdict(str)
    finish_reasons = {}
    *deltas, usage_chunk = client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in deltas:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finish_reasons[choice.index] = choice.finish_reason
    assert dict(texts) == {choice.index: choice.text for choice in whole.choices}
    assert finish_reasons == {choice.index: choice.finish_reason for choice in whole.choices}
    assert usage_chunk.usage == whole.usage


def test_streamed_completion_logprobs_join_to_the_whole_answers(client):
    """Streaming only cuts the answer into chunks: the chunks' logprobs lists, joined, are the whole answer's.

    The prompt's greedy text has tokens holding part of a character, whose text the stream sends late.
    """
    request = {"model": MODEL, "prompt": "def fibonacci(n):\n    return", "max_tokens": MAX_TOKENS, "temperature": 0,
               "logprobs": 2}
    for echo in (False, True):
        whole = client.completions.create(**request, echo=echo).choices[0].logprobs
        joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for chunk in client.completions.create(**request, echo=echo, stream=True):
            for field, values in joined.items():
                values += getattr(chunk.choices[0].logprobs, field)
        assert joined == whole.model_dump(), f"echo={echo}"


def test_completion_logprobs_match_the_offline_llm(client, llm):
    prompt = "def fibonacci(n):\n    return"
    [expected] = offline(llm, prompt, max_tokens=8, logprobs=2)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    logprobs = response.choices[0].logprobs
    num_tokens = len(expected.token_ids)
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == num_tokens
    assert len(logprobs.text_offset) == num_tokens
    for index, (token_id, position) in enumerate(zip(expected.token_ids, expected.logprobs, strict=True)):
        chosen = position[token_id]
        assert logprobs.tokens[index] == chosen.decoded_token
        assert logprobs.token_logprobs[index] == pytest.approx(chosen.logprob, abs=1e-4)
        # The two best alternatives and the chosen token, keyed by text (tokens may share a text).
        top = logprobs.top_logprobs[index]
        assert 1 <= len(top) <= 3
        for text, value in top.items():
            same_text = [logprob.logprob for logprob in position.values() if logprob.decoded_token == text]
            assert any(value == pytest.approx(candidate, abs=1e-4) for candidate in same_text), (index, text)
        best = max(logprob.logprob for logprob in position.values())
        assert max(top.values()) == pytest.approx(best, abs=1e-4)
        assert logprobs.token_logprobs[index] == pytest.approx(best, abs=1e-4)  # greedy picks the best
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets


def test_echo_puts_the_prompt_before_the_completion(client, llm, text_tokenizer):
    for prompt in ["def add(a, b):", [5, 17, 42, 99]]:
        [expected] = offline(llm, prompt, max_tokens=8)
        response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, echo=True)
        prompt_text = text_tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
        assert response.choices[0].text == prompt_text + expected.text


def test_echo_with_logprobs_covers_prompt_and_completion_tokens(client, text_tokenizer):
    prompt = "import os"
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, echo=True,
                                         logprobs=1)
    logprobs = response.choices[0].logprobs
    num_prompt_tokens = len(text_tokenizer.encode(prompt))
    assert len(logprobs.tokens) == num_prompt_tokens + response.usage.completion_tokens
    assert logprobs.token_logprobs[0] is None  # nothing comes before the first prompt token
    assert all(value is not None and value <= 0 for value in logprobs.token_logprobs[1:])


def test_stop_string_ends_the_completion_before_it(client, llm):
    prompt = "def fibonacci(n):\n    return"
    [full] = offline(llm, prompt)
    stop = stop_string_in(full.text)
    expected = full.text[: full.text.index(stop)]
    request = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stop": [stop]}
    response = client.completions.create(**request)
    assert (response.choices[0].text, response.choices[0].finish_reason) == (expected, "stop")
    streamed = list(client.completions.create(**request, stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


# ---- Chat -------------------------------------------------------------------------------------------------


def test_greedy_chat_equals_the_offline_llm_chat_with_exact_usage(client, llm, text_tokenizer):
    [expected] = offline_chat(llm, MESSAGES)
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    assert response.model == MODEL and response.object == "chat.completion"
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert (choice.message.content, choice.finish_reason) == (expected.text, expected.finish_reason)
    assert response.usage.prompt_tokens == chat_prompt_token_count(text_tokenizer, MESSAGES)
    assert response.usage.completion_tokens == len(expected.token_ids)


def test_streamed_chat_starts_with_the_role_and_joins_to_the_whole_message(client):
    request = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = client.chat.completions.create(**request)
    first, *deltas, usage_chunk = client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    assert first.choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in deltas) == whole.choices[0].message.content
    assert deltas[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(chunk.choices[0].finish_reason is None for chunk in [first, *deltas[:-1]])
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert {chunk.model for chunk in [first, *deltas, usage_chunk]} == {MODEL}


def test_chat_n_samples_stream_per_index_like_the_whole_answer(client, llm, text_tokenizer):
    request = {"model": MODEL, "messages": MESSAGES, "n": 2, "temperature": 1.0, "seed": 11, "max_tokens": 8}
    whole = client.chat.completions.create(**request)
    expected = offline_chat(llm, MESSAGES, n=2, temperature=1.0, seed=11, max_tokens=8)
    assert [choice.index for choice in whole.choices] == [0, 1]
    assert [choice.message.content for choice in whole.choices] == [sample.text for sample in expected]
    assert expected[0].text != expected[1].text
    assert whole.usage.prompt_tokens == chat_prompt_token_count(text_tokenizer, MESSAGES)
    assert whole.usage.completion_tokens == sum(len(sample.token_ids) for sample in expected)

    contents: dict[int, str] = defaultdict(str)
    roles = defaultdict(list)
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    *chunks, usage_chunk = stream
    for chunk in chunks:
        [choice] = chunk.choices
        roles[choice.index].append(choice.delta.role)
        contents[choice.index] += choice.delta.content or ""
    assert dict(contents) == {0: expected[0].text, 1: expected[1].text}
    assert all(seen[0] == "assistant" and set(seen[1:]) == {None} for seen in roles.values())
    assert usage_chunk.usage == whole.usage


def test_streamed_chat_logprobs_join_to_the_whole_answers(client):
    request = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": True,
               "top_logprobs": 2}
    whole = client.chat.completions.create(**request).choices[0].logprobs.content
    chunks = client.chat.completions.create(**request, stream=True)
    joined = [entry for chunk in chunks for choice in chunk.choices if choice.logprobs
              for entry in choice.logprobs.content]
    assert [entry.model_dump() for entry in joined] == [entry.model_dump() for entry in whole]


def test_chat_logprobs_with_top_logprobs_match_the_offline_llm(client, llm):
    [expected] = offline_chat(llm, MESSAGES, max_tokens=8, logprobs=2)
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                              logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    content = choice.logprobs.content
    assert len(content) == len(expected.token_ids) == response.usage.completion_tokens
    for entry, token_id, position in zip(content, expected.token_ids, expected.logprobs, strict=True):
        assert entry.token == position[token_id].decoded_token
        assert entry.logprob == pytest.approx(position[token_id].logprob, abs=1e-4)
        best_two = sorted((logprob.logprob for logprob in position.values()), reverse=True)[:2]
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(best_two, abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the best
    # Each token's raw bytes, joined, are the message's UTF-8 (bytes of split characters included).
    joined = b"".join(bytes(entry.bytes) for entry in content)
    assert joined.decode("utf-8", errors="replace") == choice.message.content


# ---- Models, tokenizer endpoints, request ids --------------------------------------------------------------


def test_models_lists_the_served_name(client):
    assert [model.id for model in client.models.list().data] == [MODEL]


def test_tokenize_and_detokenize_round_trip(server, text_tokenizer):
    text = "def fibonacci(n): Größe 日本語 😀"
    tokenized = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "prompt": text}).json()
    assert tokenized["tokens"] == text_tokenizer.encode(text)
    assert tokenized["count"] == len(tokenized["tokens"])
    detokenized = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": tokenized["tokens"]})
    assert detokenized.json() == {"prompt": text}


def test_tokenize_counts_messages_as_the_chat_api_does(server, client):
    counted = httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()["count"]
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0)
    assert counted == response.usage.prompt_tokens


def test_a_sent_request_id_is_echoed_back(client, server):
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="Hello", max_tokens=2, extra_headers={"X-Request-Id": "acceptance-42"}
    )
    assert raw.headers["x-request-id"] == "acceptance-42"
    assert raw.parse().choices[0].finish_reason is not None
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"X-Request-Id": "stream-7"}) as r:
        assert r.headers["x-request-id"] == "stream-7"
        assert [line for line in r.iter_lines() if line.startswith("data:")][-1] == "data: [DONE]"


def test_a_request_id_is_made_when_none_is_sent(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    ids = [httpx.post(f"{server.url}/v1/chat/completions", json=body).headers.get("x-request-id") for _ in range(2)]
    assert all(ids) and ids[0] != ids[1]


def test_streamed_events_are_plain_json_lines(server):
    """Every streamed event is one `data: {json}` line; a client's JSON parser needs no NaN or Infinity."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "logprobs": 2, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        parsed = json.loads(event, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
        assert all(math.isfinite(value) for value in parsed["choices"][0]["logprobs"]["token_logprobs"])
