"""Three replicas behind the router: requests spread as the policy says (by the router's own counts), greedy
outputs through the router are a replica's, and a stream through the router says what a whole answer says."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.router.router_process import MODEL, RouterProcess, complete
from tests.server.helpers import assert_openai_error
from tests.server.server_process import ServerProcess

NUM_REQUESTS = 200
PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:", "for i in range(", "    return self."]


@pytest.fixture(scope="module")
def round_robin(replicas: list[ServerProcess]) -> Iterator[RouterProcess]:
    """Configured by --backends: one unnamed model."""
    backends = ",".join(replica.url for replica in replicas)
    with RouterProcess("--backends", backends, "--policy", "round_robin") as router:
        yield router


@pytest.fixture(scope="module")
def least_outstanding(
    replicas: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    """Configured by a YAML file naming the model; least_outstanding is the default policy."""
    path = tmp_path_factory.mktemp("router") / "router.yaml"
    path.write_text(json.dumps({"models": {MODEL: {"backends": [replica.url for replica in replicas]}}}))
    with RouterProcess("--config", str(path)) as router:
        yield router


def send_many(router: RouterProcess, count: int) -> Counter[str]:
    """`count` small requests, 8 at a time; each must succeed. How many each backend answered, by the header."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda index: complete(router.url, f"x = {index}", 2, client), range(count)))
    failures = [response.text for response in responses if response.status_code != 200]
    assert not failures, failures
    return Counter(response.headers["x-lmserve-backend"] for response in responses)


def test_round_robin_gives_each_replica_an_equal_share(
    round_robin: RouterProcess, replicas: list[ServerProcess]
) -> None:
    urls = [replica.url for replica in replicas]
    before = round_robin.backend_counts(urls)
    by_header = send_many(round_robin, NUM_REQUESTS)
    after = round_robin.backend_counts(urls)
    counts = {url: after[url] - before[url] for url in urls}
    assert counts == {url: by_header[url] for url in urls}
    assert sum(counts.values()) == NUM_REQUESTS
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_least_outstanding_uses_every_replica(least_outstanding: RouterProcess, replicas: list[ServerProcess]) -> None:
    urls = [replica.url for replica in replicas]
    before = least_outstanding.backend_counts(urls)
    send_many(least_outstanding, NUM_REQUESTS)
    after = least_outstanding.backend_counts(urls)
    counts = {url: after[url] - before[url] for url in urls}
    assert sum(counts.values()) == NUM_REQUESTS
    assert all(count > 0 for count in counts.values()), counts
    assert least_outstanding.metric("lmserve_router:requests_total", model=MODEL, status="200") >= NUM_REQUESTS


def test_greedy_outputs_through_the_router_are_a_replicas(
    round_robin: RouterProcess, least_outstanding: RouterProcess, replicas: list[ServerProcess]
) -> None:
    for prompt in PROMPTS:
        direct = complete(replicas[0].url, prompt, 24).json()["choices"][0]["text"]
        for router in (round_robin, least_outstanding):
            response = complete(router.url, prompt, 24)
            assert response.json()["choices"][0]["text"] == direct
            assert response.headers["x-lmserve-model"] == MODEL
            assert response.headers["x-lmserve-backend"] in {replica.url for replica in replicas}


def stream_text(url: str, path: str, body: dict) -> tuple[str, list[dict]]:
    """A streamed answer's text, and its events."""
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    parts = [choice.get("text") or choice.get("delta", {}).get("content") or ""
             for event in events for choice in event["choices"]]
    return "".join(parts), events


def test_a_stream_through_the_router_says_what_the_whole_answer_says(least_outstanding: RouterProcess) -> None:
    for prompt in PROMPTS[:3]:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0}
        whole = httpx.post(f"{least_outstanding.url}/v1/completions", json=body, timeout=60).json()
        text, events = stream_text(least_outstanding.url, "/v1/completions", body)
        assert text == whole["choices"][0]["text"]
        assert all("usage" not in event for event in events)  # the usage chunk the router asked for is gone

        chat = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0}
        whole = httpx.post(f"{least_outstanding.url}/v1/chat/completions", json=chat, timeout=60).json()
        assert stream_text(least_outstanding.url, "/v1/chat/completions", chat)[0] == whole["choices"][0]["message"][
            "content"]


def test_streamed_tokens_are_counted_whether_or_not_the_client_asked_for(least_outstanding: RouterProcess) -> None:
    def generated() -> float:
        return least_outstanding.metric("lmserve_router:generation_tokens_total", model=MODEL)

    body = {"model": MODEL, "prompt": "import sys", "max_tokens": 5, "ignore_eos": True}
    before = generated()
    stream_text(least_outstanding.url, "/v1/completions", body)
    assert generated() == before + 5
    _, events = stream_text(least_outstanding.url, "/v1/completions",
                            {**body, "stream_options": {"include_usage": True}})
    assert events[-1]["usage"]["completion_tokens"] == 5
    assert generated() == before + 10


def test_models_health_and_unknown_models(least_outstanding: RouterProcess, round_robin: RouterProcess) -> None:
    for router in (least_outstanding, round_robin):
        assert [model["id"] for model in httpx.get(f"{router.url}/v1/models").json()["data"]] == [MODEL]
        assert httpx.get(f"{router.url}/health").json()["status"] == "ok"
    response = complete(least_outstanding.url, "x", model="gpt-5")
    assert_openai_error(response, 404, "gpt-5", MODEL)
    response = httpx.post(f"{least_outstanding.url}/v1/completions", content=b"{", timeout=10)
    assert_openai_error(response, 400, "json")
    assert complete(round_robin.url, "x", model="gpt-5").status_code == 404  # the replica's own answer

