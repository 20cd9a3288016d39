"""A real server on 127.0.0.1 serving the tiny text model, shared by the tests that need no special options;
and the offline reference that answers what it should."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from lmserve import LLM
from tests.server.server_process import TINY_MODEL_ARGS, ServerProcess

# Small enough to exercise batching limits, big enough for the concurrency tests to run together.
SERVER_ARGS = (*TINY_MODEL_ARGS, "--max-num-seqs", "32")


@pytest.fixture(scope="session")
def server(text_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(text_model_dir, *SERVER_ARGS) as process:
        yield process


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="module")
def llm(text_model_dir: Path) -> LLM:
    """The offline reference: the model the shared server serves, loaded the same way."""
    return LLM(str(text_model_dir), dtype="float32")
