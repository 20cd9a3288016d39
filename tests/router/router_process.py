"""A real `python -m lmserve.router` process on 127.0.0.1, and real `lmserve serve` replicas of the embedded
default model behind it, for the tests that talk to them over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.server_process import ServerProcess, free_port, wait_until_healthy

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


class RouterProcess:
    """Starts `python -m lmserve.router ...` and waits until its /health answers 200; a context manager."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "lmserve.router", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lmserve-router-test-{self.port}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        if (failure := wait_until_healthy(self.process, self.url)) is not None:
            self.stop()
            raise RuntimeError(f"the router: {failure}:\n{self.log_path.read_text(errors='replace')}")

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def metric(self, name: str, **labels: str) -> float:
        """The /metrics sample `name` whose labels include `labels`, summed over the others; 0 when absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def backend_counts(self, urls: list[str]) -> dict[str, float]:
        """Requests each replica answered, by the router's count."""
        return {url: self.metric("lmserve_router:backend_requests_total", backend=url) for url in urls}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
