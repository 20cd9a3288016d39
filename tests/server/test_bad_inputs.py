"""Bad requests to a running server: each gets the right 4xx with an OpenAI-style error body that says what
is wrong, and the server goes on serving. At the end, no KV cache block is left behind by any of them."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server.helpers import assert_openai_error
from tests.server.server_process import ServerProcess

MAX_MODEL_LEN = 512  # the tiny model's max_position_embeddings
VOCAB_SIZE = 512
# ignore_eos: a sampled end of text would otherwise stop a good request short of its two tokens, at random.
GOOD_PROMPT = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 2, "ignore_eos": True}
GOOD_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
JSON = {"content-type": "application/json"}


def post(server: ServerProcess, path: str, body: dict | list | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30, **kwargs)


def assert_still_serving(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", GOOD_PROMPT)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


# ---- The body is not a request at all ------------------------------------------------------------------


def test_malformed_json_is_a_400_that_says_json(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", content=b'{"prompt": "hi", "max_tokens": ', headers=JSON)
    assert_openai_error(response, 400, "json")
    assert_still_serving(server)


def test_a_json_array_instead_of_an_object_is_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/chat/completions", [GOOD_CHAT])
    assert_openai_error(response, 400, "object")
    assert_still_serving(server)


def test_a_body_that_is_not_utf8_is_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", content=b'\xff\xfe{"prompt": "\xc3\x28", "max_tokens": 2}', headers=JSON)
    message = assert_openai_error(response, 400)
    assert "json" in message.lower() or "body" in message.lower(), message
    assert_still_serving(server)


def test_a_body_over_the_size_limit_is_a_413(server: ServerProcess) -> None:
    three_mib = "a" * (3 * 1024 * 1024)  # the shared server keeps the default limit of 2 MiB

    response = post(server, "/v1/completions", {"prompt": three_mib, "max_tokens": 2})

    assert_openai_error(response, 413, str(2 * 1024 * 1024), "bytes")
    assert_still_serving(server)


def test_a_chunked_body_over_the_size_limit_is_a_413_too(server: ServerProcess) -> None:
    def chunks():  # no Content-Length: the server must count the bytes as they arrive
        yield b'{"prompt": "'
        for _ in range(48):
            yield b"a" * 65536
        yield b'", "max_tokens": 2}'

    response = post(server, "/v1/completions", content=chunks(), headers=JSON)

    assert_openai_error(response, 413, "bytes")
    assert_still_serving(server)


# ---- Fields of the wrong type or out of range ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {**GOOD_PROMPT, "max_tokens": "ten"}, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {**GOOD_CHAT, "temperature": "warm"}, "temperature"),
        ("/v1/completions", {**GOOD_PROMPT, "prompt": {"text": "hi"}}, "prompt"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_400_naming_it(server: ServerProcess, path: str, body: dict, field: str) -> None:
    assert_openai_error(post(server, path, body), 400, field)
    assert_still_serving(server)


def test_an_unknown_model_is_a_404_naming_the_served_one(server: ServerProcess) -> None:
    response = post(server, "/v1/chat/completions", {**GOOD_CHAT, "model": "gpt-4"})

    assert_openai_error(response, 404, "gpt-4", "tiny")
    assert_still_serving(server)


def test_an_empty_messages_list_is_a_400(server: ServerProcess) -> None:
    assert_openai_error(post(server, "/v1/chat/completions", {**GOOD_CHAT, "messages": []}), 400, "messages")
    assert_still_serving(server)


def test_an_empty_prompt_is_a_400(server: ServerProcess) -> None:
    assert_openai_error(post(server, "/v1/completions", {**GOOD_PROMPT, "prompt": ""}), 400, "prompt", "empty")
    assert_still_serving(server)


@pytest.mark.parametrize("prompt", ["hello world " * 400, [5] * 600], ids=["text", "token-ids"])
def test_a_prompt_longer_than_the_model_is_a_400_with_both_lengths(server: ServerProcess, prompt) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "prompt": prompt})

    message = assert_openai_error(response, 400, "prompt", "maximum length", str(MAX_MODEL_LEN))
    if isinstance(prompt, list):
        assert str(len(prompt)) in message
    assert_still_serving(server)


def test_max_tokens_beyond_the_model_length_is_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "max_tokens": 100_000})

    assert_openai_error(response, 400, "max_tokens", str(MAX_MODEL_LEN))
    assert_still_serving(server)


@pytest.mark.parametrize("max_tokens", [0, -5])
@pytest.mark.parametrize(("path", "body"), [("/v1/completions", GOOD_PROMPT), ("/v1/chat/completions", GOOD_CHAT)])
def test_max_tokens_below_one_is_a_400(server: ServerProcess, path: str, body: dict, max_tokens: int) -> None:
    assert_openai_error(post(server, path, {**body, "max_tokens": max_tokens}), 400, "max_tokens", str(max_tokens))
    assert_still_serving(server)


def test_a_negative_temperature_is_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/chat/completions", {**GOOD_CHAT, "temperature": -0.5})

    assert_openai_error(response, 400, "temperature", "-0.5")
    assert_still_serving(server)


def test_top_p_zero_is_a_400(server: ServerProcess) -> None:
    assert_openai_error(post(server, "/v1/completions", {**GOOD_PROMPT, "top_p": 0}), 400, "top_p")
    assert_still_serving(server)


@pytest.mark.parametrize("n", [0, 10_000])
def test_n_out_of_range_is_a_400(server: ServerProcess, n: int) -> None:
    message = assert_openai_error(post(server, "/v1/completions", {**GOOD_PROMPT, "n": n}), 400)
    assert re.search(r"\bn\b", message), message
    assert_still_serving(server)


def test_logit_bias_with_a_key_that_is_not_a_token_id_is_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "logit_bias": {"hello": 5}})

    assert_openai_error(response, 400, "logit_bias", "hello")
    assert_still_serving(server)


@pytest.mark.parametrize("token_id", [VOCAB_SIZE, 10**6])
def test_logit_bias_for_a_token_outside_the_vocabulary_is_a_400(server: ServerProcess, token_id: int) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "logit_bias": {str(token_id): 5}})

    assert_openai_error(response, 400, "logit_bias", "vocabulary", str(VOCAB_SIZE))
    assert_still_serving(server)


def test_prompt_token_ids_outside_the_vocabulary_are_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "prompt": [5, -1, VOCAB_SIZE]})

    assert_openai_error(response, 400, "prompt", "vocabulary")
    assert_still_serving(server)


def test_five_stop_strings_are_a_400(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", {**GOOD_PROMPT, "stop": ["a", "b", "c", "d", "e"]})

    assert_openai_error(response, 400, "stop", "4")
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({**GOOD_PROMPT, "top_k": 10**30}, {}, "top_k"),
        ({**GOOD_PROMPT, "priority": 10**30}, {}, "priority"),
        (GOOD_PROMPT, {"x-priority": str(10**30)}, "x-priority"),
    ],
    ids=["top_k", "priority", "x-priority-header"],
)
def test_an_integer_too_large_for_the_engine_is_a_400_not_a_500(
    server: ServerProcess, body: dict, headers: dict, field: str
) -> None:
    assert_openai_error(post(server, "/v1/completions", body, headers=headers), 400, field)
    assert_still_serving(server)


def post_raw(server: ServerProcess, path: str, raw: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=raw.encode(), headers=JSON, timeout=30)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {**GOOD_CHAT, "max_tokens": None, "min_tokens": 2**70}, "min_tokens"),
        ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2**70}}, "max_new_tokens"),
        ("/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 2**70}}, "max_new_tokens"),
    ],
    ids=["chat-min-tokens", "generate", "generate-stream"],
)
def test_a_token_count_too_large_for_the_engine_is_a_400(server: ServerProcess, path: str, body: dict,
                                                          field: str) -> None:
    assert_openai_error(post(server, path, body), 400, field)
    assert_still_serving(server)


# A lone UTF-16 surrogate is a valid JSON escape, but no Unicode text: the tokenizer cannot take it.
@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/completions", r'{"prompt": "a\ud800b", "max_tokens": 2}'),
        ("/v1/completions", r'{"prompt": "ab", "max_tokens": 2, "stop": ["\ud800"]}'),
        ("/v1/chat/completions", r'{"messages": [{"role": "user", "content": "\ud800"}], "max_tokens": 2}'),
        ("/generate", r'{"inputs": "\udc00", "parameters": {"max_new_tokens": 2}}'),
        ("/tokenize", r'{"prompt": "\udc00"}'),
    ],
    ids=["prompt", "stop", "chat-content", "tgi-inputs", "tokenize"],
)
def test_a_lone_surrogate_in_text_is_a_400(server: ServerProcess, path: str, raw: str) -> None:
    assert_openai_error(post_raw(server, path, raw), 400)
    assert_still_serving(server)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_a_request_timeout_header_that_is_not_a_positive_number_is_a_400(server: ServerProcess, value: str) -> None:
    response = post(server, "/v1/completions", GOOD_PROMPT, headers={"x-request-timeout": value})

    assert_openai_error(response, 400, "x-request-timeout", value)
    assert_still_serving(server)


# ---- Last: nothing above leaked ------------------------------------------------------------------------


def test_bad_requests_leave_no_kv_cache_blocks_and_nothing_running(server: ServerProcess) -> None:
    assert_still_serving(server)  # an engine step after all of the above refreshes the gauges
    deadline = time.monotonic() + 10
    while server.metric("lmserve:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)

    assert server.metric("lmserve:num_requests_running") == 0
    assert server.metric("lmserve:num_requests_waiting") == 0
    assert server.metric("lmserve:kv_cache_usage_perc") == 0
