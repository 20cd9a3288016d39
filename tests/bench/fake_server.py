"""An OpenAI-compatible server faked in process (an httpx transport): it streams a fixed number of chunks,
a little apart, and records each request's body and how many requests it had at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

BASE_URL = "http://fake"
COMPLETIONS_URL = f"{BASE_URL}/v1/completions"
CHAT_URL = f"{BASE_URL}/v1/chat/completions"


class FakeServer:
    """Answers every POST with `num_tokens` chunks of one word, `chunk_gap` seconds apart, then the usage.

    `status` other than 200 answers that error instead.
    """

    def __init__(self, num_tokens: int = 4, chunk_gap: float = 0.005, prompt_tokens: int = 7, status: int = 200):
        self.num_tokens = num_tokens
        self.chunk_gap = chunk_gap
        self.prompt_tokens = prompt_tokens
        self.status = status
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def client(self) -> httpx.AsyncClient:
        """A client whose requests this fake answers, without any socket."""
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Record the request; answer the error, or start the stream (the request is in flight until its end)."""
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "no such model", "code": self.status}})
        chat = request.url.path.endswith("/chat/completions")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return httpx.Response(200, content=self._events(chat), headers={"content-type": "text/event-stream"})

    async def _events(self, chat: bool) -> AsyncIterator[bytes]:
        if chat:  # OpenAI's chat streams start with the role and no text
            yield _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None})
        for _ in range(self.num_tokens):
            await asyncio.sleep(self.chunk_gap)
            choice = {"index": 0, "delta": {"content": " word"}} if chat else {"index": 0, "text": " word"}
            yield _event({"choices": [choice], "usage": None})
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.num_tokens}
        yield _event({"choices": [], "usage": usage})
        self.in_flight -= 1  # done, as the client learns from the [DONE] below
        yield b"data: [DONE]\n\n"


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
