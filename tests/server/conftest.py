"""A real server on 127.0.0.1 serving the tiny text model, shared by the tests that need no special options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.server.server_process import ServerProcess

# Small enough to exercise batching limits, big enough for the concurrency tests to run together.
SERVER_ARGS = ("--dtype", "float32", "--max-num-seqs", "32", "--served-model-name", "tiny")


@pytest.fixture(scope="session")
def server(text_model_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(text_model_dir, *SERVER_ARGS)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
