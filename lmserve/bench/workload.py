"""What the benchmark sends: prompts from a JSONL dataset, or random prompts made of words."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmserve.errors import ConfigError

DEFAULT_NUM_RANDOM_PROMPTS = 100
# Common English and Python words: each is one token, or close to it, in the usual BPE vocabularies, so a
# prompt of N words is about N tokens on any server. The exact count comes back in the server's usage.
WORDS = (
    "the of and to in is for that with as on by it from at this be are or not an if else return import def class "
    "self value name data file list dict string number time line path test error type result index key default "
    "object module function method call user system model server request token print open read write start end "
    "first last next new old true false none get set add run make take find show work keep give tell use"
).split()


@dataclass(frozen=True)
class BenchRequest:
    """One request's content: a completion prompt or chat messages, and how many tokens to generate.

    `max_tokens` None leaves the output length to the server.
    """

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None


def random_requests(num_prompts: int, input_len: int, output_len: int, seed: int) -> list[BenchRequest]:
    """`num_prompts` prompts of `input_len` random words each, every one asking for `output_len` tokens."""
    rng = random.Random(seed)
    return [
        BenchRequest(prompt=" ".join(rng.choices(WORDS, k=input_len)), max_tokens=output_len)
        for _ in range(num_prompts)
    ]


def load_dataset(path: str | Path, num_prompts: int | None = None) -> list[BenchRequest]:
    """The first `num_prompts` (default: all) lines of a JSONL file, each {"prompt": ...} or
    {"messages": [...]}, with an optional "max_tokens"."""
    requests = []
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines[:num_prompts], start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not JSON ({error})") from error
        entry = entry if isinstance(entry, dict) else {}
        prompt, messages = entry.get("prompt"), entry.get("messages")
        if isinstance(prompt, str) == isinstance(messages, list):
            raise ConfigError(f'{path}:{number}: expected an object with either "prompt" (text) or "messages" (a list)')
        max_tokens = entry.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(f"{path}:{number}: max_tokens must be a positive integer, got {max_tokens!r}")
        requests.append(BenchRequest(prompt, messages, max_tokens))
    if not requests:
        raise ConfigError(f"{path} holds no prompts")
    return requests
