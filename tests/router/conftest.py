"""Three replicas of the embedded default model, shared by the router tests that leave them running as they
found them (the failover test kills replicas, so it starts its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.router_process import start_replicas, stop_all
from tests.server.server_process import ServerProcess


@pytest.fixture(scope="session")
def replicas() -> Iterator[list[ServerProcess]]:
    started = start_replicas(3)
    yield started
    stop_all(started)
