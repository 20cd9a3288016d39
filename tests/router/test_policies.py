"""The load-balancing policies as pure functions of the replicas' load: no network, no clock."""

from __future__ import annotations

from collections import Counter

from lmserve.router.backend import Backend
from lmserve.router.config import ReplicaGroupConfig
from lmserve.router.policies import LeastOutstanding, PrefixAware, RoundRobin, make_policy, rendezvous_score


def replicas(*outstanding: int, capacity: int = 8) -> list[Backend]:
    return [Backend(f"http://10.0.0.{index}:8000", "m", capacity, outstanding=load)
            for index, load in enumerate(outstanding)]


def take(policy, backends: list[Backend], key: str | None = None) -> Backend | None:
    """Choose as the queue does: the chosen replica gets one more request in flight."""
    chosen = policy.choose(backends, key)
    if chosen is not None:
        chosen.outstanding += 1
    return chosen


def test_round_robin_gives_each_replica_its_turn_and_skips_full_ones() -> None:
    backends = replicas(0, 0, 0)
    policy = RoundRobin()
    assert [policy.choose(backends, None).url[-6] for _ in range(6)] == list("012012")
    backends[1].outstanding = backends[1].capacity
    assert [policy.choose(backends, None).url[-6] for _ in range(4)] == list("0202")


def test_round_robin_waits_when_every_replica_is_full() -> None:
    assert RoundRobin().choose(replicas(2, 2, capacity=2), None) is None


def test_least_outstanding_picks_the_least_loaded_and_rotates_ties() -> None:
    policy = LeastOutstanding()
    assert policy.choose(replicas(3, 1, 2), None).url.endswith(".1:8000")
    idle = replicas(0, 0, 0)
    assert [policy.choose(idle, None).url[-6] for _ in range(3)] in (list("012"), list("120"), list("201"))


def test_least_outstanding_keeps_replicas_balanced_while_requests_pile_up() -> None:
    backends = replicas(0, 0, 0, capacity=100)
    policy = LeastOutstanding()
    for _ in range(30):
        take(policy, backends)
    assert [backend.outstanding for backend in backends] == [10, 10, 10]


def test_least_outstanding_skips_full_replicas() -> None:
    assert LeastOutstanding().choose(replicas(4, 1, capacity=1), None) is None
    assert LeastOutstanding().choose(replicas(1, 4, capacity=2), None).url.endswith(".0:8000")


def test_prefix_aware_sends_a_key_to_the_same_replica_and_spreads_keys() -> None:
    backends = replicas(0, 0, 0, 0)
    policy = PrefixAware(max_load_imbalance=2.0, load_imbalance_slack=100)
    homes = {key: {policy.choose(backends, key).url for _ in range(5)} for key in (f"prompt {i}" for i in range(40))}
    assert all(len(urls) == 1 for urls in homes.values())
    assert len(set.union(*homes.values())) == 4  # 40 keys use every replica


def test_prefix_aware_home_is_the_rendezvous_winner_and_survives_other_replicas_leaving() -> None:
    backends = replicas(0, 0, 0, 0)
    policy = PrefixAware()
    for key in (f"system prompt {i}" for i in range(20)):
        home = policy.choose(backends, key)
        assert home.url == max(backends, key=lambda backend: rendezvous_score(key, backend.url)).url
        others = [backend for backend in backends if backend is not home]
        assert policy.choose([home, *others[1:]], key) is home  # a replica leaving moves only its own keys


def test_prefix_aware_leaves_the_home_replica_past_the_load_bound() -> None:
    backends = replicas(0, 0, 0, capacity=100)
    policy = PrefixAware(max_load_imbalance=2.0, load_imbalance_slack=2)
    chosen = Counter(take(policy, backends, "one shared system prompt").url for _ in range(30))
    home = chosen.most_common(1)[0][0]
    loads = sorted(backend.outstanding for backend in backends)
    assert chosen[home] < 30  # the others took part of the load...
    assert loads[-1] <= 2 * loads[0] + 2 + 1  # ...so that it stayed within the bound (+1: the request that crossed it)


def test_prefix_aware_waits_for_a_full_home_replica_within_the_bound() -> None:
    backends = replicas(0, 0, capacity=4)
    key = "k"
    home = PrefixAware().choose(backends, key)
    home.outstanding = 4
    for backend in backends:
        if backend is not home:
            backend.outstanding = 3
    assert PrefixAware(max_load_imbalance=2.0, load_imbalance_slack=0).choose(backends, key) is None


def test_prefix_aware_without_a_key_is_least_outstanding() -> None:
    assert PrefixAware().choose(replicas(5, 0, 5), None).url.endswith(".1:8000")


def test_make_policy_follows_the_config() -> None:
    def policy(name: str) -> type:
        return type(make_policy(ReplicaGroupConfig(backends=["http://a:1"], policy=name)))

    assert policy("round_robin") is RoundRobin
    assert policy("least_outstanding") is LeastOutstanding
    assert policy("prefix_aware") is PrefixAware
