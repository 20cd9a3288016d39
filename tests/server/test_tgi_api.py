"""The TGI API answers in TGI's format, with the texts the offline `LLM` computes greedily (TGI's default)."""

from __future__ import annotations

import json

import httpx
import pytest

from lmserve import LLM, CompletionOutput, SamplingParams

PROMPT = "def fibonacci(n):\n    return"
TOKEN_FIELDS = {"id", "text", "logprob", "special"}


def offline_greedy(llm: LLM, prompt: str, max_tokens: int, **params) -> CompletionOutput:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, **params)
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]


def whole_token_stop(tokenizer, token_ids: list[int], text: str) -> tuple[str, int]:
    """A stop sequence that is one whole generated token's text (printable ASCII, not the first token,
    appearing there first), and how many tokens end with it. Whole tokens, so that cutting the text at
    the stop or after its token gives the same answer."""
    for count in range(2, len(token_ids) + 1):
        before, through = tokenizer.decode(token_ids[: count - 1]), tokenizer.decode(token_ids[:count])
        stop = through[len(before) :]
        if text.startswith(through) and stop.strip() and stop.isascii() and stop.isprintable():
            if text.index(stop) == len(before):
                return stop, count
    raise AssertionError(f"no usable stop sequence in {text!r}")


def generate(server, prompt: str, **parameters) -> dict:
    response = httpx.post(f"{server.url}/generate", json={"inputs": prompt, "parameters": parameters}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def stream_events(server, prompt: str, **parameters) -> list[dict]:
    """The `data:` events of /generate_stream, parsed."""
    body = {"inputs": prompt, "parameters": parameters}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line.removeprefix("data:")) for line in response.iter_lines() if line.startswith("data:")]


def test_generate_decodes_greedily_by_default(server, llm):
    response = httpx.post(f"{server.url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12}})
    assert response.json() == {"generated_text": offline_greedy(llm, PROMPT, 12).text}


def test_generate_details_describe_every_generated_token(server, llm, text_tokenizer):
    expected = offline_greedy(llm, PROMPT, 12, logprobs=0)
    answer = generate(server, PROMPT, max_new_tokens=12, details=True)
    assert answer["generated_text"] == expected.text
    details = answer["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == len(expected.token_ids) == 12
    assert [token["id"] for token in details["tokens"]] == expected.token_ids
    for token, token_id, position in zip(details["tokens"], expected.token_ids, expected.logprobs, strict=True):
        assert token.keys() == TOKEN_FIELDS
        assert token["text"] == position[token_id].decoded_token
        assert token["logprob"] == pytest.approx(position[token_id].logprob, abs=1e-4)
        assert token["special"] is (token_id in text_tokenizer.all_special_ids)


def test_a_stop_sequence_ends_the_text_and_is_kept(server, llm, text_tokenizer):
    full = offline_greedy(llm, PROMPT, 16)
    stop, num_tokens = whole_token_stop(text_tokenizer, full.token_ids, full.text)
    expected = full.text[: full.text.index(stop) + len(stop)]  # TGI keeps the stop sequence
    answer = generate(server, PROMPT, max_new_tokens=16, stop=[stop], details=True)
    assert answer["generated_text"] == expected
    assert answer["details"]["finish_reason"] == "stop_sequence"
    assert answer["details"]["generated_tokens"] == num_tokens
    assert [token["id"] for token in answer["details"]["tokens"]] == full.token_ids[:num_tokens]
    events = stream_events(server, PROMPT, max_new_tokens=16, stop=[stop], details=True)
    assert events[-1]["generated_text"] == "".join(event["token"]["text"] for event in events) == expected
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"


def test_generate_stream_sends_one_event_per_token_and_the_whole_text_last(server, llm):
    expected = offline_greedy(llm, PROMPT, 12)
    events = stream_events(server, PROMPT, max_new_tokens=12)
    assert [event["index"] for event in events] == list(range(len(expected.token_ids)))
    assert [event["token"]["id"] for event in events] == expected.token_ids
    assert all(event["token"].keys() == TOKEN_FIELDS for event in events)
    assert [event["generated_text"] for event in events[:-1]] == [None] * (len(events) - 1)
    streamed_text = "".join(event["token"]["text"] for event in events)
    assert events[-1]["generated_text"] == streamed_text == expected.text
    assert streamed_text == generate(server, PROMPT, max_new_tokens=12)["generated_text"]


def test_generate_stream_details_come_with_the_last_event(server):
    events = stream_events(server, PROMPT, max_new_tokens=5, details=True)
    assert [event["details"] for event in events[:-1]] == [None] * 4
    assert events[-1]["details"]["finish_reason"] == "length"
    assert events[-1]["details"]["generated_tokens"] == 5


def test_info_describes_the_served_model_and_its_limits(server):
    info = httpx.get(f"{server.url}/info").json()
    max_model_len = httpx.get(f"{server.url}/v1/models").json()["data"][0]["max_model_len"]
    assert info["model_id"] == "tiny"
    assert info["max_total_tokens"] == max_model_len
    max_input = info.get("max_input_tokens", info.get("max_input_length"))
    assert isinstance(max_input, int) and 0 < max_input < info["max_total_tokens"]
