"""Greedy requests to the cluster's ingress from a few threads, until stopped: each answer's text, or how it
failed and whether its stream had started by then."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass

import httpx

MODEL = "default_model"
PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):",
    "Once upon a time",
    "import numpy as np",
    "The capital of France is",
    "for i in range(10):",
]
MAX_TOKENS = 24
TIMEOUT = httpx.Timeout(120.0, connect=5.0)


@dataclass
class Answer:
    """One request's outcome: its text when it succeeded, else the error and whether any event had arrived."""

    prompt: str
    stream: bool
    text: str | None = None
    error: str | None = None
    started_streaming: bool = False


def body(prompt: str, stream: bool = False) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}


def complete(url: str, prompt: str, stream: bool) -> Answer:
    """Send one request; never raises."""
    answer = Answer(prompt, stream)
    try:
        if not stream:
            response = httpx.post(f"{url}/v1/completions", json=body(prompt), timeout=TIMEOUT)
            if response.status_code != 200:
                answer.error = f"status {response.status_code}: {response.text}"
            else:
                answer.text = response.json()["choices"][0]["text"]
            return answer
        with httpx.stream("POST", f"{url}/v1/completions", json=body(prompt, stream=True), timeout=TIMEOUT) as response:
            if response.status_code != 200:
                answer.error = f"status {response.status_code}: {response.read().decode(errors='replace')}"
                return answer
            parts = []
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                answer.started_streaming = True
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    answer.error = f"error event: {event['error']}"
                    return answer
                parts += [choice["text"] for choice in event["choices"]]
            answer.text = "".join(parts)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as error:
        answer.error = repr(error)
    return answer


class Load:
    """`clients` threads each sending one request after another (streamed and not, in turn) until `stop`."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(index,), daemon=True) for index in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, index: int) -> None:
        for turn in itertools.count(index):
            if self._stopped.is_set():
                return
            answer = complete(self.url, PROMPTS[turn % len(PROMPTS)], stream=turn % 2 == 1)
            with self._lock:
                self.answers.append(answer)

    def stop(self) -> list[Answer]:
        """Stop sending, wait for the requests in flight, and return every answer."""
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=150)
        return self.answers
