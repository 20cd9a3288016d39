"""A replica killed under load: every request that had not started answering is retried elsewhere, so no
client sees an error; the router ejects the dead replica and re-admits it once it is back on its port.
The replicas here are the module's own, since the story kills one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.router.router_process import RouterProcess, complete, restart_replica, start_replicas, stop_all, wait_for
from tests.server.server_process import ServerProcess

NUM_REQUESTS = 150
KILL_AFTER = 40  # requests answered before the kill
# Checks every 0.2 s, two failures eject and two passes re-admit: the story takes about a second.
ROUTER_ARGS = ("--health-interval", "0.2", "--health-timeout", "1", "--unhealthy-threshold", "2",
               "--healthy-threshold", "2", "--max-retries", "2")


@pytest.fixture(scope="module")
def own_replicas() -> Iterator[list[ServerProcess]]:
    started = start_replicas(3)
    yield started
    stop_all(started)


@pytest.fixture(scope="module")
def router(own_replicas: list[ServerProcess]) -> Iterator[RouterProcess]:
    with RouterProcess("--backends", ",".join(replica.url for replica in own_replicas), *ROUTER_ARGS) as process:
        yield process


def healthy(router: RouterProcess, url: str) -> float:
    return router.metric("lmserve_router:backend_healthy", backend=url)


def test_a_replica_killed_under_load_costs_no_request_and_comes_back(
    router: RouterProcess, own_replicas: list[ServerProcess]
) -> None:
    victim = own_replicas[1]
    answered = 0

    def send(index: int) -> httpx.Response:
        nonlocal answered
        response = complete(router.url, f"def task_{index}(x):", 16, client, ignore_eos=True)
        answered += 1
        return response

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, index) for index in range(NUM_REQUESTS)]
        wait_for(lambda: answered >= KILL_AFTER, 60, f"{KILL_AFTER} answers")
        os.kill(victim.process.pid, signal.SIGKILL)
        responses = [future.result() for future in futures]

    failures = [(response.status_code, response.text) for response in responses if response.status_code != 200]
    assert not failures, failures
    served_by = {response.headers["x-lmserve-backend"] for response in responses}
    assert victim.url in served_by and len(served_by) == 3  # it served some before it died
    assert router.metric("lmserve_router:backend_retries_total", backend=victim.url) >= 1

    wait_for(lambda: healthy(router, victim.url) == 0, 10, "the victim's ejection")
    assert router.metric("lmserve_router:backend_ejections_total", backend=victim.url) >= 1
    assert httpx.get(f"{router.url}/health").json()["models"]["*"][victim.url] == "ejected"
    assert complete(router.url, "import os").status_code == 200  # the others serve meanwhile

    victim.process.wait(10)
    victim.stop()
    own_replicas[1] = restart_replica(victim.port)
    started = time.monotonic()
    wait_for(lambda: healthy(router, victim.url) == 1, 10, "the victim's re-admission")
    assert time.monotonic() - started < 5
    before = router.metric("lmserve_router:backend_requests_total", backend=victim.url)
    with httpx.Client(timeout=60) as client:
        assert all(complete(router.url, f"y = {index}", 2, client).status_code == 200 for index in range(12))
    assert router.metric("lmserve_router:backend_requests_total", backend=victim.url) > before
