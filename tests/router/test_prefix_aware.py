"""prefix_aware keeps requests that share a long prompt prefix on one replica, so the replicas' prefix caches
hit more often than when round robin spreads the same kind of requests over every replica."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest

from tests.router.router_process import RouterProcess, complete
from tests.server.server_process import ServerProcess

NUM_PREFIXES = 4
REQUESTS_PER_PREFIX = 6
WORDS = ["self", "value", "return", "items", "index", "result", "import", "lambda", "yield", "config", "path",
         "name", "data", "count", "None", "True", "break", "while", "class", "def"]


def long_prefixes(seed: int) -> list[str]:
    """Prompt prefixes of about 600 characters (more than the 256 the key reads), unlike each other and unlike
    those of another seed, so that each run starts with caches that know none of them."""
    generator = random.Random(seed)
    return [f"# {seed}-{index}\n" + " ".join(generator.choices(WORDS, k=110)) for index in range(NUM_PREFIXES)]


def cache_totals(replicas: list[ServerProcess]) -> tuple[float, float]:
    """Prompt tokens found in the replicas' prefix caches, and looked up, since each replica started."""
    hits = sum(replica.metric("lmserve:prefix_cache_hits_total") for replica in replicas)
    queries = sum(replica.metric("lmserve:prefix_cache_queries_total") for replica in replicas)
    return hits, queries


def run(router: RouterProcess, replicas: list[ServerProcess], seed: int) -> tuple[float, dict[str, set[str]]]:
    """Send each prefix's requests in turn (a different ending each); the hit rate of those requests, and the
    backends that served each prefix."""
    before = cache_totals(replicas)
    served_by: dict[str, set[str]] = defaultdict(set)
    with httpx.Client(timeout=60) as client:
        for turn in range(REQUESTS_PER_PREFIX):
            for prefix in long_prefixes(seed):
                response = complete(router.url, f"{prefix}\ndef step_{turn}():", 2, client)
                assert response.status_code == 200, response.text
                served_by[prefix].add(response.headers["x-lmserve-backend"])
    after = cache_totals(replicas)
    return (after[0] - before[0]) / (after[1] - before[1]), served_by


@pytest.fixture(scope="module")
def routers(replicas: list[ServerProcess]) -> Iterator[dict[str, RouterProcess]]:
    backends = ",".join(replica.url for replica in replicas)
    with (RouterProcess("--backends", backends, "--policy", "round_robin") as round_robin,
          RouterProcess("--backends", backends, "--policy", "prefix_aware") as prefix_aware):
        yield {"round_robin": round_robin, "prefix_aware": prefix_aware}


def test_prefix_aware_keeps_each_prefix_on_one_replica_and_hits_the_cache_more(
    routers: dict[str, RouterProcess], replicas: list[ServerProcess]
) -> None:
    spread_rate, spread = run(routers["round_robin"], replicas, seed=1)
    kept_rate, kept = run(routers["prefix_aware"], replicas, seed=2)
    assert all(len(backends) == 1 for backends in kept.values()), kept
    assert all(len(backends) > 1 for backends in spread.values()), spread
    assert kept_rate > spread_rate + 0.1, (kept_rate, spread_rate)
