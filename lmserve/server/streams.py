"""Running engine requests for an HTTP handler: first outputs before answering, client disconnects,
merging several requests' outputs, and server-sent events. Shared by the OpenAI and TGI APIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmserve.errors import LmserveError
from lmserve.outputs import RequestOutput
from lmserve.server.errors import error_payload

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer; only logs see it
OutputStream = AsyncGenerator[RequestOutput, None]
T = TypeVar("T")



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
    return error_payload(error)[1]


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


# Characters that JSON leaves raw but that clients splitting with str.splitlines (httpx's iter_lines, for one)
# take for line ends, cutting an event in two; escaped, they decode to the same string.
_LINE_BREAKS_IN_TEXT = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _encode_event(event: dict[str, Any]) -> str:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"data: {data.translate(_LINE_BREAKS_IN_TEXT)}\n\n"
