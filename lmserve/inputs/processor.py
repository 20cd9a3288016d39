"""Validates and tokenizes a prompt, then fans it out into one engine-core request per sample."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from lmserve.config import EngineConfig
from lmserve.engine.messages import EngineCoreRequest
from lmserve.errors import InvalidRequestError
from lmserve.inputs.tokenizer import encode_text
from lmserve.sampling_params import SamplingParams

Prompt = str | list[int]

# generation_config.json keys that become default sampling values, and their SamplingParams names
_GENERATION_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


@dataclass
class ProcessedPrompt:
    """A request ready for the engine: its prompt, and one core request per sample (`n` of them)."""

    prompt: str | None
    prompt_token_ids: list[int]
    core_requests: list[EngineCoreRequest]


class InputProcessor:
    """Knows the model's limits, EOS tokens and generation defaults; checks every request against them."""

    def __init__(self, config: EngineConfig, tokenizer: Any | None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        generation_config = _read_generation_config(config.model.model)
        self.eos_token_ids = _eos_token_ids(config.model.hf_config, generation_config, tokenizer)
        self.generation_defaults = {
            ours: generation_config[theirs]
            for theirs, ours in _GENERATION_DEFAULTS.items()
            if theirs in generation_config
        }
        if generation_config.get("do_sample") is False:
            self.generation_defaults["temperature"] = 0.0

    def default_sampling_params(self) -> SamplingParams:
        """Sampling values from the model's generation_config.json, where it sets them."""
        return SamplingParams(**self.generation_defaults)

    def process(
        self, request_id: str, prompt: Prompt, params: SamplingParams, arrival_time: float, priority: int = 0
    ) -> ProcessedPrompt:
        if not -(2**63) <= priority < 2**63:
            raise InvalidRequestError(f"priority must fit in 64 bits, got {priority}")
        prompt_text, token_ids = self._tokenize(prompt)
        self._validate(token_ids, params)
        max_model_len = self.config.model.max_model_len
        max_tokens = max_model_len - len(token_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        # Without prefix caching, a request's samples still share its prompt's blocks, and nothing else
        # (not even a later request that reuses the id).
        cache_salt = None if self.config.cache.enable_prefix_caching else f"{request_id}/{uuid.uuid4().hex}"
        core_requests = [
            EngineCoreRequest(
                request_id=child_id,
                prompt_token_ids=token_ids,
                sampling_params=_child_params(params, index),
                eos_token_ids=self.eos_token_ids,
                arrival_time=arrival_time,
                max_tokens=max_tokens,
                priority=priority,
                cache_salt=cache_salt,
            )
            for index, child_id in enumerate(child_request_ids(request_id, params.n))
        ]
        return ProcessedPrompt(prompt_text, token_ids, core_requests)

    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("a text prompt needs a tokenizer; pass token ids instead")
            return prompt, encode_text(self.tokenizer, prompt)
        if not isinstance(prompt, list | tuple) or not all(isinstance(t, int) for t in prompt):
            raise InvalidRequestError("a prompt must be a string or a list of token ids")
        return None, list(prompt)

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        vocab_size = self.config.model.vocab_size
        max_model_len = self.config.model.max_model_len
        if not token_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(token_ids) >= max_model_len:
            raise InvalidRequestError(
                f"the prompt is {len(token_ids)} tokens long, but the model's maximum length is "
                f"{max_model_len} tokens, which must also leave room for at least one generated token"
            )
        for name, ids in (
            ("prompt", token_ids),
            ("logit_bias", params.logit_bias),
            ("stop_token_ids", params.stop_token_ids),
        ):
            if any(not 0 <= t < vocab_size for t in ids):
                raise InvalidRequestError(f"{name} holds a token id outside the vocabulary [0, {vocab_size})")
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; use stop_token_ids instead")


def child_request_ids(request_id: str, n: int) -> list[str]:
    """The engine-core ids of a request's samples; a single sample keeps the request's own id."""
    return [request_id] if n == 1 else [f"{request_id}#{index}" for index in range(n)]


def _child_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sample `index` of a request: one sample, with its own seed so the samples differ."""
    if params.n == 1:
        return params
    # Wrapped into the signed 64-bit range that seeds take: the largest seed's later samples wrap around.
    seed = None if params.seed is None else (params.seed + index + 2**63) % 2**64 - 2**63
    return dataclasses.replace(params, n=1, seed=seed)


def _read_generation_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as file:
        return json.load(file)


def _eos_token_ids(hf_config: Any, generation_config: dict[str, Any], tokenizer: Any | None) -> tuple[int, ...]:
    """EOS ids from the model config and generation_config.json; the tokenizer's only if neither sets one."""
    ids: list[int] = []
    for value in (getattr(hf_config, "eos_token_id", None), generation_config.get("eos_token_id")):
        if value is not None:
            ids.extend(value if isinstance(value, list) else [value])
    if not ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(ids))
