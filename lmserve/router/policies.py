"""Load-balancing policies: which replica of a model takes the next request.

A policy sees the healthy replicas it may use and returns one with a free slot, or None: the request
waits in the router's queue until a slot frees. Policies keep no I/O and no clock, so tests call them
directly.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from lmserve.router.backend import Backend
from lmserve.router.config import ReplicaGroupConfig


class Policy(Protocol):
    def choose(self, backends: list[Backend], key: str | None) -> Backend | None:
        """A replica among `backends` (healthy, never empty) with a free slot, or None to wait.

        `key` is the request's prefix key (see request.py); only prefix_aware reads it.
        """


class RoundRobin:
    """Each replica in turn, skipping full ones: equal shares when replicas are equally fast."""

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, backends: list[Backend], key: str | None) -> Backend | None:
        for offset in range(len(backends)):
            index = (self._turn + offset) % len(backends)
            if backends[index].has_free_slot:
                self._turn = index + 1
                return backends[index]
        return None


class LeastOutstanding:
    """The replica with the fewest requests in flight: a slow or busy replica gets fewer. Ties go round
    robin, so that an idle router still spreads sequential requests."""

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, backends: list[Backend], key: str | None) -> Backend | None:
        best = None
        for offset in range(len(backends)):
            backend = backends[(self._turn + offset) % len(backends)]
            if backend.has_free_slot and (best is None or backend.outstanding < best.outstanding):
                best = backend
        if best is not None:
            self._turn = backends.index(best) + 1
        return best


class PrefixAware:
    """Requests whose prompts start alike go to the same replica, where their shared prefix is in the
    prefix cache already.

    The replica for a key is the rendezvous-hashing winner (highest hash of key and URL): every router
    agrees on it without talking to the others, and a replica leaving or joining moves only its own keys.
    It keeps the key while its load stays within `max_load_imbalance` times the least-loaded replica's,
    plus `load_imbalance_slack`; past that, the request goes to the least-loaded replica instead.
    """

    def __init__(self, max_load_imbalance: float = 2.0, load_imbalance_slack: int = 2) -> None:
        self.max_load_imbalance = max_load_imbalance
        self.load_imbalance_slack = load_imbalance_slack
        self._fallback = LeastOutstanding()

    def choose(self, backends: list[Backend], key: str | None) -> Backend | None:
        if key is None:
            return self._fallback.choose(backends, key)
        preferred = max(backends, key=lambda backend: rendezvous_score(key, backend.url))
        least = min(backend.outstanding for backend in backends)
        if preferred.outstanding <= self.max_load_imbalance * least + self.load_imbalance_slack:
            return preferred if preferred.has_free_slot else None  # worth waiting for its cache
        return self._fallback.choose(backends, key)


def rendezvous_score(key: str, url: str) -> int:
    """A stable hash (unlike Python's hash(), the same in every process) of a key on a replica."""
    digest = hashlib.blake2b(f"{url}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def make_policy(config: ReplicaGroupConfig) -> Policy:
    if config.policy == "round_robin":
        return RoundRobin()
    if config.policy == "prefix_aware":
        return PrefixAware(config.max_load_imbalance, config.load_imbalance_slack)
    return LeastOutstanding()
