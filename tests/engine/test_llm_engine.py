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
