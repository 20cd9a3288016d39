"""A real `python -m lmserve.router` process on 127.0.0.1, and real `lmserve serve` replicas of the embedded
default model behind it, for the tests that talk to them over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.server_process import LoopbackProcess, ServerProcess

MODEL = "default_model"  # the embedded model's served name
# One compute thread per replica: several replicas' thread pools spinning on two cores slow every step 20-fold.
REPLICA_ENV = {"OMP_NUM_THREADS": "1"}


def start_replicas(count: int, *args: str) -> list[ServerProcess]:
    """`count` replicas of the embedded model, started side by side; all stopped if one fails."""
    return start_servers([args] * count)


def start_servers(arguments: list[tuple[str, ...]]) -> list[ServerProcess]:
    """One replica of the embedded model for each tuple of `lmserve serve` arguments, started side by side; all
    stopped if one fails."""
    with ThreadPoolExecutor(len(arguments)) as pool:
        futures = [pool.submit(ServerProcess, None, *args, env=REPLICA_ENV) for args in arguments]
    replicas = [future.result() for future in futures if future.exception() is None]
    if len(replicas) < len(arguments):
        stop_all(replicas)
        raise next(future.exception() for future in futures if future.exception() is not None)
    return replicas


def stop_all(processes: list[ServerProcess]) -> None:
    """Stop processes side by side (each drains for a moment)."""
    with ThreadPoolExecutor(max(len(processes), 1)) as pool:
        list(pool.map(ServerProcess.stop, processes))


def restart_replica(port: int, *args: str) -> ServerProcess:
    """A replica on a given port: a killed one's, so the router sees it come back."""
    return ServerProcess(None, *args, env=REPLICA_ENV, port=port)


class RouterProcess(LoopbackProcess):
    """A real `python -m lmserve.router ...`."""

    def __init__(self, *args: str) -> None:
        super().__init__("lmserve router", ["lmserve.router"], args, None, None)

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.url, name, **labels)

    def backend_counts(self, urls: list[str]) -> dict[str, float]:
        """Requests each replica answered, by the router's count."""
        return {url: self.metric("lmserve_router:backend_requests_total", backend=url) for url in urls}


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The /metrics samples `name` whose labels include `labels`, summed over the others; 0 when absent."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def complete(url: str, prompt: str, max_tokens: int = 4, client: httpx.Client | None = None,
             **extra: object) -> httpx.Response:
    """A greedy /v1/completions request for the embedded model."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    return (client or httpx).post(f"{url}/v1/completions", json=body, timeout=60)
