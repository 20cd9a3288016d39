"""Admission control on a server with room for 4 requests (1 running + 3 waiting): refusals past capacity,
priorities, per-request timeouts, and clients that leave; none of it may strand a KV cache block.

Some stories pause the engine core process (SIGSTOP) so that requests stay in flight for as long as the
story needs, whatever the speed of the machine; the HTTP server keeps answering meanwhile.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import assert_openai_error
from tests.server.server_process import TINY_MODEL_ARGS, ServerProcess

MAX_NUM_SEQS, MAX_WAITING = 1, 3
CAPACITY = MAX_NUM_SEQS + MAX_WAITING
LONG = 480  # tokens: near the tiny model's 512 positions, so that a request runs for a while
SERVER_ARGS = (*TINY_MODEL_ARGS, "--max-num-seqs", str(MAX_NUM_SEQS), "--max-waiting-requests", str(MAX_WAITING))


@pytest.fixture(scope="module")
def small_server(text_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(text_model_dir, *SERVER_ARGS) as process:
        yield process


def completion(prompt: str, max_tokens: int, **fields) -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **fields}


def post(server: ServerProcess, body: dict, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=timeout)


def assert_engine_empties(server: ServerProcess, timeout: float = 5.0) -> None:
    """Within `timeout`, nothing runs or waits and every KV cache block is free again."""
    names = ("lmserve:num_requests_running", "lmserve:num_requests_waiting", "lmserve:kv_cache_usage_perc")
    deadline = time.monotonic() + timeout
    while any(server.metric(name) for name in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {name: server.metric(name) for name in names} == dict.fromkeys(names, 0.0)


def test_requests_past_capacity_get_429_with_retry_after_and_the_rest_complete(small_server: ServerProcess) -> None:
    burst = 12
    with ThreadPoolExecutor(burst) as pool:
        with small_server.engine_paused():  # nothing finishes, so exactly CAPACITY requests are in flight
            futures = [pool.submit(post, small_server, completion(f"burst {i}", 30)) for i in range(burst)]
            deadline = time.monotonic() + 20
            while sum(future.done() for future in futures) < burst - CAPACITY and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # time enough for a wrongly admitted extra one to be refused, too
            refused = [future.result() for future in futures if future.done()]
            admitted = [future for future in futures if not future.done()]
        accepted = [future.result() for future in admitted]

    assert len(refused) == burst - CAPACITY
    for response in refused:
        assert_openai_error(response, 429, str(CAPACITY), "retry", error_type="rate_limit_error", match_case=True)
        assert response.headers["retry-after"] == "1"
    assert len(accepted) == CAPACITY
    for response in accepted:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 30
        assert response.json()["choices"][0]["finish_reason"] == "length"
    assert_engine_empties(small_server)


def test_a_refused_burst_leaves_the_full_capacity_for_the_next_one(small_server: ServerProcess) -> None:
    with ThreadPoolExecutor(CAPACITY) as pool:
        with small_server.engine_paused():  # all of them in flight at once: a leaked slot would refuse one
            futures = [pool.submit(post, small_server, completion(f"again {i}", 20)) for i in range(CAPACITY)]
            time.sleep(0.5)
        responses = [future.result() for future in futures]

    assert [response.status_code for response in responses] == [200] * CAPACITY


def test_waiting_requests_run_in_priority_order_from_the_body_or_the_header(small_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    queued = [  # in the order they are sent
        ("last", {"priority": 10}, {}),  # the lowest priority, by the body field
        ("second", {}, {"x-priority": "5"}),  # by the header
        ("first", {}, {}),  # sent last, but the default priority 0 runs first
    ]

    with ThreadPoolExecutor(len(queued)) as pool, httpx.Client(timeout=60) as client:
        # A long request holds the only running slot while the others queue up behind it.
        with client.stream("POST", f"{small_server.url}/v1/completions",
                           json=completion("blocker", 100, stream=True)) as blocker:
            blocker_lines = blocker.iter_lines()
            next(blocker_lines)
            with small_server.engine_paused():
                futures = []
                for name, fields, headers in queued:
                    headers = {**headers, "x-request-id": f"{name}-{tag}"}
                    futures.append(pool.submit(post, small_server, completion(name, 10, **fields), headers))
                    time.sleep(0.3)  # a clear arrival order, in case priorities were ignored
            for _ in blocker_lines:
                pass
        assert [future.result().status_code for future in futures] == [200] * len(queued)

    # The server logs each request as it answers it, so the log has the order in which they finished.
    log = small_server.log()
    finished = sorted((name for name, _, _ in queued), key=lambda name: log.index(f"[{name}-{tag}] POST"))
    assert finished == ["first", "second", "last"]


def test_a_batch_of_more_prompts_than_the_capacity_is_a_400_not_a_429_forever(small_server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": [f"p{i}" for i in range(CAPACITY + 1)], "max_tokens": 2}
    assert_openai_error(post(small_server, body), 400, str(CAPACITY), "at most")
    body["prompt"] = body["prompt"][:CAPACITY]  # a batch that fits an idle server is served
    assert post(small_server, body).status_code == 200


def test_a_priority_that_is_not_a_number_is_a_400(small_server: ServerProcess) -> None:
    for response in [
        post(small_server, completion("hi", 2, priority="high")),
        post(small_server, completion("hi", 2), {"x-priority": "high"}),
    ]:
        assert_openai_error(response, 400, "priority", match_case=True)


def test_a_request_past_its_timeout_header_gets_408_and_its_blocks_back(small_server: ServerProcess) -> None:
    generated_before = small_server.metric("lmserve:generation_tokens_total")
    started = time.monotonic()

    response = post(small_server, completion("slow", LONG), {"x-request-timeout": "0.2"})

    assert_openai_error(response, 408, "timeout", match_case=True)
    assert time.monotonic() - started < 5
    assert_engine_empties(small_server)
    assert small_server.metric("lmserve:generation_tokens_total") - generated_before < LONG  # cut short


def test_a_client_leaving_mid_stream_aborts_its_request(small_server: ServerProcess) -> None:
    generated_before = small_server.metric("lmserve:generation_tokens_total")

    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{small_server.url}/v1/completions",
                           json=completion("leaving", LONG, stream=True)) as response:
            events = (line for line in response.iter_lines() if line.startswith("data: "))
            first_two = [next(events), next(events)]
            assert small_server.metric("lmserve:num_requests_running") == 1
        # Leaving the block closes the connection mid-stream.

    assert all('"finish_reason":null' in event for event in first_two)
    assert_engine_empties(small_server)
    assert small_server.metric("lmserve:generation_tokens_total") - generated_before < LONG
    assert post(small_server, completion("after", 5)).status_code == 200


def test_a_client_giving_up_on_a_queued_request_aborts_it_before_it_runs(small_server: ServerProcess) -> None:
    generated_before = small_server.metric("lmserve:generation_tokens_total")

    with small_server.engine_paused():
        with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection on giving up
            post(small_server, completion("impatient", LONG), timeout=httpx.Timeout(30, read=0.5))
        time.sleep(0.3)  # the server sees the disconnect and sends the abort behind the request

    # Had it not been aborted, the impatient request would run (whole) before this one.
    assert post(small_server, completion("patient", 5)).status_code == 200
    assert small_server.metric("lmserve:generation_tokens_total") - generated_before < LONG
    assert_engine_empties(small_server)
