"""A real `lmserve serve` process on 127.0.0.1, for tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

STARTUP_TIMEOUT = 120.0
# The tiny text model as the tests serve it: float32 (like the offline reference) under the name "tiny".
TINY_MODEL_ARGS = ("--dtype", "float32", "--served-model-name", "tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, name: str) -> str | None:
    """Poll `url`/health until it answers 200 (None); else why not: the process exited or STARTUP_TIMEOUT passed."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"{name} exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return f"{name} did not become healthy in {STARTUP_TIMEOUT}s"


class LoopbackProcess:
    """`python -m <module_args> --host 127.0.0.1 --port P <args>`, its output in a log file, waited for until its
    /health answers 200. As a context manager, it stops the process when the block ends."""

    def __init__(
        self, name: str, module_args: list[str], args: tuple[str, ...], env: dict[str, str] | None, port: int | None
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", *module_args, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lmserve-{name.replace(' ', '-')}-{self.port}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        if (failure := wait_until_healthy(self.process, self.url, name)) is not None:
            log = self.log()
            self.stop()
            raise RuntimeError(f"{failure}:\n{log}")

    def __enter__(self) -> LoopbackProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class ServerProcess(LoopbackProcess):
    """A real `lmserve serve` (`python -m lmserve.entrypoints.cli serve [model] ...`)."""

    def __init__(
        self, model: str | Path | None, *args: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        module_args = ["lmserve.entrypoints.cli", "serve", *([str(model)] if model is not None else [])]
        super().__init__("lmserve serve", module_args, args, env, port)

    def client(self, api_key: str = "unused", timeout: float = 60) -> openai.OpenAI:
        """An `openai` client of this server's /v1 API that does not retry."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of the /metrics sample `name` whose labels are the model's name and exactly `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                others = {key: value for key, value in sample.labels.items() if key != "model_name"}
                if sample.name == name and "model_name" in sample.labels and others == (labels or {}):
                    return sample.value
        raise AssertionError(f"{name}{labels or ''} is not in /metrics")

    def engine_core_pid(self) -> int:
        """The engine core process: the server's multiprocessing spawn child that is not the resource tracker."""
        children = [pid for path in Path(f"/proc/{self.process.pid}/task").glob("*/children")
                    for pid in path.read_text().split()]
        for pid in children:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in command and b"resource_tracker" not in command:
                return int(pid)
        raise AssertionError(f"no engine core among the server's children {children}")

    @contextlib.contextmanager
    def engine_paused(self) -> Iterator[int]:
        """Freeze the engine core (SIGSTOP: requests wait in its input queue) until the block ends; yields its pid.

        The HTTP server keeps answering meanwhile. The block may kill the engine core.
        """
        pid = self.engine_core_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile
                os.kill(pid, signal.SIGCONT)

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM and wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
