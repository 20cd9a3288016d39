"""How a request wants its tokens chosen and when it wants to stop."""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field

from lmserve.errors import InvalidRequestError

_MAX_LOGPROBS = 20
_GREEDY_TEMPERATURE = 1e-5
# The sampler divides and multiplies float32 logits by these: beyond float32's range they become inf or 0, and
# inf * 0 or -inf / inf is NaN, which an argmax takes over every token.
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32
_INTEGER_FIELDS = ("n", "top_k", "seed", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs")
_OPTIONAL_FIELDS = {"seed", "max_tokens", "logprobs", "prompt_logprobs"}


class RequestOutputKind(enum.Enum):
    """What each output of a request carries while it runs."""

    CUMULATIVE = 0  # everything generated so far
    DELTA = 1  # only what is new since the last output
    FINAL_ONLY = 2  # nothing until the request finishes


@dataclass
class SamplingParams:
    """Per-request sampling and stopping options; the names and defaults follow OpenAI and vLLM.

    `temperature == 0` means greedy. `seed` makes a request's samples depend only on the seed and the
    request's own tokens. `logprobs` and `prompt_logprobs` ask for that many top alternatives per
    position (0: only the chosen token's).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(token): float(bias) for token, bias in (self.logit_bias or {}).items()}
        self.validate()

    @property
    def greedy(self) -> bool:
        """Temperatures this small would overflow the scaled logits; they mean greedy anyway."""
        return self.temperature < _GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        """Penalties read the tokens generated so far, so sampling must wait for the previous step."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def validate(self) -> None:
        """Raise InvalidRequestError naming the first invalid field; integer fields become Python ints, and a
        top_k of 0 becomes -1 (off, as in vLLM and Hugging Face's generation configs)."""
        for name in _INTEGER_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_FIELDS:
                continue
            try:
                if isinstance(value, bool):
                    raise TypeError
                setattr(self, name, operator.index(value))  # ints and numpy ints, not 2.0 or "2"
            except TypeError:
                raise InvalidRequestError(f"{name} must be an integer, got {value!r}") from None
        if self.top_k == 0:
            self.top_k = -1
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (0.0 <= self.temperature <= _FLOAT32_MAX,
             f"temperature must be >= 0 and finite in float32, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k == -1 or 1 <= self.top_k < 2**31,
             f"top_k must be 0 or -1 (off) or in [1, 2**31), got {self.top_k}"),
            (self.seed is None or -(2**63) <= self.seed < 2**63, f"seed must fit in 64 bits, got {self.seed}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (_FLOAT32_TINY <= self.repetition_penalty <= _FLOAT32_MAX,
             f"repetition_penalty must be > 0 and a normal float32, got {self.repetition_penalty}"),
            (-2.0 <= self.frequency_penalty <= 2.0,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (-2.0 <= self.presence_penalty <= 2.0,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (self.max_tokens is None or 1 <= self.max_tokens < 2**63,
             f"max_tokens must be at least 1 and fit in 64 bits, got {self.max_tokens}"),
            (0 <= self.min_tokens < 2**63,
             f"min_tokens must be non-negative and fit in 64 bits, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"),
            (self.logprobs is None or 0 <= self.logprobs <= _MAX_LOGPROBS,
             f"logprobs must be in [0, {_MAX_LOGPROBS}], got {self.logprobs}"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= _MAX_LOGPROBS,
             f"prompt_logprobs must be in [0, {_MAX_LOGPROBS}], got {self.prompt_logprobs}"),
            (all(s for s in self.stop), "stop strings must not be empty"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be non-negative"),
            (all(-100.0 <= b <= 100.0 for b in self.logit_bias.values()), "logit_bias values must be in [-100, 100]"),
            (all(t >= 0 for t in self.logit_bias), "logit_bias keys must be non-negative token ids"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
