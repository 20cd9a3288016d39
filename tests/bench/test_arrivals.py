"""Arrival times: Poisson at burstiness 1, gamma gaps otherwise, everything at once at an infinite rate."""

import math

import numpy as np
from scipy import stats

from lmserve.bench.arrivals import arrival_times

NUM = 20_000


def gaps(times: list[float]) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))


def test_poisson_gaps_are_exponential_with_mean_one_over_rate():
    rate = 8.0
    times = arrival_times(NUM, rate, burstiness=1.0, seed=0)
    observed = gaps(times)
    assert len(times) == NUM and np.all(observed >= 0)
    # The mean of NUM exponential gaps has a standard error of mean / sqrt(NUM): allow four of them.
    assert abs(observed.mean() - 1 / rate) < 4 * (1 / rate) / math.sqrt(NUM)
    assert stats.kstest(observed, stats.expon(scale=1 / rate).cdf).pvalue > 0.01


def test_burstiness_keeps_the_rate_and_changes_the_spread():
    rate = 5.0
    for shape in (0.25, 4.0):
        observed = gaps(arrival_times(NUM, rate, burstiness=shape, seed=1))
        assert abs(observed.mean() - 1 / rate) < 0.05 / rate
        # A gamma's coefficient of variation is 1 / sqrt(shape): 2 when bursty, 0.5 when steady.
        assert abs(observed.std() / observed.mean() - 1 / math.sqrt(shape)) < 0.1
        assert stats.kstest(observed, stats.gamma(shape, scale=1 / (rate * shape)).cdf).pvalue > 0.01


def test_an_infinite_rate_sends_everything_at_once():
    assert arrival_times(5, math.inf, burstiness=0.5) == [0.0] * 5


def test_the_seed_fixes_the_schedule():
    assert arrival_times(10, 2.0, seed=3) == arrival_times(10, 2.0, seed=3)
    assert arrival_times(10, 2.0, seed=3) != arrival_times(10, 2.0, seed=4)
