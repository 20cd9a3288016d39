"""OpenAI's request bodies, checked and turned into SamplingParams, and builders of its response bodies.

Requests accept the fields of OpenAI's API plus vLLM's sampling extras (top_k, min_p, repetition_penalty,
stop_token_ids, ignore_eos, min_tokens, ...); unknown fields are ignored, as OpenAI clients send some.
Fields left unset take the model's generation_config.json defaults, then OpenAI's.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from lmserve.errors import InvalidRequestError
from lmserve.output_processing.detokenizer import decode_token
from lmserve.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 128
MAX_PROMPTS = 256  # prompts in one completions request; each one is admitted as a request of its own
MAX_LOGPROBS = 20
MIN_LOGPROB = -9999.0  # JSON has no -inf; OpenAI-compatible servers report this instead

# SamplingParams' own max_tokens default (OpenAI's for completions); a different value in the engine's
# defaults means the model's generation_config.json sets max_new_tokens.
_UNSET_MAX_TOKENS = SamplingParams.__dataclass_fields__["max_tokens"].default

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Prompts = (
    str
    | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The sampling and stopping fields the completions and chat APIs share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: off (SamplingParams turns 0 into -1)
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # what torch generators take
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: bool = False
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias added to its logit
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int | None = None  # overrides the X-Priority header; lower runs first
    user: str | None = None  # accepted and ignored

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, logit_bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in logit_bias or {}:
            if not re.fullmatch(r"\s*\d+\s*", key):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return logit_bias

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling_params(
        self,
        defaults: SamplingParams,
        max_model_len: int,
        max_tokens: int | None,
        default_max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        """Every field from the request, or else from `defaults`; raises InvalidRequestError when invalid.

        A max_tokens larger than what the prompt leaves of the model's length is cut to fit by the
        engine (finish_reason "length"); one that no prompt could leave room for is refused if the client
        asked for it, and cut to the longest possible if it is the model's default.
        """
        if max_tokens is not None and max_tokens >= max_model_len:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}, but the model's maximum length is {max_model_len} tokens, "
                "prompt included"
            )
        if max_tokens is None and default_max_tokens is not None:
            max_tokens = min(default_max_tokens, max_model_len - 1)
        return SamplingParams(
            n=self.n,
            temperature=_either(self.temperature, defaults.temperature),
            top_p=_either(self.top_p, defaults.top_p),
            top_k=_either(self.top_k, defaults.top_k),
            min_p=_either(self.min_p, defaults.min_p),
            repetition_penalty=_either(self.repetition_penalty, defaults.repetition_penalty),
            frequency_penalty=_either(self.frequency_penalty, defaults.frequency_penalty),
            presence_penalty=_either(self.presence_penalty, defaults.presence_penalty),
            seed=_either(self.seed, defaults.seed),
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias={int(token): bias for token, bias in (self.logit_bias or {}).items()},
            skip_special_tokens=self.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA if self.stream else RequestOutputKind.FINAL_ONLY,
        )


class CompletionRequest(SamplingRequest):
    """POST /v1/completions: one prompt or a batch of them, as text or token ids."""

    prompt: Prompts
    max_tokens: int | None = None  # default: the model's max_new_tokens, else 16 (OpenAI's)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported: leave it unset or equal to n")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per engine request."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def to_sampling_params(self, defaults: SamplingParams, max_model_len: int) -> SamplingParams:
        # echo with logprobs reports the prompt's logprobs too.
        prompt_logprobs = self.logprobs if self.echo else None
        return self._sampling_params(defaults, max_model_len, self.max_tokens, defaults.max_tokens, self.logprobs,
                                     prompt_logprobs)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message; its other fields (name, tool_calls, ...) are handed to the chat template as they are."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _check_parts(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        for part in content if isinstance(content, list) else []:
            if part.type != "text" or part.text is None:
                raise ValueError(f"only text content parts are supported, got one of type {part.type!r}")
        return content

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text or "" for part in self.content)

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: content as one string."""
        return {**self.model_dump(exclude_none=True), "content": self.text()}


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    max_tokens: int | None = None  # OpenAI's older name of max_completion_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _check_top_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def to_sampling_params(self, defaults: SamplingParams, max_model_len: int) -> SamplingParams:
        """Unset max tokens: the model's max_new_tokens if it sets one, else whatever room the prompt leaves."""
        default_max_tokens = None if defaults.max_tokens == _UNSET_MAX_TOKENS else defaults.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(defaults, max_model_len, _either(self.max_completion_tokens, self.max_tokens),
                                     default_max_tokens, logprobs)


class TokenizeRequest(BaseModel):
    """POST /tokenize: a text prompt, or messages to format with the chat template."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (the template adds them)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _check_one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[StrictInt]


def _either(value: Any, default: Any) -> Any:
    return default if value is None else value


# ---- Responses ----------------------------------------------------------------------------------------

Decode = Callable[[int], str]  # a token id's own text


@dataclass
class ResponseHeader:
    """What the body of a response, and each chunk of a streamed one, starts with."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, object_name: str, choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "choices": choices, **fields}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(
    index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(index: int, content: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_chunk_choice(
    index: int, delta: dict[str, str], logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_logprobs(
    token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None], decode: Decode, first_offset: int = 0
) -> dict[str, list]:
    """The completions API's parallel lists; `text_offset` counts characters from `first_offset`.

    A position without logprobs (the first prompt token, under echo) gets null logprob and alternatives.
    `top_logprobs` holds the requested alternatives and the chosen token, best first.
    """
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    offset = first_offset
    for token_id, position in zip(token_ids, positions, strict=True):
        chosen = position.get(token_id) if position else None
        text = _token_text(token_id, chosen, decode)
        tokens.append(text)
        token_logprobs.append(None if chosen is None else _finite(chosen.logprob))
        top_logprobs.append(
            None if not position
            else {_token_text(i, lp, decode): _finite(lp.logprob) for i, lp in _best_first(position)}
        )
        text_offset.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}


def chat_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobs],
    num_top: int,
    decode: Decode,
    token_bytes: Callable[[int, str], list[int]] | None = None,
) -> dict[str, list]:
    """The chat API's `{content: [{token, logprob, bytes, top_logprobs}]}`, with `num_top` alternatives each."""
    token_bytes = token_bytes or (lambda _, text: list(text.encode()))

    def entry(token_id: int, logprob: Logprob) -> dict[str, Any]:
        text = _token_text(token_id, logprob, decode)
        return {"token": text, "logprob": _finite(logprob.logprob), "bytes": token_bytes(token_id, text)}

    content = []
    for token_id, position in zip(token_ids, positions, strict=True):
        top = [entry(i, logprob) for i, logprob in _best_first(position)[:num_top]]
        content.append({**entry(token_id, position[token_id]), "top_logprobs": top})
    return {"content": content}


class TokenBytes:
    """A token's raw bytes (the chat API's `bytes`), right even for a token holding part of a character.

    Byte-level BPE vocabularies spell each byte as one printable character and SentencePiece's byte
    fallback as `<0xNN>`; other tokens are their text in UTF-8.
    """

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, token_id: int, text: str) -> list[int]:
        piece = None if self.tokenizer is None else self.tokenizer.convert_ids_to_tokens(token_id)
        if piece:
            if match := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):
                return [int(match.group(1), 16)]
            raw = [_BYTE_OF_CHARACTER.get(character, -1) for character in piece]
            if -1 not in raw and bytes(raw).decode("utf-8", errors="replace") == text:
                return raw
        return list(text.encode())


class CompletionChoices:
    """Turns a completions request's outputs into choices and counts its usage.

    When streaming, each output is a delta: echo goes with a choice's first chunk, text offsets carry on
    from the previous chunk, and chunks with nothing new are left out.
    """

    def __init__(self, body: CompletionRequest, tokenizer: Any | None) -> None:
        self.n = body.n
        self.echo = body.echo
        self.wants_logprobs = body.logprobs is not None
        self.streaming = body.stream
        self.tokenizer = tokenizer
        self.decode = _decoder(tokenizer)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._sent_chars: dict[int, int] = {}  # choice index -> characters of its text sent so far
        self._next_offset: dict[int, int] = {}  # choice index -> text_offset of its next logprob token
        self._prompt_logprobs: dict[int, list[PositionLogprobs | None]] = {}  # prompt index -> so far

    def add(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        if prompt_index not in self._prompt_logprobs:
            self.prompt_tokens += len(output.prompt_token_ids)
        prompt_logprobs = self._prompt_logprobs.setdefault(prompt_index, [])
        prompt_logprobs.extend(output.prompt_logprobs or [])
        choices = []
        for sample in output.outputs:
            self.completion_tokens += len(sample.token_ids)
            choice = self._choice(prompt_index * self.n + sample.index, output, sample, prompt_logprobs)
            if choice is not None:
                choices.append(choice)
        return choices

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)

    def _choice(
        self, index: int, output: RequestOutput, sample: CompletionOutput, prompt_logprobs: list
    ) -> dict[str, Any] | None:
        text, token_ids, positions = sample.text, sample.token_ids, sample.logprobs or []
        if self.echo and index not in self._sent_chars:
            num_prompt_tokens = len(output.prompt_token_ids)
            text = self._prompt_text(output) + text
            token_ids = output.prompt_token_ids + token_ids
            positions = (prompt_logprobs + [None] * num_prompt_tokens)[:num_prompt_tokens] + positions
        has_news = text or sample.finish_reason or (self.wants_logprobs and token_ids)
        if self.streaming and not has_news:
            return None
        logprobs = None
        if self.wants_logprobs:
            # Offsets follow the tokens' own texts: a token ending inside a character has its logprob sent
            # before the detokenizer releases that character's text.
            offset = self._next_offset.get(index, 0)
            logprobs = completion_logprobs(token_ids, positions, self.decode, offset)
            self._next_offset[index] = offset + sum(len(token) for token in logprobs["tokens"])
        self._sent_chars[index] = self._sent_chars.get(index, 0) + len(text)
        return completion_choice(index, text, logprobs, sample.finish_reason)

    def _prompt_text(self, output: RequestOutput) -> str:
        if output.prompt is not None:
            return output.prompt
        return "" if self.tokenizer is None else self.tokenizer.decode(output.prompt_token_ids)


class ChatChoices:
    """Builds a chat request's choices (whole, or each streamed chunk's logprobs) and counts its usage."""

    def __init__(self, body: ChatCompletionRequest, tokenizer: Any) -> None:
        self.num_top = (body.top_logprobs or 0) if body.logprobs else None
        self.decode = _decoder(tokenizer)
        self.token_bytes = TokenBytes(tokenizer)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def count(self, output: RequestOutput) -> None:
        self.prompt_tokens = len(output.prompt_token_ids)
        self.completion_tokens += sum(len(sample.token_ids) for sample in output.outputs)

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)

    def add_final(self, output: RequestOutput) -> list[dict[str, Any]]:
        """The choices of a whole (not streamed) answer."""
        self.count(output)
        return [
            chat_choice(sample.index, sample.text, self.logprobs(sample), sample.finish_reason)
            for sample in output.outputs
        ]

    def logprobs(self, sample: CompletionOutput) -> dict[str, list] | None:
        if self.num_top is None:
            return None
        return chat_logprobs(sample.token_ids, sample.logprobs or [], self.num_top, self.decode, self.token_bytes)


def _decoder(tokenizer: Any | None) -> Decode:
    if tokenizer is None:
        return lambda _: ""
    return lambda token_id: decode_token(tokenizer, token_id)


def _byte_of_character() -> dict[str, int]:
    """Byte-level BPE's alphabet: printable Latin-1 bytes stand for themselves, the rest for 256 + k."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + k): byte for k, byte in enumerate(others)}


_BYTE_OF_CHARACTER = _byte_of_character()


def _best_first(position: PositionLogprobs) -> list[tuple[int, Logprob]]:
    return sorted(position.items(), key=lambda item: (item[1].rank, -item[1].logprob))


def _token_text(token_id: int, logprob: Logprob | None, decode: Decode) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return decode(token_id)


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else MIN_LOGPROB
