"""One sample of a request, as the output processor sees it: tokens, text and logprobs so far."""

from __future__ import annotations

from lmserve.engine.messages import EngineCoreOutput
from lmserve.output_processing.detokenizer import IncrementalDetokenizer
from lmserve.output_processing.stop_checker import StopChecker
from lmserve.outputs import CompletionOutput, FinishReason, PositionLogprobs


class SampleState:
    """Accumulates one child request's outputs and remembers how much a DELTA stream has already sent.

    As in vLLM, stop strings count only after `min_tokens` tokens, in the text that comes after theirs.
    """

    def __init__(
        self,
        index: int,
        detokenizer: IncrementalDetokenizer | None,
        stop_checker: StopChecker | None,
        wants_logprobs: bool,
        min_tokens: int = 0,
    ) -> None:
        self.index = index
        self.detokenizer = detokenizer
        self.stop_checker = stop_checker
        self.min_tokens = min_tokens
        # Where a stop string may start in the text: after the first min_tokens tokens' text; None before those.
        self._stop_search_start: int | None = 0 if min_tokens == 0 else None
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[PositionLogprobs] | None = [] if wants_logprobs else None
        self.cumulative_logprob: float | None = 0.0 if wants_logprobs else None
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        self.has_news = False  # new tokens or a finish since the last output was built
        self._num_sent_tokens = 0
        self._num_sent_chars = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def update(self, output: EngineCoreOutput) -> bool:
        """Take one step's output; True when a stop string ended the sample before the engine did.

        With stop strings, tokens are taken one at a time, so those after a stop string are dropped;
        without, a step's tokens are taken all at once.
        """
        new_token_ids = output.new_token_ids
        if new_token_ids:
            self.has_news = True
            if self.stop_checker is not None:
                if self._add_tokens_until_stop(output):
                    return not output.finished
            else:
                self.token_ids += new_token_ids
                if self.logprobs is not None and output.new_logprobs is not None:
                    for position, token_id in enumerate(new_token_ids):
                        self._add_logprobs(token_id, output.new_logprobs[position])
                if self.detokenizer is not None:
                    self.text += self.detokenizer.add_tokens(new_token_ids)
        if output.finish_reason is not None:
            self.has_news = True
            if self.detokenizer is not None and self._add_text(self.detokenizer.flush()):
                return False
            self.finish_reason = output.finish_reason
            self.stop_reason = output.stop_reason
        return False

    def _add_tokens_until_stop(self, output: EngineCoreOutput) -> bool:
        """Take the step's tokens one at a time; True when one completes a stop string."""
        for position, token_id in enumerate(output.new_token_ids):
            self.token_ids.append(token_id)
            if self.logprobs is not None and output.new_logprobs is not None:
                self._add_logprobs(token_id, output.new_logprobs[position])
            if self.detokenizer is not None and self._add_text(self.detokenizer.add_tokens([token_id])):
                return True
            if len(self.token_ids) == self.min_tokens:
                self._stop_search_start = len(self.text)
        return False

    def _add_logprobs(self, token_id: int, position_logprobs: PositionLogprobs) -> None:
        self.logprobs.append(position_logprobs)
        self.cumulative_logprob += position_logprobs[token_id].logprob

    def _add_text(self, new_text: str) -> bool:
        """Append text; on a stop string, cut the text there, finish and return True."""
        self.text += new_text
        if self.stop_checker is None or not new_text or self._stop_search_start is None:
            return False
        match = self.stop_checker.find(self.text, len(new_text), self._stop_search_start)
        if match is None:
            return False
        self.text = match.text
        self.finish_reason = "stop"
        self.stop_reason = match.stop
        return True

    def completion_output(self, delta: bool) -> CompletionOutput:
        """Everything so far, or (delta) only what the previous delta output did not carry.

        Until the sample finishes, text that may start a stop string is held back.
        """
        self.has_news = False
        num_visible_chars = len(self.text)
        if self.stop_checker is not None and not self.finished and self._stop_search_start is not None:
            num_visible_chars -= self.stop_checker.num_held_back_chars(self.text, self._stop_search_start)
        first_token = self._num_sent_tokens if delta else 0
        first_char = self._num_sent_chars if delta else 0
        if delta:
            self._num_sent_tokens = len(self.token_ids)
            self._num_sent_chars = num_visible_chars
        return CompletionOutput(
            index=self.index,
            text=self.text[first_char:num_visible_chars],
            token_ids=self.token_ids[first_token:],
            cumulative_logprob=self.cumulative_logprob,
            logprobs=None if self.logprobs is None else self.logprobs[first_token:],
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )
