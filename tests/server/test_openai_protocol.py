"""OpenAI request bodies: validation and conversion to SamplingParams; the shapes of the response bodies."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from lmserve.errors import InvalidRequestError
from lmserve.outputs import CompletionOutput, Logprob, RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams
from lmserve.server.openai_protocol import (
    MAX_N,
    MAX_PROMPTS,
    MIN_LOGPROB,
    ChatChoices,
    ChatCompletionRequest,
    ChatMessage,
    CompletionChoices,
    CompletionRequest,
    ResponseHeader,
    TokenBytes,
    TokenizeRequest,
    chat_logprobs,
    completion_logprobs,
    usage,
)

MAX_MODEL_LEN = 512
USER = {"role": "user", "content": "Hi"}


def completion_params(defaults: SamplingParams | None = None, **body) -> SamplingParams:
    return CompletionRequest(prompt="Hello", **body).to_sampling_params(defaults or SamplingParams(), MAX_MODEL_LEN)


def chat_params(defaults: SamplingParams | None = None, **body) -> SamplingParams:
    request = ChatCompletionRequest(messages=[USER], **body)
    return request.to_sampling_params(defaults or SamplingParams(), MAX_MODEL_LEN)


def decode(token_id: int) -> str:
    return f"<{token_id}>"


# ---- Requests -----------------------------------------------------------------------------------------


def test_unset_fields_take_the_models_generation_defaults():
    model_defaults = SamplingParams(temperature=0.6, top_p=0.9, top_k=20, repetition_penalty=1.1)
    params = completion_params(model_defaults)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.6, 0.9, 20, 1.1)


def test_request_values_win_over_the_defaults_even_when_falsy():
    params = completion_params(SamplingParams(temperature=0.6, top_p=0.9), temperature=0.0, top_p=0.5, seed=0)
    assert (params.temperature, params.top_p, params.seed) == (0.0, 0.5, 0)


def test_every_engine_field_passes_through():
    params = completion_params(
        n=3, top_k=5, min_p=0.1, frequency_penalty=0.5, presence_penalty=-0.5, seed=7, stop_token_ids=[2, 3],
        ignore_eos=True, min_tokens=2, include_stop_str_in_output=True, skip_special_tokens=False, max_tokens=9,
    )
    assert (params.n, params.top_k, params.min_p, params.seed, params.max_tokens) == (3, 5, 0.1, 7, 9)
    assert (params.frequency_penalty, params.presence_penalty) == (0.5, -0.5)
    assert params.stop_token_ids == [2, 3] and params.ignore_eos and params.min_tokens == 2
    assert params.include_stop_str_in_output and not params.skip_special_tokens


def test_top_k_zero_means_off():
    assert completion_params(top_k=0).top_k == -1


def test_stream_asks_for_deltas_and_otherwise_for_the_final_output_only():
    assert completion_params(stream=True).output_kind is RequestOutputKind.DELTA
    assert completion_params().output_kind is RequestOutputKind.FINAL_ONLY


def test_completion_max_tokens_defaults_to_16_or_the_models_max_new_tokens():
    assert completion_params().max_tokens == 16
    assert completion_params(SamplingParams(max_tokens=64)).max_tokens == 64
    assert completion_params(SamplingParams(max_tokens=64), max_tokens=5).max_tokens == 5


def test_chat_max_tokens_defaults_to_the_room_left_unless_the_model_sets_one():
    assert chat_params().max_tokens is None  # the engine fills what the prompt leaves of max_model_len
    assert chat_params(SamplingParams(max_tokens=64)).max_tokens == 64


def test_chat_max_completion_tokens_wins_over_max_tokens():
    assert chat_params(max_tokens=10).max_tokens == 10
    assert chat_params(max_tokens=10, max_completion_tokens=20).max_tokens == 20


def test_max_tokens_no_prompt_could_leave_room_for_is_refused():
    with pytest.raises(InvalidRequestError, match="maximum length"):
        completion_params(max_tokens=MAX_MODEL_LEN)
    assert completion_params(max_tokens=MAX_MODEL_LEN - 1).max_tokens == MAX_MODEL_LEN - 1


def test_a_models_max_new_tokens_beyond_the_served_length_is_cut_not_refused():
    # A generation config's max_new_tokens 1024 served at a shorter max_model_len: requests without a
    # max_tokens of their own are served, as long as the prompt leaves room.
    long_default = SamplingParams(max_tokens=1024)
    assert completion_params(long_default).max_tokens == MAX_MODEL_LEN - 1
    assert chat_params(long_default).max_tokens == MAX_MODEL_LEN - 1
    with pytest.raises(InvalidRequestError, match="maximum length"):
        chat_params(long_default, max_tokens=1024)


def test_invalid_sampling_values_raise_invalid_request_error():
    with pytest.raises(InvalidRequestError, match="temperature"):
        completion_params(temperature=-1.0)
    with pytest.raises(InvalidRequestError, match="stop strings"):
        completion_params(stop=[""])


def test_stop_takes_a_string_or_at_most_four_strings():
    assert completion_params(stop="\n").stop == ["\n"]
    assert completion_params(stop=["a", "b", "c", "d"]).stop == ["a", "b", "c", "d"]
    with pytest.raises(ValidationError, match="at most 4 stop strings"):
        CompletionRequest(prompt="x", stop=["a", "b", "c", "d", "e"])


def test_logit_bias_keys_are_token_ids():
    assert completion_params(logit_bias={"5": 2.0, "7": -100}).logit_bias == {5: 2.0, 7: -100.0}
    for key in ("abc", "1.5", "-1", ""):
        with pytest.raises(ValidationError, match="logit_bias keys must be token ids"):
            CompletionRequest(prompt="x", logit_bias={key: 1.0})


@pytest.mark.parametrize("n", [0, MAX_N + 1, 10**9])
def test_n_out_of_bounds_is_refused(n):
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", n=n)


def test_seed_must_fit_a_generator():
    assert completion_params(seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", seed=2**64)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Hello", ["Hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_prompt_forms(prompt, expected):
    assert CompletionRequest(prompt=prompt).prompts() == expected


@pytest.mark.parametrize("prompt", [[], [[]], [True, 2], [1.5], ["a"] * (MAX_PROMPTS + 1), None])
def test_invalid_prompts_are_refused(prompt):
    with pytest.raises(ValidationError):
        CompletionRequest(prompt=prompt)


def test_unknown_fields_are_ignored():
    request = CompletionRequest.model_validate({"prompt": "x", "user": "me", "suffix": "!", "something_new": 1})
    assert request.prompts() == ["x"]


def test_best_of_is_refused_unless_it_equals_n():
    assert CompletionRequest(prompt="x", n=2, best_of=2).best_of == 2
    with pytest.raises(ValidationError, match="best_of"):
        CompletionRequest(prompt="x", best_of=3)


def test_completion_logprobs_and_echo_map_to_logprobs_and_prompt_logprobs():
    assert completion_params().logprobs is None
    params = completion_params(logprobs=3)
    assert (params.logprobs, params.prompt_logprobs) == (3, None)
    params = completion_params(logprobs=3, echo=True)
    assert (params.logprobs, params.prompt_logprobs) == (3, 3)
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", logprobs=21)


def test_chat_logprobs_and_top_logprobs_map_to_logprobs():
    assert chat_params().logprobs is None
    assert chat_params(logprobs=True).logprobs == 0
    assert chat_params(logprobs=True, top_logprobs=4).logprobs == 4
    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        ChatCompletionRequest(messages=[USER], top_logprobs=2)


def test_include_usage_comes_from_stream_options():
    assert not CompletionRequest(prompt="x", stream=True).include_usage
    assert CompletionRequest(prompt="x", stream=True, stream_options={"include_usage": True}).include_usage


def test_chat_messages_join_text_parts_and_keep_their_other_fields():
    message = ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                          name="ann")
    assert message.to_template() == {"role": "user", "content": "a\nb", "name": "ann"}
    assert ChatMessage(role="assistant", content=None).to_template() == {"role": "assistant", "content": ""}


def test_chat_refuses_non_text_parts_and_empty_conversations():
    with pytest.raises(ValidationError, match="only text content parts"):
        ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": "http://x"}}])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[])


def test_tokenize_takes_exactly_one_of_prompt_and_messages():
    assert TokenizeRequest(prompt="x").prompt == "x"
    for body in ({}, {"prompt": "x", "messages": [USER]}):
        with pytest.raises(ValidationError, match="exactly one"):
            TokenizeRequest(**body)


# ---- Responses ----------------------------------------------------------------------------------------


def position(chosen: int, chosen_logprob: float, *alternatives: tuple[int, float]) -> dict[int, Logprob]:
    """A position's logprobs: the alternatives ranked in the order given, the chosen token with its rank."""
    ranked = {token: Logprob(logprob, rank) for rank, (token, logprob) in enumerate(alternatives, start=1)}
    return {**ranked, chosen: ranked.get(chosen, Logprob(chosen_logprob, len(alternatives) + 1))}


def test_completion_logprobs_are_parallel_lists_with_a_null_first_prompt_position():
    positions = [None, position(5, -0.5, (5, -0.5), (6, -1.5)), position(7, -3.0, (6, -0.1))]
    logprobs = completion_logprobs([4, 5, 7], positions, decode, first_offset=10)
    assert logprobs == {
        "tokens": ["<4>", "<5>", "<7>"],
        "token_logprobs": [None, -0.5, -3.0],
        "top_logprobs": [None, {"<5>": -0.5, "<6>": -1.5}, {"<6>": -0.1, "<7>": -3.0}],
        "text_offset": [10, 13, 16],
    }


def test_logprobs_prefer_the_engines_decoded_text_and_stay_valid_json():
    chosen = {3: Logprob(-math.inf, 2, decoded_token="hi")}
    logprobs = completion_logprobs([3], [chosen], decode)
    assert logprobs["tokens"] == ["hi"] and logprobs["token_logprobs"] == [MIN_LOGPROB]
    json.dumps(logprobs, allow_nan=False)


def test_chat_logprobs_list_the_requested_alternatives_best_first():
    positions = [position(7, -3.0, (6, -0.1), (8, -0.2), (9, -0.3))]
    logprobs = chat_logprobs([7], positions, 2, decode)
    assert logprobs == {"content": [{
        "token": "<7>", "logprob": -3.0, "bytes": list(b"<7>"),
        "top_logprobs": [
            {"token": "<6>", "logprob": -0.1, "bytes": list(b"<6>")},
            {"token": "<8>", "logprob": -0.2, "bytes": list(b"<8>")},
        ],
    }]}
    assert chat_logprobs([7], positions, 0, decode)["content"][0]["top_logprobs"] == []


def test_token_bytes_are_raw_even_for_part_of_a_character(tokenizer):
    token_bytes = TokenBytes(tokenizer)
    word = "Größe"
    token_ids = tokenizer.encode(word, add_special_tokens=False)
    pieces = [token_bytes(token_id, tokenizer.decode([token_id])) for token_id in token_ids]
    assert b"".join(bytes(piece) for piece in pieces) == word.encode()
    assert TokenBytes(None)(0, "é") == list("é".encode())


def test_usage_totals():
    assert usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_response_header_starts_every_body():
    body = ResponseHeader("cmpl-1", "tiny", created=5).body("text_completion", [], usage=None)
    assert body == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "tiny", "choices": [],
                    "usage": None}


def sample(index: int, text: str, token_ids: list[int], finish_reason: str | None = "length", logprobs=None):
    return CompletionOutput(index, text, token_ids, logprobs=logprobs, finish_reason=finish_reason)


def request_output(prompt: str, prompt_token_ids: list[int], samples: list[CompletionOutput]) -> RequestOutput:
    return RequestOutput("r", prompt, prompt_token_ids, samples, finished=True)


def test_completion_choices_index_prompt_times_n_plus_sample_and_sum_usage():
    choices = CompletionChoices(CompletionRequest(prompt=["a", "b"], n=2), tokenizer=None)
    first = choices.add(0, request_output("a", [1], [sample(0, "x", [5, 6]), sample(1, "y", [7])]))
    second = choices.add(1, request_output("b", [2, 3], [sample(0, "z", [8]), sample(1, "w", [9, 9, 9])]))
    assert [(c["index"], c["text"], c["finish_reason"]) for c in first + second] == [
        (0, "x", "length"), (1, "y", "length"), (2, "z", "length"), (3, "w", "length")
    ]
    assert choices.usage() == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}


def test_streamed_completion_chunks_echo_once_and_skip_empty_deltas():
    body = CompletionRequest(prompt="Hi", echo=True, stream=True)
    choices = CompletionChoices(body, tokenizer=None)
    deltas = [sample(0, " there", [5], None), sample(0, "", [6], None), sample(0, "!", [7], "stop")]
    texts = [[c["text"] for c in choices.add(0, request_output("Hi", [1, 2], [delta]))] for delta in deltas]
    assert texts == [["Hi there"], [], ["!"]]
    assert choices.usage() == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_echoed_logprobs_cover_prompt_and_output_and_offsets_carry_across_chunks(tokenizer):
    body = CompletionRequest(prompt="import json", echo=True, logprobs=0, stream=True)
    choices = CompletionChoices(body, tokenizer)
    prompt_ids = tokenizer.encode("import json")
    first_id, second_id = tokenizer.encode(" as")[0], tokenizer.encode(" j")[0]
    first_text, second_text = tokenizer.decode([first_id]), tokenizer.decode([second_id])
    prompt_logprobs = [None] + [position(token_id, -0.2) for token_id in prompt_ids[1:]]
    first_delta = sample(0, first_text, [first_id], None, [position(first_id, -0.3)])
    [first] = choices.add(0, RequestOutput("r", "import json", prompt_ids, [first_delta], finished=False,
                                           prompt_logprobs=prompt_logprobs))
    assert first["text"] == "import json" + first_text
    assert first["logprobs"]["tokens"] == [tokenizer.decode([t]) for t in prompt_ids] + [first_text]
    assert first["logprobs"]["token_logprobs"] == [None] + [-0.2] * (len(prompt_ids) - 1) + [-0.3]
    assert first["logprobs"]["text_offset"][0] == 0
    assert first["logprobs"]["text_offset"][-1] == len("import json")
    second_delta = sample(0, second_text, [second_id], "length", [position(second_id, -0.4)])
    [second] = choices.add(0, request_output("import json", prompt_ids, [second_delta]))
    assert second["text"] == second_text
    assert second["logprobs"]["text_offset"] == [len("import json" + first_text)]


def test_chat_choices_build_messages_and_count_usage():
    body = ChatCompletionRequest(messages=[USER], n=2, logprobs=True)
    choices = ChatChoices(body, tokenizer=None)
    output = request_output("", [1, 2, 3], [sample(0, "hi", [5], "stop", [position(5, -0.5)]), sample(1, "yo", [6, 7])])
    output.outputs[1].logprobs = [position(6, -0.6), position(7, -0.7)]
    built = choices.add_final(output)
    assert built[0]["message"] == {"role": "assistant", "content": "hi"}
    assert built[0]["finish_reason"] == "stop"
    assert [entry["logprob"] for entry in built[1]["logprobs"]["content"]] == [-0.6, -0.7]
    assert choices.usage() == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
