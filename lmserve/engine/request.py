"""A request's state inside the engine core: its tokens, its progress and its status."""

from __future__ import annotations

import enum

from lmserve.engine.messages import EngineCoreRequest
from lmserve.outputs import FinishReason


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS: dict[RequestStatus, FinishReason] = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One sequence being generated.

    The scheduler's single rule rests on two counts: `num_tokens` (prompt plus output so far) and
    `num_computed_tokens` (those whose KV is in the cache, or being computed by a step in flight).
    Prefill, chunked prefill, decode and recompute after preemption are all "compute the tokens between
    the two". With the step overlapped, a token sampled by the step in flight is not known yet: it is
    counted in `num_pending_tokens` (0 or 1), and the next step can already compute it, since the model
    runner feeds it from the device.
    """

    def __init__(self, core_request: EngineCoreRequest) -> None:
        self.request_id = core_request.request_id
        self.sampling_params = core_request.sampling_params
        self.eos_token_ids = core_request.eos_token_ids
        self.arrival_time = core_request.arrival_time
        self.priority = core_request.priority
        self.max_tokens = core_request.max_tokens
        self.cache_salt = core_request.cache_salt
        self.prompt_token_ids = list(core_request.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.token_ids = list(self.prompt_token_ids)  # prompt then output
        self.num_computed_tokens = 0
        self.num_pending_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit length at first schedule; -1 until then
        self.num_prompt_logprobs_sent = 0  # so recomputation after preemption does not repeat them
        self.block_hashes: list[bytes] = []
        self.status = RequestStatus.WAITING
        self.stop_reason: int | None = None
        self.first_scheduled_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens_with_pending(self) -> int:
        return len(self.token_ids) + self.num_pending_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def sort_key(self) -> tuple[int, float]:
        """Lower runs first; the highest key is preempted first (lowest priority, latest arrival)."""
        return (self.priority, self.arrival_time)

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, tokens={self.num_tokens}, pending={self.num_pending_tokens}, "
            f"computed={self.num_computed_tokens}, {self.status.name})"
        )
