"""The penalty history holds, per request, what straight token lists would: its prompt's tokens and its
output counts, through joins, steps, departures, row reuse and growth."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmserve.sampling_params import SamplingParams
from lmserve.worker.penalty_history import PenaltyHistory
from lmserve.worker.staging import HostToDevice

VOCAB_SIZE = 12
CPU = torch.device("cpu")


def new_history(num_rows: int) -> PenaltyHistory:
    return PenaltyHistory(VOCAB_SIZE, num_rows, CPU, HostToDevice(CPU))


def test_a_step_without_penalties_builds_nothing() -> None:
    history = new_history(2)
    assert history.penalties(["a", "b"], [SamplingParams(), SamplingParams(temperature=0.0)], [[1], [2]]) is None


def test_requests_without_penalties_read_the_zero_row_and_only_repetition_reads_the_prompt() -> None:
    history = new_history(4)
    params = [SamplingParams(frequency_penalty=1.0), SamplingParams(), SamplingParams(repetition_penalty=1.2)]
    penalties = history.penalties(["a", "b", "c"], params, [[1, 2], [3], [4, 4, 5]])
    rows = penalties.rows.tolist()
    assert rows[1] == 0 and 0 not in (rows[0], rows[2]) and rows[0] != rows[2]
    assert penalties.prompt_mask[rows[0]].sum() == 0  # frequency_penalty does not look at the prompt
    assert penalties.prompt_mask[rows[2]].nonzero().flatten().tolist() == [4, 5]
    history.record(penalties, torch.tensor([7, 8, 9]))
    assert penalties.output_counts[0].sum() == 0  # the zero row stays zero
    assert penalties.output_counts[rows[0], 7] == 1 and penalties.output_counts[rows[2], 9] == 1
    assert penalties.repetition.tolist() == pytest.approx([1.0, 1.0, 1.2]) and penalties.frequency.tolist() == [1, 0, 0]


# A step: requests to leave, then (request, prompt) pairs sampling this step with their tokens.
steps = st.lists(
    st.tuples(
        st.sets(st.integers(0, 9), max_size=3),
        st.lists(st.tuples(st.integers(0, 9), st.integers(0, VOCAB_SIZE - 1)), max_size=6, unique_by=lambda p: p[0]),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps, num_rows=st.integers(1, 3), prompt_seed=st.integers(0, 1000))
def test_tables_match_the_token_lists(steps, num_rows, prompt_seed) -> None:
    history = new_history(num_rows)  # few rows: the tables grow while requests are in
    generator = torch.Generator().manual_seed(prompt_seed)
    prompts: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    params = SamplingParams(repetition_penalty=1.5, presence_penalty=0.5)
    for leaving, sampling in steps:
        left = {str(request) for request in leaving}
        history.release(left)
        for request_id in left:
            prompts.pop(request_id, None)
            outputs.pop(request_id, None)
        if not sampling:
            continue
        request_ids = [str(request) for request, _ in sampling]
        for request_id in request_ids:
            prompts.setdefault(request_id, torch.randint(0, VOCAB_SIZE, (3,), generator=generator).tolist())
        penalties = history.penalties(request_ids, [params] * len(request_ids), [prompts[r] for r in request_ids])
        # What the sampler reads this step: each request's tokens before this step's.
        for index, request_id in enumerate(request_ids):
            row = penalties.rows[index]
            expected_counts = torch.bincount(torch.tensor(outputs.get(request_id, []), dtype=torch.int64),
                                             minlength=VOCAB_SIZE)
            assert torch.equal(penalties.output_counts[row], expected_counts.float())
            assert set(penalties.prompt_mask[row].nonzero().flatten().tolist()) == set(prompts[request_id])
        tokens = [token for _, token in sampling]
        history.record(penalties, torch.tensor(tokens))
        for request_id, token in zip(request_ids, tokens, strict=True):
            outputs.setdefault(request_id, []).append(token)


def test_growth_keeps_the_rows_already_given() -> None:
    history = new_history(1)
    params = SamplingParams(frequency_penalty=1.0)
    first = history.penalties(["a"], [params], [[1]])
    history.record(first, torch.tensor([3]))
    second = history.penalties(["a", "b", "c"], [params] * 3, [[1], [2], [3]])
    assert history.rows.capacity >= 3 and second.output_counts.shape[0] > first.output_counts.shape[0]
    assert second.output_counts[second.rows].tolist() == [[0, 0, 0, 1] + [0] * 8, [0] * 12, [0] * 12]
    assert dataclasses.replace(second, rows=second.rows[:1]).apply(torch.zeros(1, VOCAB_SIZE))[0, 3] == -1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_penalties_never_make_the_host_wait() -> None:
    """Steps with penalties overlap: giving rows, sampling with the tables and counting never synchronise."""
    from lmserve.sample import Sampler, SamplingMetadata

    device = torch.device("cuda")
    history = PenaltyHistory(VOCAB_SIZE, 2, device, HostToDevice(device))
    params = [SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2, temperature=0.7), SamplingParams()]
    logits = torch.randn(2, VOCAB_SIZE, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):  # the first step gives the rows, the next ones reuse them
            penalties = history.penalties(["a", "b"], params, [[1, 2, 3], [4]])
            metadata = SamplingMetadata.build(params, [step, step], [(), ()], VOCAB_SIZE, penalties).to_device(
                history.staging)
            history.record(metadata.penalties, Sampler()(logits, metadata).sampled_token_ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert history.output_counts.sum().item() == 3
