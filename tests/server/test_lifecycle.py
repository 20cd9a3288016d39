"""A server's end: SIGTERM drains what is in flight and exits 0; a dead engine core process fails what is in
flight at once and turns the server unhealthy, without hanging anyone. Each story gets a server of its own.

The engine core is paused (SIGSTOP) while a story needs requests to stay in flight, so that the stories
hold on a machine of any speed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import assert_openai_error
from tests.server.server_process import TINY_MODEL_ARGS, ServerProcess

DRAIN_TIMEOUT = 30.0
STREAM = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 150, "ignore_eos": True, "stream": True,
          "stream_options": {"include_usage": True}}
WHOLE = {"model": "tiny", "prompt": "import os", "max_tokens": 150, "ignore_eos": True}


@pytest.fixture
def own_server(text_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(text_model_dir, *TINY_MODEL_ARGS, "--drain-timeout", str(DRAIN_TIMEOUT)) as process:
        yield process


def events(lines: Iterator[str]) -> list[dict | str]:
    """The rest of a server-sent event stream: each event's JSON, or the "[DONE]" marker."""
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def until_status(url: str, status: int, timeout: float = 10.0) -> httpx.Response:
    """GET `url` until it answers `status`; the last answer."""
    deadline = time.monotonic() + timeout
    while (response := httpx.get(url, timeout=5)).status_code != status and time.monotonic() < deadline:
        time.sleep(0.02)
    return response


def assert_unavailable(response: httpx.Response, *words: str) -> None:
    assert_openai_error(response, 503, *words, error_type="server_error", match_case=True)


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(own_server: ServerProcess) -> None:
    url = own_server.url
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/v1/completions", json=STREAM) as stream:
            lines = stream.iter_lines()
            next(lines)  # the stream has started
            with own_server.engine_paused():  # so both requests are surely still in flight
                whole = pool.submit(httpx.post, f"{url}/v1/completions", json=WHOLE, timeout=30)
                time.sleep(0.3)
                own_server.process.send_signal(signal.SIGTERM)
                sigterm_at = time.monotonic()

                assert_unavailable(until_status(f"{url}/ready", 503), "shutting down")
                assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # alive, though not ready
                assert_unavailable(httpx.post(f"{url}/v1/completions", json=WHOLE, timeout=5), "shutting down")
                assert own_server.process.poll() is None
            rest = events(lines)

        assert whole.result().status_code == 200, whole.result().text
        assert whole.result().json()["usage"]["completion_tokens"] == 150
    assert rest[-1] == "[DONE]"
    assert rest[-2]["usage"]["completion_tokens"] == 150
    assert own_server.process.wait(DRAIN_TIMEOUT) == 0
    assert time.monotonic() - sigterm_at < DRAIN_TIMEOUT
    with pytest.raises(httpx.ConnectError):  # refused only now that it has exited
        httpx.get(f"{url}/health", timeout=5)


def test_an_engine_crash_fails_in_flight_requests_at_once_and_makes_the_server_unhealthy(
    own_server: ServerProcess,
) -> None:
    url = own_server.url
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/v1/completions", json=STREAM) as stream:
            lines = stream.iter_lines()
            next(lines)
            with own_server.engine_paused() as engine:  # no request may finish before the crash
                whole = pool.submit(httpx.post, f"{url}/v1/completions", json=WHOLE, timeout=30)
                time.sleep(0.3)
                os.kill(engine, signal.SIGKILL)
                killed_at = time.monotonic()
            rest = events(lines)
            stream_ended_after = time.monotonic() - killed_at

        assert_unavailable(whole.result(), "engine core process died")
    assert stream_ended_after < 5
    assert rest[-1] == "[DONE]"  # an error event closes the stream properly
    assert rest[-2]["error"]["code"] == 503 and "engine core process died" in rest[-2]["error"]["message"]
    assert_unavailable(until_status(f"{url}/health", 503, timeout=5), "engine core process died")
    assert_unavailable(httpx.get(f"{url}/ready", timeout=5))
    for body in (WHOLE, STREAM):
        assert_unavailable(httpx.post(f"{url}/v1/completions", json=body, timeout=5), "engine core process died")
    assert own_server.terminate(timeout=15) == 0  # and it still shuts down cleanly
