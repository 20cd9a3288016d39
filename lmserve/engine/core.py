"""The engine core loop: schedule a step, run it on the model, advance the requests, report."""

from __future__ import annotations

from lmserve.config import EngineConfig
from lmserve.engine.kv_cache_manager import KVCacheManager
from lmserve.engine.messages import EngineCoreOutput, EngineCoreRequest
from lmserve.engine.request import Request
from lmserve.engine.scheduler import Scheduler, SchedulerOutput, SchedulerStats
from lmserve.outputs import PositionLogprobs
from lmserve.worker.model_runner import LaunchedStep, ModelRunner, PromptLogprobsChunk


class EngineCore:
    """Works on token ids only; tokenizing, detokenizing and stop strings belong to the frontend.

    With `async_scheduling`, a step's GPU work overlaps the host work around it: `step` launches step k,
    and only then waits for step k-1's tokens and turns them into outputs, so the host schedules and
    prepares while the device computes.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        num_blocks = self.runner.determine_num_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        self.scheduler = Scheduler(config.scheduler, KVCacheManager(num_blocks, config.cache.block_size))
        self._in_flight: tuple[SchedulerOutput, LaunchedStep] | None = None

    def add_request(self, core_request: EngineCoreRequest) -> None:
        self.scheduler.add_request(Request(core_request))

    def abort_requests(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.scheduler.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def step(self) -> list[EngineCoreOutput]:
        """Run one iteration of continuous batching; return what requests got from the last finished step."""
        batch = self.scheduler.schedule()
        launched = self.runner.launch(batch)
        outputs = self._complete() if self._in_flight is not None else []
        self._in_flight = (batch, launched)
        if not self.config.scheduler.async_scheduling:
            outputs += self._complete()
        return outputs

    def _complete(self) -> list[EngineCoreOutput]:
        """Wait for the step in flight; advance its requests and report what they got."""
        batch, launched = self._in_flight
        self._in_flight = None
        result = launched.result()
        live = [not request.status.finished for request in batch.requests]  # finished ones drop their token
        self.scheduler.update_from_output(batch, result.sampled_token_ids)
        outputs = []
        for index, request in enumerate(batch.requests):
            if not live[index]:
                continue
            token = result.sampled_token_ids[index]
            prompt_logprobs = _new_prompt_logprobs(request, result.prompt_logprobs[index])
            if token is None and not prompt_logprobs:
                continue
            logprobs = result.logprobs[index]
            outputs.append(
                EngineCoreOutput(
                    request_id=request.request_id,
                    new_token_ids=[] if token is None else [token],
                    new_logprobs=None if logprobs is None else [logprobs],
                    new_prompt_logprobs=prompt_logprobs,
                    finish_reason=request.status.finish_reason,
                    stop_reason=request.stop_reason,
                    num_cached_tokens=request.num_cached_tokens,
                    first_scheduled_time=request.first_scheduled_time,
                )
            )
        return outputs


def _new_prompt_logprobs(
    request: Request, chunk: PromptLogprobsChunk | None
) -> list[PositionLogprobs | None] | None:
    """The prompt logprobs not yet sent; a recomputation after preemption sends nothing twice."""
    sent = request.num_prompt_logprobs_sent
    if request.sampling_params.prompt_logprobs is None or sent == request.num_prompt_tokens:
        return None
    new: list[PositionLogprobs | None] = [None] if sent == 0 else []  # the first token has no context
    if chunk is not None:
        new += chunk.positions[max(sent, 1) - chunk.first_index :]
    request.num_prompt_logprobs_sent += len(new)
    return new
