"""The Hugging Face TGI API: /generate, /generate_stream, / and /info, with TGI's field names and semantics.

TGI decodes greedily unless `do_sample` is set or a sampling option (temperature other than 1, top_k,
top_p below 1) asks for sampling; its outputs keep the stop sequence that ended them.
"""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from lmserve.errors import InvalidRequestError
from lmserve.inputs.tokenizer import encode_text
from lmserve.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from lmserve.sampling_params import RequestOutputKind, SamplingParams
from lmserve.server.errors import error_payload
from lmserve.server.openai_protocol import MAX_LOGPROBS, MAX_STOP_STRINGS
from lmserve.server.state import ServerState, new_request_id, server_state
from lmserve.server.streams import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnected,
    event_stream,
    final_outputs,
    first_outputs,
    merge_outputs,
    until_disconnected,
)

router = APIRouter()

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's


class GenerateParameters(BaseModel):
    """TGI's `parameters`; watermark and adapter_id are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    do_sample: bool = False
    max_new_tokens: int | None = Field(None, lt=2**63)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    truncate: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool | None = None
    top_n_tokens: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    grammar: Any = None
    watermark: bool = False

    @property
    def samples(self) -> bool:
        """TGI samples when asked to, or when any sampling option is set to something that changes the logits."""
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or self.top_k is not None
            or (self.top_p is not None and self.top_p < 1.0)
        )

    def to_sampling_params(self, stream: bool) -> SamplingParams:
        """The engine's params; a sampled request without a seed gets a random one, which details report."""
        if self.best_of is not None and self.best_of > 1:
            raise InvalidRequestError("best_of > 1 is not supported")
        if self.typical_p is not None and self.typical_p < 1.0:
            raise InvalidRequestError("typical_p is not supported")
        if self.grammar is not None:
            raise InvalidRequestError("grammar is not supported")
        if stream and self.decoder_input_details:
            raise InvalidRequestError("decoder_input_details is not supported when streaming")
        seed = None
        if self.samples:
            seed = self.seed if self.seed is not None else random.randrange(2**63)
        # Token events and details carry each token's logprob; top_n_tokens asks for alternatives too.
        wants_logprobs = stream or self.details
        return SamplingParams(
            temperature=(self.temperature or 1.0) if self.samples else 0.0,
            top_k=self.top_k or -1,
            top_p=self.top_p or 1.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=seed,
            max_tokens=DEFAULT_MAX_NEW_TOKENS if self.max_new_tokens is None else self.max_new_tokens,
            stop=self.stop,
            include_stop_str_in_output=True,
            logprobs=(self.top_n_tokens or 0) if wants_logprobs else None,
            prompt_logprobs=0 if self.decoder_input_details else None,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False  # read by `POST /` only


@router.post("/")
async def compat_generate(body: GenerateRequest, request: Request) -> Response:
    """TGI's root route, which Hugging Face's InferenceClient calls: a list of one answer, or the stream."""
    if body.stream:
        return await generate_stream(body, request)
    response = await generate(body, request)
    if response.status_code != 200:
        return response
    return Response(b"[" + response.body + b"]", media_type="application/json")


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    state = server_state(request)
    parameters = body.parameters
    params = parameters.to_sampling_params(stream=False)
    streams = [state.generate(request, new_request_id("generate"), _prompt(state, body), params)]
    try:
        [final] = await until_disconnected(request, final_outputs(streams))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    sample = final.outputs[0]
    tokens = _Tokens(state.engine.tokenizer)
    answer: dict[str, Any] = {"generated_text": _prefix(body) + sample.text}
    if parameters.details:
        answer["details"] = {
            "finish_reason": finish_reason(sample),
            "generated_tokens": len(sample.token_ids),
            "seed": params.seed,
            "prefill": tokens.prefill(final) if parameters.decoder_input_details else [],
            "tokens": [tokens.token(t, p) for t, p in zip(sample.token_ids, sample.logprobs or [], strict=True)],
        }
        if parameters.top_n_tokens:
            answer["details"]["top_tokens"] = [tokens.top(position, parameters.top_n_tokens)
                                               for position in sample.logprobs or []]
    return JSONResponse(answer)


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request) -> Response:
    """One event per generated token; the last also carries the whole text and, if asked, the details."""
    state = server_state(request)
    params = body.parameters.to_sampling_params(stream=True)
    streams = [state.generate(request, new_request_id("generate"), _prompt(state, body), params)]
    try:
        firsts = await until_disconnected(request, first_outputs(streams))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    events = _token_events(body, params, _Tokens(state.engine.tokenizer), merge_outputs(firsts, streams))
    return event_stream(events, error_event=_error_event, done_marker=False)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    model = state.engine.config.model
    return {
        "model_id": state.model_name,
        "model_sha": None,
        "model_dtype": str(model.torch_dtype).removeprefix("torch."),
        "model_device_type": state.engine.config.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": state.capacity,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_STRINGS,
        "max_input_tokens": model.max_model_len - 1,
        "max_total_tokens": model.max_model_len,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "lmserve",
        "version": _version(),
        "sha": None,
        "docker_label": None,
    }


def finish_reason(sample: CompletionOutput) -> str:
    """TGI's names: a stop string ends with "stop_sequence", an EOS or stop token with "eos_token"."""
    if sample.finish_reason == "length":
        return "length"
    return "stop_sequence" if isinstance(sample.stop_reason, str) else "eos_token"


async def _token_events(
    body: GenerateRequest, params: SamplingParams, tokens: _Tokens, outputs: AsyncIterator[tuple[int, RequestOutput]]
) -> AsyncIterator[dict[str, Any]]:
    parameters = body.parameters
    text = _prefix(body)
    num_tokens = 0
    async for _, output in outputs:
        sample = output.outputs[0]
        text += sample.text
        positions = sample.logprobs or []
        for position_index, (token_id, position) in enumerate(zip(sample.token_ids, positions, strict=True)):
            is_last = position_index == len(sample.token_ids) - 1
            token = tokens.token(token_id, position)
            # An output's text goes with its last token, so the token texts join to the generated text.
            token["text"] = sample.text if is_last else ""
            event: dict[str, Any] = {"index": num_tokens, "token": token, "generated_text": None, "details": None,
                                     "top_tokens": None}
            num_tokens += 1
            if parameters.top_n_tokens:
                event["top_tokens"] = tokens.top(position, parameters.top_n_tokens)
            if is_last and sample.finished:
                event["generated_text"] = text
                if parameters.details:
                    event["details"] = {"finish_reason": finish_reason(sample), "generated_tokens": num_tokens,
                                        "seed": params.seed, "input_length": len(output.prompt_token_ids)}
            yield event


class _Tokens:
    """TGI's token objects: id, text, logprob and whether the token is special."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self.special_ids = set(tokenizer.all_special_ids) if tokenizer is not None else set()

    def token(self, token_id: int, position: PositionLogprobs | None) -> dict[str, Any]:
        logprob = None if position is None else position.get(token_id)
        return {"id": token_id, "text": self._text(token_id, logprob),
                "logprob": None if logprob is None else logprob.logprob, "special": token_id in self.special_ids}

    def top(self, position: PositionLogprobs, num_top: int) -> list[dict[str, Any]]:
        best = sorted(position.items(), key=lambda item: item[1].rank)[:num_top]
        return [self.token(token_id, position) for token_id, _ in best]

    def prefill(self, output: RequestOutput) -> list[dict[str, Any]]:
        positions = output.prompt_logprobs or []
        positions = positions + [None] * (len(output.prompt_token_ids) - len(positions))
        return [
            {key: value for key, value in self.token(token_id, position).items() if key != "special"}
            for token_id, position in zip(output.prompt_token_ids, positions, strict=False)
        ]

    def _text(self, token_id: int, logprob: Logprob | None) -> str:
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([token_id])


def _prompt(state: ServerState, body: GenerateRequest) -> str | list[int]:
    """The inputs, or with `truncate` their last tokens."""
    truncate = body.parameters.truncate
    if truncate is None:
        return body.inputs
    if state.engine.tokenizer is None:
        raise InvalidRequestError("truncate needs a tokenizer, and this server runs without one")
    return encode_text(state.engine.tokenizer, body.inputs)[-truncate:]


def _prefix(body: GenerateRequest) -> str:
    return body.inputs if body.parameters.return_full_text else ""


def _error_event(error: Exception) -> dict[str, Any]:
    """TGI's error shape: {"error": message, "error_type": kind}."""
    status, body = error_payload(error)
    kinds = {400: "validation", 429: "overloaded", 408: "timeout"}
    return {"error": body["error"]["message"], "error_type": kinds.get(int(status), "generation")}


def _version() -> str:
    try:
        return importlib.metadata.version("lmserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
