"""SamplingParams takes the integer types callers hold (numpy's too) and stores plain ints."""

from __future__ import annotations

import numpy as np

from lmserve.sampling_params import SamplingParams


def test_numpy_integers_become_python_ints() -> None:
    params = SamplingParams(n=np.int64(2), top_k=np.int32(5), seed=np.uint8(7), max_tokens=np.int64(9),
                            min_tokens=np.int16(1), logprobs=np.int64(3), prompt_logprobs=np.int8(0))
    values = (params.n, params.top_k, params.seed, params.max_tokens, params.min_tokens, params.logprobs,
              params.prompt_logprobs)
    assert values == (2, 5, 7, 9, 1, 3, 0)
    assert all(type(value) is int for value in values)


def test_unset_optional_counts_stay_unset() -> None:
    params = SamplingParams(seed=None, max_tokens=None, logprobs=None, prompt_logprobs=None)
    assert (params.seed, params.max_tokens, params.logprobs, params.prompt_logprobs) == (None, None, None, None)


def test_a_top_k_of_zero_is_off_as_in_vllm() -> None:
    assert SamplingParams(top_k=0).top_k == -1
