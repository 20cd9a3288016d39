"""When each request is sent: a Poisson process, burstier or more regular arrivals, or all at once."""

from __future__ import annotations

import math

import numpy as np


def arrival_times(num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds from the run's start at which each request is sent, in order.

    The gaps between requests are gamma distributed with shape `burstiness` and mean 1 / `request_rate`:
    shape 1 is a Poisson process, below 1 requests come in bursts, above 1 more evenly. An infinite rate
    sends every request at once. The first request waits its gap too, as in a process already running.
    """
    if math.isinf(request_rate):
        return [0.0] * num_requests
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (request_rate * burstiness), num_requests)
    return np.cumsum(gaps).tolist()
