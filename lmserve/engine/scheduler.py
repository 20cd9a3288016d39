"""Continuous batching: each step, choose which requests compute how many tokens.

One rule covers prefill, chunked prefill, decode and recompute: a request needs the tokens between its
`num_computed_tokens` and its `num_tokens`. Each step hands out a token budget, running decodes first,
then running prefill chunks, then waiting requests; a prompt longer than what is left of the budget
simply continues in the next step.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from lmserve.config import SchedulerConfig
from lmserve.engine.kv_cache_manager import KVCacheManager
from lmserve.engine.request import Request, RequestStatus
from lmserve.engine.scheduler_stats import SchedulerStats


@dataclass
class SchedulerOutput:
    """The batch of one step, in the order the model runner lays out its tokens.

    Request i computes its tokens `num_computed_tokens[i]` to `num_computed_tokens[i] + num_new_tokens[i]`
    (the counts as they were before this step) and samples a token if `samples[i]`.
    """

    requests: list[Request]
    num_new_tokens: list[int]
    num_computed_tokens: list[int]
    samples: list[bool]
    block_ids: list[list[int]]
    finished_request_ids: set[str] = field(default_factory=set)  # left since the last step

    @property
    def total_num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    """Owns the waiting and running queues, ordered by (priority, arrival)."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.requests: dict[str, Request] = {}
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.finished_request_ids: set[str] = set()
        self.num_preemptions = 0

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        bisect.insort(self.waiting, request, key=_sort_key)

    def abort_request(self, request_id: str) -> Request | None:
        """Stop a request wherever it is and free its blocks; None if it is unknown or already done."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        queue = self.running if request.status == RequestStatus.RUNNING else self.waiting
        queue.remove(request)
        self._finish(request, RequestStatus.FINISHED_ABORTED)
        return request

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: dict[str, int] = {}
        preempted = False

        # Running requests, decodes before prefill chunks, each side by priority and arrival.
        for request in sorted(self.running, key=lambda r: r.num_tokens_with_pending - r.num_computed_tokens > 1):
            if budget == 0:
                break
            if request.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens_with_pending - request.num_computed_tokens, budget)
            if num_new == 0 or request.num_output_tokens + request.num_pending_tokens >= request.max_tokens:
                continue  # its last token is being sampled by the step in flight
            while not self.kv_cache.allocate(request, num_new):
                victim = self.running[-1]
                budget += scheduled.pop(victim.request_id, 0)
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                scheduled[request.request_id] = num_new
                budget -= num_new

        # Waiting requests, unless this step had to preempt (they would only be preempted again).
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            request = self.waiting[0]
            cached = self.kv_cache.find_cached_prefix(request)
            num_cached = len(cached) * self.kv_cache.block_size
            num_new = min(request.num_tokens_with_pending - num_cached, budget)
            if not self.kv_cache.allocate(request, num_new, cached):
                break
            self.waiting.pop(0)
            self.kv_cache.record_lookup(request.num_tokens, num_cached)
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            bisect.insort(self.running, request, key=_sort_key)
            scheduled[request.request_id] = num_new
            budget -= num_new

        requests = [self.requests[request_id] for request_id in scheduled]
        num_computed = [request.num_computed_tokens for request in requests]
        samples = []
        for request, num_new in zip(requests, scheduled.values(), strict=True):
            # Computed as soon as scheduled: the next step may be scheduled before this one's result is in.
            request.num_computed_tokens += num_new
            reaches_end = request.num_computed_tokens == request.num_tokens_with_pending
            samples.append(reaches_end)
            request.num_pending_tokens += reaches_end
        output = SchedulerOutput(
            requests=requests,
            num_new_tokens=list(scheduled.values()),
            num_computed_tokens=num_computed,
            samples=samples,
            block_ids=[self.kv_cache.block_ids(request_id) for request_id in scheduled],
            finished_request_ids=self.finished_request_ids,
        )
        self.finished_request_ids = set()
        return output

    def update_from_output(self, output: SchedulerOutput, sampled: list[int | None]) -> list[Request]:
        """Give each request the token its step sampled; return those that finished.

        A request may have been preempted since (its token is kept for the recompute) or finished (the
        token is dropped): with steps overlapped, the next step was scheduled before this result came.
        """
        finished = []
        for request, token in zip(output.requests, sampled, strict=True):
            if token is None:
                continue
            request.num_pending_tokens -= 1
            if request.status.finished:
                continue
            request.append_token(token)
            status = _stop_status(request, token)
            if status is not None:
                queue = self.running if request.status == RequestStatus.RUNNING else self.waiting
                queue.remove(request)
                self._finish(request, status)
                finished.append(request)
        return finished

    def stats(self) -> SchedulerStats:
        pool = self.kv_cache.pool
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            num_used_blocks=pool.num_used_blocks,
            num_total_blocks=pool.num_blocks,
            prefix_cache_queries=self.kv_cache.stats.queries,
            prefix_cache_hits=self.kv_cache.stats.hits,
            num_preemptions=self.num_preemptions,
        )

    def _preempt(self, request: Request) -> None:
        """Free a running request's blocks and queue it to be recomputed; its tokens so far are kept."""
        self.running.remove(request)
        self.kv_cache.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        bisect.insort(self.waiting, request, key=_sort_key)
        self.num_preemptions += 1

    def _finish(self, request: Request, status: RequestStatus) -> None:
        self.kv_cache.free(request)
        request.status = status
        del self.requests[request.request_id]
        self.finished_request_ids.add(request.request_id)


def _sort_key(request: Request) -> tuple[int, float]:
    return request.sort_key


def _stop_status(request: Request, token: int) -> RequestStatus | None:
    """Token-level stopping: EOS, a stop token id, or the length limit. Stop strings are the frontend's."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        if token in request.eos_token_ids and not params.ignore_eos:
            return RequestStatus.FINISHED_STOPPED
        if token in params.stop_token_ids:
            request.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
    if request.num_output_tokens >= request.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    return None
