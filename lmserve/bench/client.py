"""One streamed request to an OpenAI-compatible endpoint, timed chunk by chunk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from lmserve.bench.workload import BenchRequest

ERROR_BODY_CHARS = 300  # enough of an error response to see why, without filling the result file


@dataclass(frozen=True)
class Target:
    """Where requests go and how their bodies are built."""

    url: str  # the full endpoint URL, e.g. http://127.0.0.1:8000/v1/completions
    endpoint: str  # "completions" or "chat"
    model: str
    fixed_output_len: bool  # send ignore_eos and min_tokens, so each request generates exactly max_tokens


@dataclass
class RequestRecord:
    """What one request measured. Times are seconds; `start` counts from the run's start.

    Token counts come from the server's usage; a server that sends none gets its content chunks counted
    as output tokens (and no prompt tokens).
    """

    index: int
    start: float
    success: bool = False
    error: str = ""
    ttft: float | None = None  # to the first chunk that carries text
    e2e_latency: float | None = None
    itl: list[float] = field(default_factory=list)  # every gap between two chunks that carry text
    prompt_tokens: int = 0
    output_tokens: int = 0


def request_body(request: BenchRequest, target: Target) -> dict[str, Any]:
    """The JSON body: the prompt or messages, streaming with usage, and a fixed output length if asked."""
    body: dict[str, Any] = {"model": target.model, "stream": True, "stream_options": {"include_usage": True}}
    if target.endpoint == "chat":
        body["messages"] = request.messages or [{"role": "user", "content": request.prompt}]
    else:  # the CLI refuses chat messages for the completions endpoint
        body["prompt"] = request.prompt
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
        if target.fixed_output_len:
            body.update(ignore_eos=True, min_tokens=request.max_tokens)
    return body


async def send_request(
    client: httpx.AsyncClient, target: Target, request: BenchRequest, index: int, run_start: float
) -> RequestRecord:
    """Send one request and read its stream to the end; failures are recorded, never raised."""
    body = request_body(request, target)
    sent = time.perf_counter()
    record = RequestRecord(index=index, start=sent - run_start)
    try:
        async with client.stream("POST", target.url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {text[:ERROR_BODY_CHARS]}"
                return record
            await _read_stream(response, record, sent)
    except (httpx.HTTPError, ValueError) as error:  # ValueError: an event that is not a JSON object
        record.error = f"{type(error).__name__}: {error}"
        return record
    record.e2e_latency = time.perf_counter() - sent
    if not record.error and record.ttft is None:
        record.error = "the stream ended without any text"
    record.success = not record.error
    return record


async def _read_stream(response: httpx.Response, record: RequestRecord, sent: float) -> None:
    """Take the server-sent events: time the chunks with text, keep the usage, note an error event."""
    last_chunk: float | None = None
    chunks_with_text = 0
    usage: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            break
        now = time.perf_counter()
        payload = json.loads(data)
        if not isinstance(payload, dict):
            raise ValueError(f"an event that is not a JSON object: {data[:ERROR_BODY_CHARS]}")
        if "error" in payload:
            record.error = f"error event: {json.dumps(payload['error'])[:ERROR_BODY_CHARS]}"
            break
        usage = payload.get("usage") or usage
        if any(_text(choice) for choice in payload.get("choices") or []):
            chunks_with_text += 1
            if last_chunk is None:
                record.ttft = now - sent
            else:
                record.itl.append(now - last_chunk)
            last_chunk = now
    record.prompt_tokens = usage.get("prompt_tokens", 0) if usage else 0
    record.output_tokens = usage.get("completion_tokens", chunks_with_text) if usage else chunks_with_text


def _text(choice: dict[str, Any]) -> str:
    """A chunk's text: a completion's `text`, or a chat delta's `content`."""
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""
