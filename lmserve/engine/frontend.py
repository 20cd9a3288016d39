"""Input and output processing around an engine core, wherever that core runs."""

from __future__ import annotations

import time
from typing import Any

from lmserve.config import EngineConfig
from lmserve.engine.messages import EngineCoreOutput, EngineCoreRequest
from lmserve.errors import InvalidRequestError
from lmserve.inputs.processor import InputProcessor, Prompt
from lmserve.inputs.tokenizer import load_tokenizer
from lmserve.output_processing import OutputProcessor, ProcessedOutputs
from lmserve.sampling_params import SamplingParams


class Frontend:
    """Turns requests into engine-core requests and engine-core outputs back into RequestOutputs.

    The in-process `LLMEngine` and the server's `AsyncEngine` both use it; only how they reach the
    engine core differs.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer: Any | None = None if config.model.skip_tokenizer_init else load_tokenizer(config.model.model)
        self.input_processor = InputProcessor(config, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)

    def default_sampling_params(self) -> SamplingParams:
        return self.input_processor.default_sampling_params()

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> list[EngineCoreRequest]:
        """Validate and track a request; return the engine-core requests to send (one per sample)."""
        if request_id in self.output_processor.request_ids():
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params = params or self.default_sampling_params()
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        processed = self.input_processor.process(request_id, prompt, params, arrival_time, priority)
        child_ids = [core_request.request_id for core_request in processed.core_requests]
        self.output_processor.add_request(
            request_id, processed.prompt, processed.prompt_token_ids, params, arrival_time, child_ids
        )
        return processed.core_requests

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; return the engine-core ids to abort."""
        return self.output_processor.abort_request(request_id)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        return self.output_processor.process(outputs)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()
