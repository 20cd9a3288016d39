"""The sampler draws from exactly the distribution its options define.

Each case computes the target distribution from the definitions in float64, draws many samples through
the Sampler from a batch of identical rows, and checks them with a chi-square test.
"""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lmserve.sample import Sampler
from lmserve.sampling_params import SamplingParams

NUM_SAMPLES = 20_000
VOCAB_SIZE = 20
RANDOM_LOGITS = np.random.default_rng(0).normal(0.0, 2.0, VOCAB_SIZE)
# Probabilities 0.3, 0.25, 0.2, then 0.25 spread thinly: top_k=3 then top_p=0.7 keeps tokens 0 and 1,
# while top_p first would keep tokens 0, 1 and 2 (0.3 + 0.25 < 0.7 on the full distribution).
ORDER_LOGITS = np.log([0.3, 0.25, 0.2] + [0.25 / (VOCAB_SIZE - 3)] * (VOCAB_SIZE - 3))


def target_distribution(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0, min_p: float = 0.0
) -> np.ndarray:
    """The distribution the options define: temperature, then min_p, top_k, and top_p on what is left."""
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    keep = probs >= min_p * probs.max()
    if top_k != -1:
        keep &= probs >= np.sort(probs)[-top_k]
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum()
    nucleus, mass = [], 0.0
    for token in np.argsort(-probs):
        nucleus.append(token)
        mass += probs[token]
        if mass >= top_p:
            break
    probs = np.where(np.isin(np.arange(len(probs)), nucleus), probs, 0.0)
    return probs / probs.sum()


def sample_counts(logits: np.ndarray, params: SamplingParams, build_metadata) -> np.ndarray:
    torch.manual_seed(0)
    batch = torch.tensor(logits, dtype=torch.float32).repeat(NUM_SAMPLES, 1)
    metadata = build_metadata([params] * NUM_SAMPLES, vocab_size=VOCAB_SIZE)
    tokens = Sampler()(batch, metadata).sampled_token_ids
    return np.bincount(tokens.numpy(), minlength=VOCAB_SIZE)


def assert_drawn_from(counts: np.ndarray, probs: np.ndarray) -> None:
    assert counts[probs == 0].sum() == 0, "a masked-out token was sampled"
    expected = probs[probs > 0] * counts.sum()
    observed = counts[probs > 0]
    # Chi-square needs about 5 expected draws per bin; pool the rare tokens into one bin.
    rare = expected < 5
    if rare.any():
        expected = np.append(expected[~rare], expected[rare].sum())
        observed = np.append(observed[~rare], observed[rare].sum())
    assert chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.7},
        {"temperature": 1.5},
        {"top_k": 5},
        {"top_p": 0.8},
        {"min_p": 0.1},
        # With these logits top_k is what cuts in the first combination, min_p in the second.
        {"temperature": 0.8, "min_p": 0.02, "top_k": 10, "top_p": 0.9},
        {"temperature": 0.8, "min_p": 0.15, "top_k": 10, "top_p": 0.85},
    ],
    ids=["temperature", "hot-temperature", "top_k", "top_p", "min_p", "combined-top-k", "combined-min-p"],
)
def test_samples_follow_target_distribution(options: dict, build_metadata) -> None:
    probs = target_distribution(RANDOM_LOGITS, **options)
    counts = sample_counts(RANDOM_LOGITS, SamplingParams(**options), build_metadata)
    assert_drawn_from(counts, probs)


def test_top_p_applies_to_distribution_after_top_k(build_metadata) -> None:
    probs = target_distribution(ORDER_LOGITS, top_k=3, top_p=0.7)
    assert np.flatnonzero(probs).tolist() == [0, 1]
    counts = sample_counts(ORDER_LOGITS, SamplingParams(top_k=3, top_p=0.7), build_metadata)
    assert_drawn_from(counts, probs)


def test_a_seeded_request_draws_from_the_distribution_token_after_token(build_metadata) -> None:
    """One seed's successive draws (counters 0, 1, 2, ...) follow the distribution, as unseeded rows do."""
    params = SamplingParams(temperature=0.7, seed=1234)
    metadata = build_metadata([params] * NUM_SAMPLES, vocab_size=VOCAB_SIZE)
    metadata = dataclasses.replace(metadata, counters=torch.arange(NUM_SAMPLES))
    batch = torch.tensor(RANDOM_LOGITS, dtype=torch.float32).repeat(NUM_SAMPLES, 1)
    tokens = Sampler()(batch, metadata).sampled_token_ids
    counts = np.bincount(tokens.numpy(), minlength=VOCAB_SIZE)
    assert_drawn_from(counts, target_distribution(RANDOM_LOGITS, temperature=0.7))


def test_rows_that_cut_nothing_keep_every_token_beside_rows_that_cut(build_metadata) -> None:
    """A row's top-k looks at the batch's largest top_k candidates; a row without top-k or top-p keeps the rest."""
    params = [SamplingParams(top_k=3), SamplingParams(temperature=1.5), SamplingParams(top_k=6, top_p=0.8)]
    rows = params * (NUM_SAMPLES // 3)
    torch.manual_seed(0)
    batch = torch.tensor(RANDOM_LOGITS, dtype=torch.float32).repeat(len(rows), 1)
    tokens = Sampler()(batch, build_metadata(rows, vocab_size=VOCAB_SIZE)).sampled_token_ids.numpy()
    for index, options in enumerate([{"top_k": 3}, {"temperature": 1.5}, {"top_k": 6, "top_p": 0.8}]):
        counts = np.bincount(tokens[index :: len(params)], minlength=VOCAB_SIZE)
        assert_drawn_from(counts, target_distribution(RANDOM_LOGITS, **options))


def test_a_small_top_p_over_a_flat_distribution_rejects_its_way_to_the_nucleus(build_metadata) -> None:
    """Most first draws fall outside a 2-token nucleus of 20 near-equal tokens: later rounds must still draw
    each nucleus token in proportion to its probability."""
    logits = np.linspace(0.3, 0.0, VOCAB_SIZE)
    probs = target_distribution(logits, top_p=0.1)
    assert np.count_nonzero(probs) == 2
    assert_drawn_from(sample_counts(logits, SamplingParams(top_p=0.1), build_metadata), probs)
