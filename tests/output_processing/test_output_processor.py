"""The output processor driven by hand-made engine-core outputs, as the engine core would send them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmserve.engine.messages import EngineCoreOutput
from lmserve.errors import InvalidRequestError
from lmserve.output_processing.output_processor import OutputProcessor
from lmserve.outputs import Logprob
from lmserve.sampling_params import RequestOutputKind, SamplingParams

PROMPT = "Say hi:"
CUMULATIVE, DELTA, FINAL_ONLY = RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY


def _start(tokenizer, request_id="r", child_ids=None, **params):
    """An output processor tracking one request; child ids default to one per sample."""
    processor = OutputProcessor(tokenizer)
    sampling = SamplingParams(**params)
    children = child_ids or [f"{request_id}#{i}" for i in range(sampling.n)]
    prompt_ids = tokenizer.encode(PROMPT) if tokenizer is not None else [5, 6, 7]
    processor.add_request(request_id, PROMPT, prompt_ids, sampling, arrival_time=1.0, child_request_ids=children)
    return processor


def _stream_tokens(processor, child_id, token_ids):
    """Send token_ids one step each, the last step finishing by length; stop at an abort as the engine would.

    Returns the request outputs, and whether the child was aborted.
    """
    request_outputs = []
    for position, token_id in enumerate(token_ids):
        finish_reason = "length" if position == len(token_ids) - 1 else None
        step = processor.process([EngineCoreOutput(child_id, [token_id], finish_reason=finish_reason)])
        request_outputs += step.request_outputs
        if child_id in step.requests_to_abort:
            return request_outputs, True
    return request_outputs, False


def test_stop_string_split_across_tokens_cuts_the_text_and_aborts_the_child(tokenizer):
    processor = _start(tokenizer, stop=["STOP"])
    token_ids = tokenizer.encode("Hello STOP and more")

    outputs, aborted = _stream_tokens(processor, "r#0", token_ids)

    assert aborted and outputs[-1].finished and not processor.has_unfinished_requests()
    completion = outputs[-1].outputs[0]
    assert (completion.text, completion.finish_reason, completion.stop_reason) == ("Hello ", "stop", "STOP")
    # The token that completed the stop string is the last one kept.
    assert completion.token_ids == token_ids[: len(completion.token_ids)]
    assert "STOP" in tokenizer.decode(completion.token_ids)
    assert "STOP" not in tokenizer.decode(completion.token_ids[:-1])
    # Late outputs of the stopped child (sent before the abort reached the engine) are ignored.
    assert processor.process([EngineCoreOutput("r#0", [token_ids[0]])]).request_outputs == []


def test_stop_string_kept_in_output(tokenizer):
    processor = _start(tokenizer, stop=["STOP"], include_stop_str_in_output=True)

    outputs, _ = _stream_tokens(processor, "r#0", tokenizer.encode("Hello STOP and more"))

    assert outputs[-1].outputs[0].text == "Hello STOP"


def test_earliest_of_several_stop_strings_ends_the_text(tokenizer):
    processor = _start(tokenizer, stop=["world", "lo w", "o"])

    step = processor.process([EngineCoreOutput("r#0", tokenizer.encode("Hello world"))])

    completion = step.request_outputs[0].outputs[0]
    assert (completion.text, completion.stop_reason) == ("Hell", "o")
    assert step.requests_to_abort == ["r#0"]


def test_stop_string_in_the_last_step_needs_no_abort(tokenizer):
    processor = _start(tokenizer, stop=["end"])

    step = processor.process([EngineCoreOutput("r#0", tokenizer.encode("the end"), finish_reason="length")])

    assert step.requests_to_abort == []
    completion = step.request_outputs[0].outputs[0]
    assert (completion.text, completion.finish_reason, completion.stop_reason) == ("the ", "stop", "end")


def test_stop_strings_count_only_after_min_tokens_in_the_text_after_theirs(tokenizer):
    # As in vLLM: the "o"s of "Hello" and "world" lie in the first min_tokens tokens' text, and one that starts
    # there cannot end a request later either.
    token_ids = tokenizer.encode("Hello world, foo bar")
    min_tokens = len(tokenizer.encode("Hello world"))
    processor = _start(tokenizer, stop=["o", "ld,"], min_tokens=min_tokens, max_tokens=50, output_kind=DELTA)

    outputs, aborted = _stream_tokens(processor, "r#0", token_ids)

    assert aborted
    assert "".join(o.outputs[0].text for o in outputs) == "Hello world, f"
    assert (outputs[-1].outputs[0].finish_reason, outputs[-1].outputs[0].stop_reason) == ("stop", "o")


_STREAM_SETTINGS = settings(max_examples=150, deadline=None)
_PIECES = st.sampled_from(["a", "b", "ab", " ", "中", "😀", "é"])


@_STREAM_SETTINGS
@given(data=st.data())
def test_streams_never_show_text_that_a_stop_string_later_removes(tokenizer, data):
    text = "".join(data.draw(st.lists(_PIECES, max_size=20)))
    stops = data.draw(st.lists(st.lists(_PIECES, min_size=1, max_size=3).map("".join), min_size=1, max_size=3))
    token_ids = tokenizer.encode(text)
    delta = _start(tokenizer, stop=stops, output_kind=DELTA)
    cumulative = _start(tokenizer, stop=stops, output_kind=CUMULATIVE)

    delta_texts, cumulative_texts, position = [], [], 0
    while position < len(token_ids):
        size = data.draw(st.integers(1, 3))
        chunk, position = token_ids[position : position + size], position + size
        finish_reason = "length" if position >= len(token_ids) else None
        for processor, texts in [(delta, delta_texts), (cumulative, cumulative_texts)]:
            step = processor.process([EngineCoreOutput("r#0", chunk, finish_reason=finish_reason)])
            texts += [request_output.outputs[0].text for request_output in step.request_outputs]
        if not delta.has_unfinished_requests():  # a stop string ended it
            break

    final = cumulative_texts[-1] if cumulative_texts else ""
    assert "".join(delta_texts) == final
    assert all(final.startswith(shown) for shown in cumulative_texts)
    assert not any(stop in final for stop in stops)
    assert text.startswith(final)


def test_n_samples_are_gathered_into_one_output_with_indices(tokenizer):
    processor = _start(tokenizer, n=3)
    words = {"r#0": " zero", "r#1": " one", "r#2": " two"}

    first = processor.process([EngineCoreOutput(child, tokenizer.encode(word)) for child, word in words.items()])
    second = processor.process(
        [EngineCoreOutput("r#2", [], finish_reason="length"), EngineCoreOutput("r#0", [], finish_reason="abort")]
    )
    last = processor.process([EngineCoreOutput("r#1", tokenizer.encode("!"), finish_reason="length")])

    assert len(first.request_outputs) == 1
    assert [(o.index, o.text) for o in first.request_outputs[0].outputs] == [(0, " zero"), (1, " one"), (2, " two")]
    assert not second.request_outputs[0].finished
    output = last.request_outputs[0]
    assert output.finished and not processor.has_unfinished_requests()
    assert [(o.text, o.finish_reason) for o in output.outputs] == [
        (" zero", "abort"), (" one!", "length"), (" two", "length")
    ]
    assert output.metrics.num_generation_tokens == sum(len(o.token_ids) for o in output.outputs)


def test_delta_outputs_carry_only_new_tokens_of_the_samples_that_moved(tokenizer):
    processor = _start(tokenizer, n=2, output_kind=DELTA, logprobs=0)
    hi, there = tokenizer.encode("hi"), tokenizer.encode(" there")

    first = processor.process([EngineCoreOutput("r#0", hi, new_logprobs=[{t: Logprob(-1.0, 1)} for t in hi])])
    second = processor.process([
        EngineCoreOutput("r#1", hi, new_logprobs=[{t: Logprob(-2.0, 1)} for t in hi]),
        EngineCoreOutput("r#0", there, new_logprobs=[{t: Logprob(-0.5, 1)} for t in there]),
    ])

    [zero] = first.request_outputs[0].outputs
    assert (zero.index, zero.text, zero.token_ids, len(zero.logprobs)) == (0, "hi", hi, len(hi))
    zero, one = sorted(second.request_outputs[0].outputs, key=lambda o: o.index)
    assert (zero.text, zero.token_ids, len(zero.logprobs)) == (" there", there, len(there))
    assert zero.cumulative_logprob == pytest.approx(-1.0 * len(hi) - 0.5 * len(there))
    assert (one.index, one.text, one.token_ids) == (1, "hi", hi)


def test_cumulative_outputs_carry_everything_so_far(tokenizer):
    processor = _start(tokenizer)
    hi, there = tokenizer.encode("hi"), tokenizer.encode(" there")

    processor.process([EngineCoreOutput("r#0", hi)])
    second = processor.process([EngineCoreOutput("r#0", there)])
    quiet = processor.process([EngineCoreOutput("r#0", [])])  # a step with nothing new reports nothing

    completion = second.request_outputs[0].outputs[0]
    assert (completion.text, completion.token_ids, completion.logprobs) == ("hi there", hi + there, None)
    assert completion.cumulative_logprob is None
    assert quiet.request_outputs == []


def test_cumulative_outputs_are_snapshots_that_later_steps_leave_alone(tokenizer):
    processor = _start(tokenizer, logprobs=0)
    hi, there = tokenizer.encode("hi"), tokenizer.encode(" there")

    def logprobs(token_ids):
        return [{t: Logprob(-1.0, 1)} for t in token_ids]

    [first] = processor.process([EngineCoreOutput("r#0", hi, new_logprobs=logprobs(hi))]).request_outputs
    [second] = processor.process(
        [EngineCoreOutput("r#0", there, new_logprobs=logprobs(there), finish_reason="length")]
    ).request_outputs

    assert (first.outputs[0].token_ids, len(first.outputs[0].logprobs)) == (hi, len(hi))
    assert first.metrics.num_generation_tokens == len(hi) and first.metrics.finished_time is None
    assert (second.outputs[0].text, second.outputs[0].token_ids) == ("hi there", hi + there)
    assert second.metrics.num_generation_tokens == len(hi + there) and second.finished


@_STREAM_SETTINGS
@given(data=st.data())
def test_without_stop_strings_any_chunking_gives_the_decoded_text(tokenizer, data):
    """Steps carrying several tokens are taken at once; the text must be what one-token steps give."""
    token_ids = tokenizer.encode("".join(data.draw(st.lists(_PIECES, min_size=1, max_size=20))))
    processors = [_start(tokenizer, output_kind=DELTA, logprobs=0), _start(tokenizer, output_kind=CUMULATIVE)]
    delta, cumulative = [], []
    position = 0
    while position < len(token_ids):
        size = data.draw(st.integers(1, 4))
        chunk, position = token_ids[position : position + size], position + size
        step = EngineCoreOutput(
            "r#0",
            chunk,
            new_logprobs=[{t: Logprob(-0.5, 1)} for t in chunk],
            finish_reason="length" if position >= len(token_ids) else None,
        )
        for processor, request_outputs in zip(processors, [delta, cumulative], strict=True):
            request_outputs += processor.process([step]).request_outputs

    assert "".join(o.outputs[0].text for o in delta) == cumulative[-1].outputs[0].text == tokenizer.decode(token_ids)
    assert sum(len(o.outputs[0].token_ids) for o in delta) == len(token_ids)
    assert delta[-1].outputs[0].cumulative_logprob == pytest.approx(-0.5 * len(token_ids))
    assert delta[-1].metrics.num_generation_tokens == cumulative[-1].metrics.num_generation_tokens == len(token_ids)


def test_tokens_dropped_after_a_stop_string_are_not_counted(tokenizer):
    processor = _start(tokenizer, stop=["STOP"])

    [output] = processor.process([EngineCoreOutput("r#0", tokenizer.encode("Hello STOP and more"))]).request_outputs

    assert output.finished and output.metrics.num_generation_tokens == len(output.outputs[0].token_ids)


def test_final_only_reports_once_every_sample_finished(tokenizer):
    processor = _start(tokenizer, n=2, output_kind=FINAL_ONLY)

    running = processor.process([EngineCoreOutput("r#0", tokenizer.encode("a")), EngineCoreOutput("r#1", [3])])
    half_done = processor.process([EngineCoreOutput("r#0", tokenizer.encode("b"), finish_reason="length")])
    done = processor.process([EngineCoreOutput("r#1", [4], finish_reason="stop", stop_reason=4)])

    assert running.request_outputs == half_done.request_outputs == []
    [output] = done.request_outputs
    assert output.finished
    assert [(o.text, o.finish_reason, o.stop_reason) for o in output.outputs] == [
        ("ab", "length", None), (tokenizer.decode([3, 4]), "stop", 4)
    ]


def test_logprobs_and_prompt_logprobs_get_decoded_tokens(tokenizer):
    processor = _start(tokenizer, logprobs=1, prompt_logprobs=1, output_kind=DELTA)
    prompt_ids = tokenizer.encode(PROMPT)
    prompt_positions = [None] + [{t: Logprob(-1.0, 1)} for t in prompt_ids[1:]]
    hello = tokenizer.encode("Hello")

    chunk = processor.process([EngineCoreOutput("r#0", [], new_prompt_logprobs=prompt_positions[:2])])
    first = processor.process([EngineCoreOutput(
        "r#0", hello[:1],
        new_logprobs=[{hello[0]: Logprob(-0.25, 1), tokenizer.eos_token_id: Logprob(-3.0, 2)}],
        new_prompt_logprobs=prompt_positions[2:],
    )])
    second = processor.process([EngineCoreOutput("r#0", hello[1:2], new_logprobs=[{hello[1]: Logprob(-0.5, 1)}])])

    assert chunk.request_outputs == []  # prompt logprobs alone are kept for the first token's output
    output = first.request_outputs[0]
    assert output.prompt_logprobs[0] is None
    assert [next(iter(p.values())).decoded_token for p in output.prompt_logprobs[1:]] == [
        tokenizer.decode([t]) for t in prompt_ids[1:]
    ]
    [position] = output.outputs[0].logprobs
    assert position[tokenizer.eos_token_id].decoded_token == "<|im_end|>"
    assert position[hello[0]].decoded_token == tokenizer.decode(hello[:1])
    later = second.request_outputs[0]
    assert later.prompt_logprobs is None  # already sent
    assert later.outputs[0].cumulative_logprob == pytest.approx(-0.75)


def test_metrics_follow_the_request(tokenizer):
    processor = _start(tokenizer, n=2)

    processor.process([EngineCoreOutput("r#0", [], num_cached_tokens=0, first_scheduled_time=2.0)])
    processor.process([EngineCoreOutput("r#1", [], num_cached_tokens=4, first_scheduled_time=1.5)])
    processor.process([EngineCoreOutput("r#0", [3]), EngineCoreOutput("r#1", [4, 5], finish_reason="length")])
    [output] = processor.process([EngineCoreOutput("r#0", [6], finish_reason="length")]).request_outputs

    metrics = output.metrics
    assert metrics.arrival_time == 1.0 and metrics.first_scheduled_time == 1.5
    assert metrics.first_token_time <= metrics.last_token_time <= metrics.finished_time
    assert (metrics.num_prompt_tokens, metrics.num_generation_tokens) == (len(tokenizer.encode(PROMPT)), 4)
    assert metrics.num_cached_tokens == output.num_cached_tokens == 4


def test_abort_forgets_the_request_and_names_its_running_children(tokenizer):
    processor = _start(tokenizer, n=2)
    processor.process([EngineCoreOutput("r#1", [3], finish_reason="length")])

    assert processor.abort_request("r") == ["r#0"]
    assert processor.abort_request("r") == []
    assert not processor.has_unfinished_requests()
    assert processor.process([EngineCoreOutput("r#0", [3])]).request_outputs == []


def test_without_a_tokenizer_text_stays_empty_and_stop_strings_are_refused():
    processor = _start(None)

    [output] = processor.process([EngineCoreOutput("r#0", [3, 4], finish_reason="length")]).request_outputs

    assert (output.outputs[0].text, output.outputs[0].token_ids) == ("", [3, 4])
    with pytest.raises(InvalidRequestError, match="stop strings need a tokenizer"):
        _start(None, stop=["x"])


def test_request_ids_must_be_new_and_match_n(tokenizer):
    processor = _start(tokenizer, request_id="r")

    with pytest.raises(InvalidRequestError, match="already in use"):
        processor.add_request("r", None, [1], SamplingParams(), 0.0, ["other"])
    with pytest.raises(ValueError, match="n=2 needs 2 child ids, not 1"):
        processor.add_request("s", None, [1], SamplingParams(n=2), 0.0, ["s#0"])


def test_request_ids_lists_the_tracked_requests(tokenizer):
    processor = _start(tokenizer, request_id="r", child_ids=["r"])  # a single sample keeps the request's id

    assert "r" in processor.request_ids()
    processor.process([EngineCoreOutput("r", [3], finish_reason="length")])
    assert "r" not in processor.request_ids()
