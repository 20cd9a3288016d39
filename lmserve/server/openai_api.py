"""The OpenAI-compatible API: /v1/completions and /v1/chat/completions, plus /tokenize and /detokenize.

A handler checks the body, starts its engine requests and takes their first outputs before it answers,
so that a refusal (429, 400, 503) becomes a proper error response. Then it answers with JSON, or streams
the rest as server-sent events. The stream helpers here serve the TGI API too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError

from lmserve.errors import InvalidRequestError, LmserveError
from lmserve.outputs import RequestOutput
from lmserve.server.errors import error_body, status_of
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

logger = logging.getLogger(__name__)
router = APIRouter()

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer; only logs see it
OutputStream = AsyncGenerator[RequestOutput, None]
T = TypeVar("T")


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """All prompts run concurrently; prompt p's sample s is choice `p * n + s`."""
    state = server_state(request)
    state.check_model(body.model)
    params = body.to_sampling_params(state.engine.default_sampling_params(), _max_model_len(state))
    header = ResponseHeader(new_request_id("cmpl"), state.model_name)
    prompts = body.prompts()
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
    prompt = tokenizer.encode(text, add_special_tokens=False)  # the template writes the special tokens
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
        tokens = tokenizer.encode(text, add_special_tokens=bool(body.add_special_tokens))
    else:
        tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
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
    try:
        return tokenizer.apply_chat_template(
            [message.to_template() for message in messages], add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except (ValueError, TemplateError) as error:  # no template, or the template refuses the conversation
        raise InvalidRequestError(f"cannot apply the model's chat template: {error}") from error


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


# ---- Running engine requests for a handler (shared with the TGI API) ------------------------------------


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, unless the client disconnects first: then cancel it (aborting its engine requests)
    and raise ClientDisconnected."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)  # let it abort and clean up
    if work_task in done:
        return work_task.result()
    raise ClientDisconnected


async def _wait_for_disconnect(request: Request) -> None:
    # The body was read already, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def first_outputs(streams: list[OutputStream]) -> list[RequestOutput]:
    """Every stream's first output, taken concurrently; on a failure, close every stream and raise it."""
    tasks = [asyncio.ensure_future(anext(stream)) for stream in streams]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(streams)
        raise


async def final_outputs(streams: list[OutputStream]) -> list[RequestOutput]:
    """Like first_outputs, for FINAL_ONLY streams, whose first output is their last."""
    try:
        return await first_outputs(streams)
    finally:
        await _close(streams)  # frees their admission slots now


async def merge_outputs(
    firsts: list[RequestOutput], streams: list[OutputStream]
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(stream index, output): the first outputs, then every later output of every stream as it comes.

    Closing this iterator (a client disconnect) or a failing stream aborts every stream.
    """
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: OutputStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as error:
            queue.put_nowait((index, error))
            return
        queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        for index, first in enumerate(firsts):
            yield index, first
        num_running = len(tasks)
        while num_running:
            index, item = await queue.get()
            if item is None:
                num_running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(streams)


async def _close(streams: list[OutputStream]) -> None:
    for stream in streams:
        await stream.aclose()


def openai_error_event(error: Exception) -> dict[str, Any]:
    """A failure after the response started, in the error body a response would have had."""
    status = status_of(error)
    message = str(error) if status < 500 or isinstance(error, LmserveError) else "internal server error"
    return error_body(status, message)


def event_stream(
    events: AsyncIterator[dict[str, Any]],
    error_event: Callable[[Exception], dict[str, Any]] = openai_error_event,
    done_marker: bool = True,
) -> StreamingResponse:
    """Server-sent events, one `data: {json}` per event; a failure mid-stream becomes a last error event.

    Starlette cancels the iterator when the client disconnects, which aborts the engine requests.
    """
    return StreamingResponse(
        _server_sent_events(events, error_event, done_marker),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _server_sent_events(
    events: AsyncIterator[dict[str, Any]], error_event: Callable[[Exception], dict[str, Any]], done_marker: bool
) -> AsyncIterator[str]:
    async with contextlib.aclosing(events):
        try:
            async for event in events:
                yield _encode_event(event)
        except Exception as error:  # the status line is sent already: the error can only be an event
            if not isinstance(error, LmserveError):
                logger.exception("a streamed response failed")
            yield _encode_event(error_event(error))
    if done_marker:
        yield "data: [DONE]\n\n"


def _encode_event(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'), allow_nan=False)}\n\n"


def _tokenizer(state: ServerState) -> Any:
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise InvalidRequestError("this server runs without a tokenizer: send prompts as token ids")
    return tokenizer



def _max_model_len(state: ServerState) -> int:
    return state.engine.config.model.max_model_len
