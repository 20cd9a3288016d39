"""The messages between the frontend (tokenizer, detokenizer) and the engine core (scheduler, model)."""

from __future__ import annotations

from dataclasses import dataclass

from lmserve.engine.scheduler_stats import SchedulerStats
from lmserve.outputs import FinishReason, PositionLogprobs
from lmserve.sampling_params import SamplingParams


@dataclass
class EngineCoreRequest:
    """A validated, tokenized request for one sample (the frontend fans n > 1 out into n of these)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: tuple[int, ...]
    arrival_time: float
    max_tokens: int  # already capped by the model's max length
    priority: int = 0
    cache_salt: str | None = None  # only requests with the same salt share prefix-cache blocks


@dataclass
class EngineCoreOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[PositionLogprobs] | None = None
    new_prompt_logprobs: list[PositionLogprobs | None] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineCoreOutputs:
    """One message from the engine core process: a step's outputs and the scheduler's state after it."""

    outputs: list[EngineCoreOutput]
    stats: SchedulerStats


@dataclass
class EngineCoreReady:
    """Sent once the engine core process has loaded the model and allocated the KV cache."""

    num_kv_blocks: int
