"""The offline API: `LLM(model_dir).generate(prompts, params)` runs a batch to completion in-process."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from lmserve.engine.llm_engine import LLMEngine
from lmserve.errors import InvalidRequestError
from lmserve.inputs.chat import render_chat
from lmserve.inputs.processor import Prompt
from lmserve.inputs.tokenizer import encode_text
from lmserve.outputs import RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams

Message = dict[str, Any]


class LLM:
    """A model loaded for batch generation; engine options are the fields of lmserve's config classes."""

    def __init__(self, model: str, **engine_options: Any) -> None:
        self.engine = LLMEngine.from_options(model, **engine_options)
        self._request_counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The model's generation_config.json sampling values; used when `generate` gets no params."""
        return self.engine.default_sampling_params()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in prompt order."""
        prompts = _as_prompt_list(prompts)
        params = _as_params_list(sampling_params or self.get_default_sampling_params(), len(prompts))
        priorities = list(priority) if priority is not None else [0] * len(prompts)
        if len(priorities) != len(prompts):
            raise InvalidRequestError(f"{len(priorities)} priorities given for {len(prompts)} prompts")
        request_ids = []
        try:
            for prompt, request_params, request_priority in zip(prompts, params, priorities, strict=True):
                request_id = str(next(self._request_counter))
                final_only = dataclasses.replace(request_params, output_kind=RequestOutputKind.FINAL_ONLY)
                self.engine.add_request(request_id, prompt, final_only, priority=request_priority)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:  # a bad prompt leaves nothing of the batch behind
                self.engine.abort_request(request_id)
            raise
        return self._run(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to conversations, formatted with the model's chat template."""
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise InvalidRequestError("chat needs a tokenizer, and this LLM was started without one")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        texts = [render_chat(tokenizer, c, add_generation_prompt, chat_template) for c in conversations]
        prompts = [encode_text(tokenizer, text, add_special_tokens=False) for text in texts]  # the template wrote them
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm) as progress:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        progress.update(1)
        return [finished[request_id] for request_id in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InvalidRequestError("no prompts given")
    return prompts


def _as_params_list(params: SamplingParams | Sequence[SamplingParams], count: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise InvalidRequestError(f"{len(params)} sampling params given for {count} prompts")
    return params
