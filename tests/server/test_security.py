"""API keys, and what the logs may and must say: a server started with two keys, JSON logs and --log-requests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from lmserve.server.config import API_KEY_ENV, ServerConfig
from tests.server.helpers import assert_openai_error
from tests.server.server_process import TINY_MODEL_ARGS, ServerProcess

KEYS = ("k1", "k2")
REQUEST = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0}
SERVER_ARGS = (*TINY_MODEL_ARGS, "--api-key", KEYS[0], "--api-key", KEYS[1], "--log-format", "json", "--log-requests")


@pytest.fixture(scope="module")
def locked_server(text_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(text_model_dir, *SERVER_ARGS) as process:
        yield process


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_for_log(server: ServerProcess, text: str, timeout: float = 10.0) -> str:
    """The server's log once it holds `text` (lines are written after the response is sent)."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in log, f"{text!r} never reached the log:\n{log[-3000:]}"
    return log


def json_log_lines(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def request_log(server: ServerProcess, request_id: str, timeout: float = 10.0) -> list[dict]:
    """The JSON log lines of one request, once its access line (written after the response) is there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in json_log_lines(server) if line["request_id"] == request_id]
        if any("path" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# ---- API keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(KEYS[0] + KEYS[1]),
        {"authorization": "Bearer"},
        {"authorization": KEYS[0]},
        {"authorization": f"Basic {KEYS[0]}"},
    ],
    ids=["no-key", "wrong-key", "keys-joined", "empty-key", "no-scheme", "basic-scheme"],
)
def test_a_request_without_a_valid_key_is_a_401(locked_server: ServerProcess, headers: dict) -> None:
    response = httpx.post(f"{locked_server.url}/v1/completions", json=REQUEST, headers=headers, timeout=30)

    assert_openai_error(response, 401, "api key", error_type="authentication_error")


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_is_accepted_by_the_openai_client(locked_server: ServerProcess, key: str) -> None:
    client = locked_server.client(api_key=key, timeout=30)

    completion = client.completions.create(**REQUEST)

    assert completion.usage.completion_tokens == 4


def test_the_openai_client_reports_a_wrong_key_as_an_authentication_error(locked_server: ServerProcess) -> None:
    client = locked_server.client(api_key="k3", timeout=30)

    with pytest.raises(openai.AuthenticationError, match="API key"):
        client.completions.create(**REQUEST)


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_operational_endpoints_need_no_key(locked_server: ServerProcess, path: str) -> None:
    assert httpx.get(f"{locked_server.url}{path}", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/models", None), ("POST", "/tokenize", {"prompt": "hi"}), ("POST", "/generate", {"inputs": "hi"})],
)
def test_every_api_endpoint_needs_a_key(locked_server: ServerProcess, method: str, path: str, body) -> None:
    url = f"{locked_server.url}{path}"

    assert httpx.request(method, url, json=body, timeout=30).status_code == 401
    assert httpx.request(method, url, json=body, headers=bearer(KEYS[1]), timeout=30).status_code == 200


def test_keys_come_from_the_environment_separated_by_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, " k3, k4 ,,")

    assert ServerConfig().api_key == ["k3", "k4"]
    assert ServerConfig(api_key=["k5"]).api_key == ["k5"]  # a key given on the command line wins


# ---- Logs -----------------------------------------------------------------------------------------------


def test_prompts_are_not_logged_by_default(server: ServerProcess) -> None:
    marker, request_id = f"secret-{uuid.uuid4().hex}", f"quiet-{uuid.uuid4().hex}"

    response = httpx.post(
        f"{server.url}/v1/completions",
        json={**REQUEST, "prompt": marker},
        headers={"x-request-id": request_id},
        timeout=30,
    )

    assert response.status_code == 200
    log = wait_for_log(server, request_id)  # the request was logged ...
    assert marker not in log  # ... but not its prompt


def test_log_requests_logs_the_prompt_and_the_output(locked_server: ServerProcess) -> None:
    marker, request_id = f"prompt-{uuid.uuid4().hex}", f"loud-{uuid.uuid4().hex}"

    response = httpx.post(
        f"{locked_server.url}/v1/completions",
        json={**REQUEST, "prompt": marker},
        headers={**bearer(KEYS[1]), "x-request-id": request_id},
        timeout=30,
    )

    assert response.status_code == 200
    text = response.json()["choices"][0]["text"]
    messages = [line["message"] for line in request_log(locked_server, request_id)]
    assert any(marker in message for message in messages)
    assert any(message.endswith(repr([text])) for message in messages), messages


def test_log_requests_logs_a_streamed_output_whole(locked_server: ServerProcess) -> None:
    request_id = f"streamed-{uuid.uuid4().hex}"
    client = locked_server.client(api_key=KEYS[1], timeout=30)

    stream = client.completions.create(
        **{**REQUEST, "max_tokens": 12}, stream=True, extra_headers={"x-request-id": request_id}
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    assert text
    messages = [line["message"] for line in request_log(locked_server, request_id)]
    finished = [message for message in messages if " finished: " in message]
    assert finished, messages
    assert finished[0].endswith(repr([text])), f"logged {finished[0]!r}, but the client received {text!r}"


def test_json_logs_are_one_object_per_line_tagged_with_the_clients_request_id(locked_server: ServerProcess) -> None:
    request_id = f"tagged-{uuid.uuid4().hex}"

    response = httpx.post(
        f"{locked_server.url}/v1/completions",
        json=REQUEST,
        headers={**bearer(KEYS[1]), "x-request-id": request_id},
        timeout=30,
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    ours = request_log(locked_server, request_id)
    lines = json_log_lines(locked_server)  # raises if any line is not JSON
    assert all({"time", "level", "message", "request_id"} <= set(line) for line in lines)
    access = [line for line in ours if line.get("path") == "/v1/completions"]
    assert access and access[0]["status"] == 200 and access[0]["method"] == "POST"
    assert any("prompt=" in line["message"] for line in ours)  # --log-requests lines carry the id too


def test_a_refused_request_is_logged_with_its_request_id(locked_server: ServerProcess) -> None:
    request_id = f"refused-{uuid.uuid4().hex}"

    response = httpx.post(
        f"{locked_server.url}/v1/completions", json=REQUEST, headers={"x-request-id": request_id}, timeout=30
    )

    assert response.status_code == 401
    assert response.headers["x-request-id"] == request_id
    [line] = request_log(locked_server, request_id)
    assert line["status"] == 401
