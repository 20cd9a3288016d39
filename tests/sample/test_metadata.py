"""SamplingMetadata turns a batch's SamplingParams into tensors, and flags the work nobody needs."""

import math

import pytest
import torch

from lmserve.errors import InvalidRequestError
from lmserve.sampling_params import SamplingParams


def test_default_params_skip_all_optional_work(build_metadata) -> None:
    metadata = build_metadata([SamplingParams(), SamplingParams(seed=3)], vocab_size=8)
    assert metadata.all_random and not metadata.all_greedy
    assert metadata.temperature is None and metadata.top_k is None and metadata.top_p is None
    assert metadata.min_p is None and metadata.logit_bias is None and metadata.min_tokens_mask is None
    assert metadata.penalties is None and metadata.max_num_logprobs is None


def test_greedy_rows_turn_truncation_off(build_metadata) -> None:
    params = [SamplingParams(temperature=0.0, top_k=2, top_p=0.5, min_p=0.1, seed=1), SamplingParams(top_k=20)]
    metadata = build_metadata(params, vocab_size=8)
    assert metadata.all_greedy is False and metadata.all_random is False
    assert metadata.temperature is None and metadata.top_p is None and metadata.min_p is None
    assert metadata.top_k is None  # top_k above the vocabulary keeps everything


def test_an_all_greedy_batch_draws_no_noise(build_metadata) -> None:
    metadata = build_metadata([SamplingParams(temperature=0.0, seed=1)] * 2, vocab_size=8)
    assert metadata.keys is None and metadata.counters is None


def test_noise_keys_are_the_seeds_and_fresh_for_unseeded_rows(build_metadata) -> None:
    params = [SamplingParams(seed=-5), SamplingParams(), SamplingParams(seed=2**63 - 1), SamplingParams()]
    outputs = [[1, 2], [], [3], [4, 4, 4]]
    first, second = (build_metadata(params, vocab_size=8, outputs=outputs) for _ in range(2))
    assert first.keys[[0, 2]].tolist() == second.keys[[0, 2]].tolist() == [-5, 2**63 - 1]
    assert first.keys[1] != second.keys[1] and first.keys[3] != second.keys[3] and first.keys[1] != first.keys[3]
    # A row's counter is the number of tokens it sampled before this one.
    assert first.counters.tolist() == [2, 0, 1, 3]


def test_top_k_looks_at_the_largest_top_k_that_cuts(build_metadata) -> None:
    def candidates(*params: SamplingParams) -> int | None:
        return build_metadata(list(params), vocab_size=100).num_candidates

    assert candidates(SamplingParams(), SamplingParams(top_k=20, temperature=0.0)) is None  # greedy rows cut nothing
    assert candidates(SamplingParams(top_k=20), SamplingParams(top_k=5, top_p=0.9), SamplingParams()) == 20
    assert candidates(SamplingParams(top_k=20), SamplingParams(top_p=0.9)) == 20  # top_p needs no candidates
    assert candidates(SamplingParams(top_k=500)) is None  # a top_k past the vocabulary cuts nothing


def test_columns_and_largest_logprobs(build_metadata) -> None:
    params = [SamplingParams(temperature=0.5, top_k=3, logprobs=2), SamplingParams(top_p=0.9, logprobs=5)]
    metadata = build_metadata(params, vocab_size=8)
    assert metadata.temperature.tolist() == [0.5, 1.0]
    assert metadata.top_k.tolist() == [3, 8]
    assert metadata.top_p.tolist() == pytest.approx([1.0, 0.9])
    assert metadata.max_num_logprobs == 5


def test_min_tokens_masks_stop_tokens_until_reached(build_metadata) -> None:
    params = [
        SamplingParams(min_tokens=2, stop_token_ids=[2]),
        SamplingParams(min_tokens=2, stop_token_ids=[2], ignore_eos=True),
        SamplingParams(min_tokens=2, stop_token_ids=[2]),
    ]
    metadata = build_metadata(params, vocab_size=6, outputs=[[0], [0], [0, 0]], eos=[(4, 5)] * 3)
    masked = metadata.min_tokens_mask.apply(torch.zeros(3, 6))
    inf = math.inf
    assert masked.tolist() == [
        [0.0, 0.0, -inf, 0.0, -inf, -inf],
        [0.0, 0.0, -inf, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]


def test_logit_bias_outside_vocabulary_is_rejected(build_metadata) -> None:
    with pytest.raises(InvalidRequestError, match="logit_bias token id 9"):
        build_metadata([SamplingParams(logit_bias={9: 1.0})], vocab_size=8)
