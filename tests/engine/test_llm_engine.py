"""The engine API a server drives: add, step for incremental outputs, abort, stats."""

import pytest

from lmserve.engine.llm_engine import LLMEngine
from lmserve.errors import InvalidRequestError
from lmserve.sampling_params import RequestOutputKind, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_models):
    return LLMEngine.from_options(
        str(tiny_models.get("llama")), dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=16
    )


def run_to_completion(engine):
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step())
    return outputs


def test_step_reports_each_request_as_it_progresses(engine):
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    engine.add_request("a", list(range(3, 40)), params)  # 37 tokens: prefilled over three steps
    seen = [[], []]
    while engine.has_unfinished_requests():
        for output in engine.step():
            seen[output.finished].append(list(output.outputs[0].token_ids))
    progress, (final,) = seen
    assert [len(tokens) for tokens in progress] == [1, 2, 3, 4]  # cumulative, one new token a step
    assert all(final[: len(tokens)] == tokens for tokens in progress) and len(final) == 5


def test_delta_outputs_carry_only_new_tokens(engine):
    engine.add_request("delta", list(range(3, 10)), SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True,
                                                                   output_kind=RequestOutputKind.DELTA))
    deltas = [output.outputs[0].token_ids for output in run_to_completion(engine)]
    assert [len(d) for d in deltas] == [1, 1, 1, 1]
    engine.add_request("whole", list(range(3, 10)), SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    *_, final = run_to_completion(engine)
    assert sum(deltas, []) == final.outputs[0].token_ids


def test_abort_frees_blocks_at_once_and_the_request_reports_nothing_more(engine):
    engine.add_request("long", list(range(3, 60)), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("short", list(range(3, 8)), SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()
    assert engine.stats().num_used_blocks > 0
    engine.abort_request("long")
    outputs = run_to_completion(engine)
    assert {output.request_id for output in outputs} == {"short"}
    stats = engine.stats()
    assert stats.num_used_blocks == 0 and stats.num_running == 0 and stats.num_waiting == 0


def test_request_ids_must_be_unique_while_running(engine):
    engine.add_request("same", [5, 6, 7], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("same", [5, 6, 7], SamplingParams(max_tokens=2))
    run_to_completion(engine)
    engine.add_request("same", [5, 6, 7], SamplingParams(max_tokens=2))  # free again once finished
    run_to_completion(engine)


def test_higher_priority_waiting_requests_are_admitted_first(tiny_models):
    engine = LLMEngine.from_options(
        str(tiny_models.get("llama")), dtype="float32", skip_tokenizer_init=True, max_num_seqs=1
    )
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    engine.add_request("later", [5, 6], params, priority=1)
    engine.add_request("urgent", [5, 6], params, priority=-1)
    engine.add_request("normal", [5, 6], params, priority=0)
    stats = engine.stats()
    assert stats.num_waiting == 3 and stats.num_running == 0
    finished_order = [output.request_id for output in run_to_completion(engine) if output.finished]
    assert finished_order == ["urgent", "normal", "later"]


def overlap_workload() -> list[tuple[list[int], SamplingParams]]:
    """Requests touching every sampling feature whose state spans steps."""
    return [
        (list(range(3, 40)), SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)),
        (list(range(5, 12)), SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)),
        (list(range(7, 30)), SamplingParams(temperature=0.0, max_tokens=6, min_tokens=4, logprobs=2)),
        (list(range(9, 14)), SamplingParams(temperature=0.8, top_k=5, seed=3, max_tokens=7, stop_token_ids=[17])),
        (list(range(4, 60)), SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=1, ignore_eos=True)),
    ]


def generate_all(tiny_models, requests, **options) -> dict:
    engine = LLMEngine.from_options(
        str(tiny_models.get("llama")), dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=24,
        **options,
    )
    for index, (prompt, params) in enumerate(requests):
        engine.add_request(str(index), prompt, params)
    finals = {output.request_id: output for output in run_to_completion(engine) if output.finished}
    assert engine.stats().num_used_blocks == 0
    return {
        request_id: (
            output.outputs[0].token_ids,
            output.outputs[0].finish_reason,
            output.outputs[0].logprobs,
            output.prompt_logprobs,
        )
        for request_id, output in finals.items()
    }


@pytest.mark.parametrize("with_penalties", [False, True])
def test_overlapped_steps_give_the_same_outputs_as_steps_one_at_a_time(tiny_models, with_penalties):
    requests = overlap_workload()
    if with_penalties:  # penalties read every output token, counted on the device as it is sampled
        requests.append((list(range(3, 9)), SamplingParams(temperature=0.0, max_tokens=8, repetition_penalty=1.5,
                                                           frequency_penalty=0.5, ignore_eos=True)))
    overlapped = generate_all(tiny_models, requests)
    one_at_a_time = generate_all(tiny_models, requests, async_scheduling=False)
    assert overlapped == one_at_a_time
    assert len(overlapped[str(2)][0]) >= 4  # min_tokens held


def test_overlapped_steps_report_a_step_once_the_next_is_launched(tiny_models):
    engine = LLMEngine.from_options(str(tiny_models.get("llama")), dtype="float32", skip_tokenizer_init=True)
    engine.add_request("a", [3, 4, 5], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True,
                                                      output_kind=RequestOutputKind.DELTA))
    per_step = [len(engine.step()) for _ in range(4)]
    # Step 1 launches the prefill; each later step launches one more and reports the one before. The
    # fourth launches nothing, since the third token is already being sampled.
    assert per_step == [0, 1, 1, 1] and not engine.has_unfinished_requests()
