"""Turns engine-core outputs back into RequestOutputs: text, stop strings, logprobs, n samples joined."""

from __future__ import annotations

import time
from collections.abc import Iterable, KeysView
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerFast

from lmserve.engine.messages import EngineCoreOutput
from lmserve.errors import InvalidRequestError
from lmserve.output_processing.detokenizer import IncrementalDetokenizer, decode_token
from lmserve.output_processing.sample_state import SampleState
from lmserve.output_processing.stop_checker import StopChecker
from lmserve.outputs import PositionLogprobs, RequestMetrics, RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class ProcessedOutputs:
    """What one batch of engine-core outputs gives back to the frontend."""

    request_outputs: list[RequestOutput] = field(default_factory=list)
    # Child request ids a stop string finished while the engine core still runs them: abort them there.
    requests_to_abort: list[str] = field(default_factory=list)


class _RequestState:
    """A request as the caller sees it: its prompt, its n samples and its metrics."""

    def __init__(
        self,
        request_id: str,
        child_ids: list[str],
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        tokenizer: PreTrainedTokenizerFast | None,
    ) -> None:
        self.request_id = request_id
        self.child_ids = child_ids  # the engine-core request of sample i is child_ids[i]
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.output_kind = params.output_kind
        self.tokenizer = tokenizer
        stop_checker = StopChecker(params.stop, params.include_stop_str_in_output) if params.stop else None
        self.samples = [
            SampleState(index, self._detokenizer(params), stop_checker, wants_logprobs=params.logprobs is not None,
                        min_tokens=params.min_tokens)
            for index in range(params.n)
        ]
        self.prompt_logprobs: list[PositionLogprobs | None] | None = (
            None if params.prompt_logprobs is None else []
        )
        self.metrics = RequestMetrics(arrival_time=arrival_time, num_prompt_tokens=len(prompt_token_ids))
        self.finished = False  # whether every sample has finished
        self._num_sent_prompt_logprobs = 0

    def update(self, index: int, output: EngineCoreOutput, now: float) -> bool:
        """Take sample `index`'s step output; True when a stop string ended it before the engine did."""
        metrics = self.metrics
        if output.new_token_ids:
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
        if output.first_scheduled_time is not None and (
            metrics.first_scheduled_time is None or output.first_scheduled_time < metrics.first_scheduled_time
        ):
            metrics.first_scheduled_time = output.first_scheduled_time
        # The samples share the prompt; report the best prefix-cache hit among them.
        if output.num_cached_tokens > metrics.num_cached_tokens:
            metrics.num_cached_tokens = output.num_cached_tokens
        # Every sample computes the same prompt logprobs; keep the first sample's.
        if index == 0 and self.prompt_logprobs is not None and output.new_prompt_logprobs:
            self._fill_decoded_tokens(output.new_prompt_logprobs)
            self.prompt_logprobs.extend(output.new_prompt_logprobs)
        if output.new_logprobs:
            self._fill_decoded_tokens(output.new_logprobs)
        sample = self.samples[index]
        num_tokens_before = len(sample.token_ids)
        stopped_early = sample.update(output)
        metrics.num_generation_tokens += len(sample.token_ids) - num_tokens_before
        if sample.finished:
            self.finished = all(other.finished for other in self.samples)
            if self.finished:
                metrics.finished_time = now
        return stopped_early

    def request_output(self) -> RequestOutput | None:
        """The output its output_kind asks for now, or None when there is nothing to report."""
        if self.output_kind is RequestOutputKind.FINAL_ONLY and not self.finished:
            return None
        samples = [sample for sample in self.samples if sample.has_news]
        if not samples:
            return None
        delta = self.output_kind is RequestOutputKind.DELTA
        if not delta:
            samples = self.samples
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[sample.completion_output(delta) for sample in samples],
            finished=self.finished,
            prompt_logprobs=self._prompt_logprobs_to_send(delta),
            metrics=RequestMetrics(**vars(self.metrics)),  # a snapshot: later steps must not change it
            num_cached_tokens=self.metrics.num_cached_tokens,
        )

    def _detokenizer(self, params: SamplingParams) -> IncrementalDetokenizer | None:
        if self.tokenizer is None:
            return None
        return IncrementalDetokenizer(self.tokenizer, self.prompt_token_ids, params.skip_special_tokens)

    def _fill_decoded_tokens(self, positions: Iterable[PositionLogprobs | None]) -> None:
        if self.tokenizer is None:
            return
        for position in positions:
            for token_id, logprob in (position or {}).items():
                logprob.decoded_token = decode_token(self.tokenizer, token_id)

    def _prompt_logprobs_to_send(self, delta: bool) -> list[PositionLogprobs | None] | None:
        if self.prompt_logprobs is None:
            return None
        if not delta:
            return list(self.prompt_logprobs)
        new = self.prompt_logprobs[self._num_sent_prompt_logprobs :]
        self._num_sent_prompt_logprobs = len(self.prompt_logprobs)
        return new or None


class OutputProcessor:
    """Keeps every running request's output state; joins the n child requests of a request into one output.

    Without a tokenizer, texts stay empty and stop strings are refused.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast | None) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}
        self._children: dict[str, tuple[_RequestState, int]] = {}  # child request id -> (request, index)

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        child_request_ids: list[str],
    ) -> None:
        """Start tracking a request; child_request_ids[i] is the engine-core request of sample i."""
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; use stop_token_ids instead")
        if len(child_request_ids) != params.n:
            raise ValueError(f"a request with n={params.n} needs {params.n} child ids, not {len(child_request_ids)}")
        if any(key in self._requests or key in self._children for key in [request_id, *child_request_ids]):
            raise InvalidRequestError(f"request id {request_id!r} or one of its child ids is already in use")
        state = _RequestState(
            request_id, child_request_ids, prompt, prompt_token_ids, params, arrival_time, self.tokenizer
        )
        self._requests[request_id] = state
        for index, child_id in enumerate(child_request_ids):
            self._children[child_id] = (state, index)

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; return the child ids the engine core may still be running."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return []
        return [child_id for child_id in state.child_ids if self._children.pop(child_id, None) is not None]

    def request_ids(self) -> KeysView[str]:
        """The ids of the requests being tracked (an id can be reused once its request is forgotten)."""
        return self._requests.keys()

    def has_unfinished_requests(self) -> bool:
        """Whether some request still waits for outputs (finished and aborted ones are forgotten)."""
        return bool(self._requests)

    def process(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        """Apply one step's outputs; return the request outputs to deliver and the children to abort."""
        now = time.monotonic()
        processed = ProcessedOutputs()
        updated: dict[str, _RequestState] = {}
        for output in outputs:
            located = self._children.get(output.request_id)
            if located is None:  # aborted, or already finished by a stop string
                continue
            state, index = located
            if state.update(index, output, now):
                processed.requests_to_abort.append(output.request_id)
            if state.samples[index].finished:
                del self._children[output.request_id]
            updated[state.request_id] = state
        for state in updated.values():
            request_output = state.request_output()
            if request_output is not None:
                processed.request_outputs.append(request_output)
            if state.finished:
                del self._requests[state.request_id]
        return processed
