"""Replicas of the embedded default model for the router tests: three serving its own name, shared by the tests
that leave them running as they found them (the failover test kills replicas, so it starts its own); and a pair
serving it as "small" and "large" for model routing and the cascade, started for each module that uses it, so
no idle pair slows the other modules on a small machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.router_process import start_replicas, start_servers, stop_all
from tests.server.server_process import ServerProcess


@pytest.fixture(scope="session")
def replicas() -> Iterator[list[ServerProcess]]:
    started = start_replicas(3)
    yield started
    stop_all(started)


@pytest.fixture(scope="module")
def small_and_large() -> Iterator[dict[str, ServerProcess]]:
    """A replica named "small" and one named "large", by their names."""
    names = ("small", "large")
    started = start_servers([("--served-model-name", name) for name in names])
    yield dict(zip(names, started, strict=True))
    stop_all(started)
