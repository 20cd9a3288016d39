"""The router's queue bound: a burst beyond it gets 429 with Retry-After at once, every admitted request
completes; a request that waits past the maximum wait gets 429 too.

The replica's engine is paused (SIGSTOP) during the burst, so no request finishes early and the numbers are
exact on a machine of any speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.router.router_process import RouterProcess, complete, wait_for
from tests.server.helpers import assert_openai_error
from tests.server.server_process import ServerProcess

SLOTS = 1  # max_outstanding_per_backend, on one replica
QUEUE = 3
BURST = 10


@pytest.fixture(scope="module")
def replica(replicas: list[ServerProcess]) -> ServerProcess:
    return replicas[0]


@pytest.fixture(scope="module")
def bounded(replica: ServerProcess) -> Iterator[RouterProcess]:
    with RouterProcess("--backends", replica.url, "--max-outstanding-per-backend", str(SLOTS),
                       "--max-queue-size", str(QUEUE), "--max-queue-wait", "60") as router:
        yield router


@pytest.fixture(scope="module")
def impatient(replica: ServerProcess) -> Iterator[RouterProcess]:
    with RouterProcess("--backends", replica.url, "--max-outstanding-per-backend", "1",
                       "--max-queue-wait", "0.3") as router:
        yield router


def assert_too_many(response: httpx.Response, *words: str) -> None:
    assert_openai_error(response, 429, *words, error_type="rate_limit_error")
    assert int(response.headers["retry-after"]) >= 1


def test_a_burst_beyond_the_queue_gets_429_and_every_admitted_request_completes(
    bounded: RouterProcess, replica: ServerProcess
) -> None:
    with ThreadPoolExecutor(BURST) as pool:
        with replica.engine_paused():
            futures = [pool.submit(complete, bounded.url, f"def burst_{index}():", 8) for index in range(BURST)]
            refused = BURST - SLOTS - QUEUE
            wait_for(lambda: sum(future.done() for future in futures) >= refused, 30, f"{refused} refusals")
            for future in (future for future in futures if future.done()):
                assert_too_many(future.result(), "queue is full")
            assert bounded.metric("lmserve_router:queue_depth") == QUEUE
            assert bounded.metric("lmserve_router:backend_outstanding_requests", backend=replica.url) == SLOTS
        responses = [future.result() for future in futures]
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (SLOTS + QUEUE) + [429] * refused
    assert bounded.metric("lmserve_router:requests_total", status="429") == refused
    assert bounded.metric("lmserve_router:queue_depth") == 0


def test_a_request_waiting_past_the_maximum_wait_gets_429(impatient: RouterProcess, replica: ServerProcess) -> None:
    with ThreadPoolExecutor(1) as pool, replica.engine_paused():
        holder = pool.submit(complete, impatient.url, "def hold():", 8)
        wait_for(lambda: impatient.metric("lmserve_router:backend_outstanding_requests") == 1, 10, "the first request")
        assert_too_many(complete(impatient.url, "def wait():", 8), "busy", "0.3s")
    assert holder.result().status_code == 200


def test_clients_that_leave_give_back_their_slot_and_place(bounded: RouterProcess, replica: ServerProcess) -> None:
    def outstanding() -> float:
        return bounded.metric("lmserve_router:backend_outstanding_requests", backend=replica.url)

    with replica.engine_paused(), ThreadPoolExecutor(2) as pool:
        # One request holds the slot, the other waits in the queue; both clients give up.
        leaving = [pool.submit(httpx.post, f"{bounded.url}/v1/completions", timeout=0.5,
                               json={"model": "default_model", "prompt": f"def leave_{index}():", "max_tokens": 8})
                   for index in range(2)]
        for future in leaving:
            with pytest.raises(httpx.TimeoutException):
                future.result()
        wait_for(lambda: outstanding() == 0 and bounded.metric("lmserve_router:queue_depth") == 0, 10, "the release")

    # A stream the client leaves after its first event, while the engine is paused so that it cannot end first.
    body = {"model": "default_model", "prompt": "def forever():", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{bounded.url}/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()  # kept: an iterator dropped half-way closes the response
        next(line for line in lines if line.startswith("data: "))
        with replica.engine_paused():
            assert outstanding() == 1
            response.close()
            wait_for(lambda: outstanding() == 0, 10, "the release of a stream the client left")
    assert complete(bounded.url, "x = 1").status_code == 200
