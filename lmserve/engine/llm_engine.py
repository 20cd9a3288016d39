"""The in-process engine: input processing, the engine core and output processing, stepped together."""

from __future__ import annotations

import time
from typing import Any

from lmserve.config import EngineConfig
from lmserve.engine.core import EngineCore
from lmserve.engine.scheduler import SchedulerStats
from lmserve.errors import InvalidRequestError
from lmserve.inputs.processor import InputProcessor, Prompt
from lmserve.inputs.tokenizer import load_tokenizer
from lmserve.output_processing import OutputProcessor
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import SamplingParams


class LLMEngine:
    """The API a serving loop drives: add and abort requests, `step()` for their new outputs."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = None if config.model.skip_tokenizer_init else load_tokenizer(config.model.model)
        self.input_processor = InputProcessor(config, self.tokenizer)
        self.core = EngineCore(config)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_options(cls, model: str, **options: Any) -> LLMEngine:
        return cls(EngineConfig.from_options(model, **options))

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        if request_id in self.output_processor.request_ids():
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params = params or self.input_processor.default_sampling_params()
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        processed = self.input_processor.process(request_id, prompt, params, arrival_time, priority)
        child_ids = [core_request.request_id for core_request in processed.core_requests]
        self.output_processor.add_request(
            request_id, processed.prompt, processed.prompt_token_ids, params, arrival_time, child_ids
        )
        for core_request in processed.core_requests:
            self.core.add_request(core_request)

    def abort_request(self, request_id: str) -> None:
        """Stop a request and all its samples; its KV blocks are freed at once."""
        self.core.abort_requests(self.output_processor.abort_request(request_id))

    def step(self) -> list[RequestOutput]:
        """Run one engine step; return an output for each request that has news under its output kind."""
        processed = self.output_processor.process(self.core.step())
        self.core.abort_requests(processed.requests_to_abort)
        return processed.request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def stats(self) -> SchedulerStats:
        return self.core.stats()
