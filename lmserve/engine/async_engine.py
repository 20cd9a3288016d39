"""The server's engine: the frontend in this process, the engine core in its own, outputs as async streams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from lmserve.config import EngineConfig
from lmserve.engine.core_client import EngineCoreClient
from lmserve.engine.frontend import Frontend
from lmserve.engine.messages import EngineCoreOutput
from lmserve.engine.scheduler_stats import SchedulerStats
from lmserve.errors import EngineDeadError, RequestTimeoutError
from lmserve.inputs.processor import Prompt
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class StepObserver(Protocol):
    """Sees every engine step as its outputs arrive (metrics use this)."""

    def on_step(self, outputs: list[EngineCoreOutput], stats: SchedulerStats, now: float) -> None: ...

    def on_request_finished(self, output: RequestOutput) -> None: ...

    def on_request_aborted(self) -> None: ...


class AsyncEngine:
    """`generate()` yields a request's outputs as the engine core produces them.

    One background task receives each step's outputs, turns them into RequestOutputs (detokenizing, stop
    strings) and hands each to its request's queue. A request whose consumer goes away (client
    disconnect, timeout) is aborted, which frees its KV blocks in the engine core.
    """

    def __init__(self, config: EngineConfig, observer: StepObserver | None = None) -> None:
        self.config = config
        self.frontend = Frontend(config)
        self.client = EngineCoreClient(config)
        self.observer = observer
        self.stats: SchedulerStats | None = None
        self.dead_error: EngineDeadError | None = None
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._output_task: asyncio.Task | None = None

    @property
    def tokenizer(self) -> Any | None:
        return self.frontend.tokenizer

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._queues)

    @property
    def is_healthy(self) -> bool:
        return self.dead_error is None and self.client.is_alive()

    def default_sampling_params(self) -> SamplingParams:
        return self.frontend.default_sampling_params()

    async def start(self) -> None:
        await self.client.start()
        self.client.watch_death(self._on_engine_death)
        self._output_task = asyncio.create_task(self._receive_outputs(), name="lmserve-outputs")
        self._output_task.add_done_callback(self._on_output_task_done)

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs (as its params' output_kind says) until it finishes.

        Invalid input raises InvalidRequestError before anything is queued; a request still running
        `timeout` seconds after it started is aborted with RequestTimeoutError.
        """
        if self.dead_error is not None:
            raise self.dead_error
        core_requests = self.frontend.add_request(request_id, prompt, params, priority)
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        try:
            self.client.add_requests(core_requests)
        except BaseException:
            self._queues.pop(request_id)
            self.frontend.abort_request(request_id)
            raise
        deadline = None if timeout is None else time.monotonic() + timeout
        finished = False
        try:
            while not finished:
                item = await self._next(queue, deadline)
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if self._queues.get(request_id) is queue:  # a later request may reuse the id once this one finished
                del self._queues[request_id]
            if not finished:
                self.abort(request_id)
                if self.observer is not None:
                    self.observer.on_request_aborted()

    @staticmethod
    async def _next(queue: asyncio.Queue, deadline: float | None) -> RequestOutput | BaseException:
        if deadline is None:
            return await queue.get()
        try:
            return await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise RequestTimeoutError("the request ran past its timeout and was aborted") from None

    def abort(self, request_id: str) -> None:
        """Stop a request wherever it is; safe to call for unknown or finished requests, or a dead engine."""
        child_ids = self.frontend.abort_request(request_id)
        if self.dead_error is None:
            try:
                self.client.abort_requests(child_ids)
            except EngineDeadError:
                pass  # the engine is gone, and its requests with it

    def shutdown(self) -> None:
        if self._output_task is not None:
            self._output_task.cancel()
        self.client.shutdown()

    async def _receive_outputs(self) -> None:
        while True:
            message = await self.client.get_outputs()
            now = time.monotonic()
            processed = self.frontend.process_outputs(message.outputs)
            self.client.abort_requests(processed.requests_to_abort)
            self.stats = message.stats
            if self.observer is not None:
                self.observer.on_step(message.outputs, message.stats, now)
            for output in processed.request_outputs:
                if output.finished and self.observer is not None:
                    self.observer.on_request_finished(output)
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)

    def _on_output_task_done(self, task: asyncio.Task) -> None:
        """Without its output loop the engine can serve nothing: treat a crash there like a dead engine."""
        if not task.cancelled() and task.exception() is not None and self.dead_error is None:
            logger.error("the output loop failed", exc_info=task.exception())
            self._fail_all(EngineDeadError(f"the engine's output loop failed: {task.exception()!r}"))

    def _on_engine_death(self) -> None:
        """Fail every in-flight request at once; later requests fail fast with the same error."""
        self.client.process.join(timeout=1.0)  # reap it, so its exit code is known
        self._fail_all(EngineDeadError(f"the engine core process died (exit code {self.client.process.exitcode})"))
        if self._output_task is not None:
            self._output_task.cancel()

    def _fail_all(self, error: EngineDeadError) -> None:
        self.dead_error = error
        for queue in self._queues.values():
            queue.put_nowait(error)
