"""The OpenAI-compatible API: /v1/completions and /v1/chat/completions, plus /tokenize and /detokenize.

A handler checks the body, starts its engine requests and takes their first outputs before it answers,
so that a refusal (429, 400, 503) becomes a proper error response. Then it answers with JSON, or streams
the rest as server-sent events (see streams.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lmserve.errors import InvalidRequestError
from lmserve.inputs.chat import render_chat
from lmserve.inputs.tokenizer import encode_text
from lmserve.outputs import RequestOutput
from lmserve.server.openai_protocol import (
    ChatChoices,
    ChatCompletionRequest,
    ChatMessage,
    CompletionChoices,
    CompletionRequest,
    DetokenizeRequest,
    ResponseHeader,
    TokenizeRequest,
    chat_chunk_choice,
)
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



@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """All prompts run concurrently; prompt p's sample s is choice `p * n + s`."""
    state = server_state(request)
    state.check_model(body.model)
    params = body.to_sampling_params(state.engine.default_sampling_params(), _max_model_len(state))
    header = ResponseHeader(new_request_id("cmpl"), state.model_name)
    prompts = body.prompts()
    if len(prompts) > state.capacity:  # each prompt is a request: such a batch would be told to retry forever
        raise InvalidRequestError(f"{len(prompts)} prompts are more than this server takes at once "
                                  f"({state.capacity} requests); send at most {state.capacity}")
    request_ids = [header.id] if len(prompts) == 1 else [f"{header.id}-{index}" for index in range(len(prompts))]
    streams = [
        state.generate(request, request_id, prompt, params, body.priority)
        for request_id, prompt in zip(request_ids, prompts, strict=True)
    ]
    try:
        firsts = await until_disconnected(request, first_outputs(streams) if body.stream else final_outputs(streams))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    choices = CompletionChoices(body, state.engine.tokenizer)
    if body.stream:
        return event_stream(_completion_events(header, choices, merge_outputs(firsts, streams), body.include_usage))
    all_choices = [choice for index, output in enumerate(firsts) for choice in choices.add(index, output)]
    return JSONResponse(header.body("text_completion", all_choices, usage=choices.usage()))


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    tokenizer = _tokenizer(state)
    text = chat_prompt(tokenizer, body.messages, body.add_generation_prompt)
    prompt = encode_text(tokenizer, text, add_special_tokens=False)  # the template writes the special tokens
    params = body.to_sampling_params(state.engine.default_sampling_params(), _max_model_len(state))
    header = ResponseHeader(new_request_id("chatcmpl"), state.model_name)
    streams = [state.generate(request, header.id, prompt, params, body.priority)]
    try:
        firsts = await until_disconnected(request, first_outputs(streams) if body.stream else final_outputs(streams))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    choices = ChatChoices(body, tokenizer)
    if body.stream:
        return event_stream(_chat_events(header, choices, merge_outputs(firsts, streams), body.n, body.include_usage))
    return JSONResponse(header.body("chat.completion", choices.add_final(firsts[0]), usage=choices.usage()))


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """A prompt's tokens as the completions API counts them, or messages' as the chat API does."""
    state = server_state(request)
    state.check_model(body.model)
    tokenizer = _tokenizer(state)
    if body.messages is not None:
        text = chat_prompt(tokenizer, body.messages, body.add_generation_prompt)
        tokens = encode_text(tokenizer, text, add_special_tokens=bool(body.add_special_tokens))
    else:
        tokens = encode_text(tokenizer, body.prompt, add_special_tokens=body.add_special_tokens is not False)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": _max_model_len(state)}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = server_state(request)
    state.check_model(body.model)
    tokenizer = _tokenizer(state)
    vocab_size = state.engine.config.model.vocab_size
    if any(not 0 <= token < vocab_size for token in body.tokens):
        raise InvalidRequestError(f"tokens holds a token id outside the vocabulary [0, {vocab_size})")
    return {"prompt": tokenizer.decode(body.tokens)}


def chat_prompt(tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool) -> str:
    """The conversation formatted by the model's chat template."""
    return render_chat(tokenizer, [message.to_template() for message in messages], add_generation_prompt)


async def _completion_events(
    header: ResponseHeader, choices: CompletionChoices, outputs: AsyncIterator[tuple[int, RequestOutput]],
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    extra = {"usage": None} if include_usage else {}
    async for prompt_index, output in outputs:
        for choice in choices.add(prompt_index, output):
            yield header.body("text_completion", [choice], **extra)
    if include_usage:
        yield header.body("text_completion", [], usage=choices.usage())


async def _chat_events(
    header: ResponseHeader, choices: ChatChoices, outputs: AsyncIterator[tuple[int, RequestOutput]], n: int,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's order: each choice's role first, then its content deltas, then its finish reason alone."""
    extra = {"usage": None} if include_usage else {}

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return header.body("chat.completion.chunk", [choice], **extra)

    for index in range(n):
        yield chunk(chat_chunk_choice(index, {"role": "assistant", "content": ""}))
    async for _, output in outputs:
        choices.count(output)
        for sample in output.outputs:
            logprobs = choices.logprobs(sample)
            if sample.text or (logprobs and logprobs["content"]):
                yield chunk(chat_chunk_choice(sample.index, {"content": sample.text}, logprobs))
            if sample.finish_reason is not None:
                yield chunk(chat_chunk_choice(sample.index, {}, finish_reason=sample.finish_reason))
    if include_usage:
        yield header.body("chat.completion.chunk", [], usage=choices.usage())


def _tokenizer(state: ServerState) -> Any:
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise InvalidRequestError("this server runs without a tokenizer: send prompts as token ids")
    return tokenizer



def _max_model_len(state: ServerState) -> int:
    return state.engine.config.model.max_model_len
