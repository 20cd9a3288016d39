"""Logprobs tensors gather the right tokens and ranks, and convert to the public per-position dicts."""

import torch

from lmserve.outputs import Logprob
from lmserve.sample import compute_logprobs, to_position_logprobs

LOGPROBS = torch.log_softmax(torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 2.5]]), dim=-1)


def test_compute_logprobs_gathers_target_and_top_tokens() -> None:
    tensors = compute_logprobs(LOGPROBS, target_ids=torch.tensor([2, 1]), num_top=2)
    assert tensors.token_ids.tolist() == [[2, 1, 2], [1, 2, 3]]
    assert torch.equal(tensors.logprobs, LOGPROBS.gather(1, tensors.token_ids))
    assert tensors.ranks.tolist() == [2, 4]


def test_compute_logprobs_without_top_tokens() -> None:
    tensors = compute_logprobs(LOGPROBS, target_ids=torch.tensor([1, 2]), num_top=0)
    assert tensors.token_ids.tolist() == [[1], [2]]
    assert tensors.ranks.tolist() == [1, 1]


def test_position_logprobs_hold_chosen_token_and_each_rows_top_n() -> None:
    tensors = compute_logprobs(LOGPROBS, target_ids=torch.tensor([0, 1]), num_top=2)
    first, second = to_position_logprobs(tensors, num_top_per_row=[2, 0])
    values = LOGPROBS.tolist()
    assert first == {
        0: Logprob(values[0][0], 3),
        1: Logprob(values[0][1], 1),
        2: Logprob(values[0][2], 2),
    }
    assert list(first)[0] == 0  # the chosen token comes first
    assert second == {1: Logprob(values[1][1], 4)}


def test_chosen_top_token_appears_once() -> None:
    tensors = compute_logprobs(LOGPROBS, target_ids=torch.tensor([1, 2]), num_top=1)
    positions = to_position_logprobs(tensors, num_top_per_row=[1, 1])
    assert [list(position.items()) for position in positions] == [
        [(1, Logprob(LOGPROBS[0, 1].item(), 1))],
        [(2, Logprob(LOGPROBS[1, 2].item(), 1))],
    ]
