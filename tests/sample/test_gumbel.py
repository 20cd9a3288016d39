"""The race's counter-based noise: Philox4x32-10 bits, standard Gumbel values, one stream per key and counter."""

import math

import torch
from scipy.stats import kstest

from lmserve.sample.gumbel import gumbel_noise, gumbel_race, philox_bits, top_p_race


def test_philox_matches_the_published_known_answer() -> None:
    # Random123's known answer for Philox4x32-10 with a zero counter and key, its four words for tokens 0-3.
    bits = philox_bits(torch.tensor([0]), torch.tensor([0]), vocab_size=6)
    assert bits[0, :4].tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert bits.shape == (1, 6) and bits[0, 4] not in bits[0, :4]  # tokens 4 and 5 take the next call


def test_philox_words_stay_32_bit_for_extreme_keys_and_counters() -> None:
    keys = torch.tensor([-(2**63), -1, 2**63 - 1])
    counters = torch.tensor([0, 2**40 + 3, 2**63 - 1])
    bits = philox_bits(keys, counters, vocab_size=1000)
    assert bits.min() >= 0 and bits.max() < 2**32
    assert len(set(bits.flatten().tolist())) > 2990  # no stuck words


def test_noise_is_standard_gumbel() -> None:
    noise = gumbel_noise(torch.tensor([11, -7, 2**62]), torch.tensor([0, 5, 1]), vocab_size=40_000).flatten()
    assert torch.isfinite(noise).all()
    assert kstest(noise.double().numpy(), "gumbel_r").pvalue > 1e-3
    assert abs(noise.mean().item() - 0.5772) < 0.01  # the Euler-Mascheroni constant
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.03


def test_one_stream_per_key_and_counter() -> None:
    keys, counters = torch.tensor([3, 3, 4, 3]), torch.tensor([0, 1, 0, 0])
    noise = gumbel_noise(keys, counters, vocab_size=4096)
    assert torch.equal(noise[0], noise[3])  # same key and counter, same draw wherever the row sits
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    # Draws of different streams are uncorrelated.
    assert abs(torch.corrcoef(noise[:3])[0, 1:]).max() < 0.1


def test_race_divides_by_the_temperature_before_adding_the_noise() -> None:
    keys, counters = torch.tensor([1, 2]), torch.tensor([0, 9])
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 4
    temperature = torch.tensor([0.5, 2.0])
    expected = (logits / temperature[:, None] + gumbel_noise(keys, counters, 50)).argmax(dim=-1)
    assert torch.equal(gumbel_race(logits, temperature, keys, counters), expected)
    untempered = (logits + gumbel_noise(keys, counters, 50)).argmax(dim=-1)
    assert torch.equal(gumbel_race(logits, None, keys, counters), untempered)
    # A temperature near zero leaves the argmax; -inf logits are never drawn.
    assert torch.equal(gumbel_race(logits, torch.full((2,), 1e-6), keys, counters), logits.argmax(dim=-1))
    masked = logits.clone()
    masked[:, :45] = -torch.inf
    assert (gumbel_race(masked, None, keys, counters) >= 45).all()


def test_top_p_race_keeps_the_plain_race_where_top_p_is_one_and_the_top_token_where_the_nucleus_is_one() -> None:
    scores = torch.randn(3, 300, generator=torch.Generator().manual_seed(1))
    scores[2, 7] = 30.0  # row 2's top token holds nearly all the probability
    keys, counters = torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2])
    tokens = top_p_race(scores, torch.tensor([1.0, 1.0, 0.5]), keys, counters)
    assert tokens[:2].tolist() == gumbel_race(scores[:2], None, keys[:2], counters[:2]).tolist()
    assert tokens[2] == 7
    # Later rounds draw other noise streams.
    assert not torch.equal(gumbel_noise(keys, counters, 300, stream=1), gumbel_noise(keys, counters, 300))


def test_a_top_p_that_rounds_to_zero_still_draws_among_the_top_tokens() -> None:
    scores = torch.zeros(1, 50)
    scores[0, [7, 9]] = 5.0  # two tied top tokens: the nucleus of any top_p
    top_p = torch.tensor([1e-50], dtype=torch.float32)  # 0.0 in float32
    drawn = {top_p_race(scores, top_p, torch.tensor([3]), torch.tensor([step])).item() for step in range(40)}
    assert drawn == {7, 9}


def edge_of_the_nucleus(scores: torch.Tensor, key: int, counter: int, ulps: int) -> list[float]:
    """top_p values within `ulps` float32 steps of the probability above the row's first draw: where the
    keep-or-reject decision flips, so a sum that rounds differently flips it."""
    drawn = gumbel_race(scores[None], None, torch.tensor([key]), torch.tensor([counter]))[0]
    weights = torch.exp(scores.double() - scores.max())
    edge = ((weights * (scores > scores[drawn])).sum() / weights.sum()).float()
    assert edge > 0, "the first draw is the top token: no edge to test"
    values = [edge]
    for direction in (1.0, 0.0):
        value = edge
        for _ in range(ulps):
            value = torch.nextafter(value, torch.tensor(direction))
            values.append(value)
    return [value.item() for value in values]


def test_a_seeded_draw_at_the_edge_of_the_nucleus_does_not_depend_on_the_batch() -> None:
    # A lone row's sums are split over threads, a batch's rows are not: the float32 sums rounded differently.
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(8, 152_064, generator=generator) * 3
    keys, counters = torch.arange(8), torch.zeros(8, dtype=torch.int64)
    for top_p in edge_of_the_nucleus(scores[3], 3, 0, ulps=3):
        batch_top_p = torch.full((8,), 0.9)
        batch_top_p[3] = top_p
        alone = top_p_race(scores[3:4], torch.tensor([top_p]), keys[3:4], counters[3:4])
        assert alone[0] == top_p_race(scores, batch_top_p, keys, counters)[3], top_p
