"""The in-process engine: the frontend and the engine core, stepped together in one loop."""

from __future__ import annotations

from typing import Any

from lmserve.config import EngineConfig
from lmserve.engine.core import EngineCore
from lmserve.engine.frontend import Frontend
from lmserve.engine.scheduler import SchedulerStats
from lmserve.inputs.processor import Prompt
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import SamplingParams


class LLMEngine:
    """The API a serving loop drives: add and abort requests, `step()` for their new outputs."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.frontend = Frontend(config)
        self.core = EngineCore(config)

    @classmethod
    def from_options(cls, model: str, **options: Any) -> LLMEngine:
        return cls(EngineConfig.from_options(model, **options))

    @property
    def tokenizer(self) -> Any | None:
        return self.frontend.tokenizer

    def default_sampling_params(self) -> SamplingParams:
        """Sampling values from the model's generation_config.json, where it sets them."""
        return self.frontend.default_sampling_params()

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        for core_request in self.frontend.add_request(request_id, prompt, params, priority, arrival_time):
            self.core.add_request(core_request)

    def abort_request(self, request_id: str) -> None:
        """Stop a request and all its samples; its KV blocks are freed at once."""
        self.core.abort_requests(self.frontend.abort_request(request_id))

    def step(self) -> list[RequestOutput]:
        """Run one engine step; return an output for each request that has news under its output kind."""
        processed = self.frontend.process_outputs(self.core.step())
        self.core.abort_requests(processed.requests_to_abort)
        return processed.request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.frontend.has_unfinished_requests()

    def stats(self) -> SchedulerStats:
        return self.core.stats()
