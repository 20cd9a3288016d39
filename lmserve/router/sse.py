"""A replica's server-sent events on their way to the client: cut into whole events, usage read from the
final usage chunk, and that chunk stripped when the router (not the client) asked for it. And a whole answer
written as the stream a replica would have sent, for answers the router checks before the client sees them."""

from __future__ import annotations

import json
from typing import Any

from lmserve.server.openai_protocol import ResponseHeader, chat_chunk_choice, completion_choice

EVENT_END = b"\n\n"
DATA = b"data: "
DONE_EVENT = b"data: [DONE]\n\n"


class EventRelay:
    """Feed it the bytes of a stream as they come; it returns the whole events to pass on now.

    With `strip_usage` (the router added stream_options.include_usage upstream), the usage-only chunk is
    dropped and the `"usage": null` field of the others removed, so the client sees what it asked for.
    """

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        *events, self._pending = (self._pending + data).split(EVENT_END)
        return b"".join(self._relay(event + EVENT_END) for event in events)

    def flush(self) -> bytes:
        """What is left when the stream ends (an event without its blank line), passed on as it is."""
        rest, self._pending = self._pending, b""
        return rest

    def _relay(self, event: bytes) -> bytes:
        if b'"usage"' not in event or not event.startswith(DATA):
            return event
        try:
            chunk = json.loads(event[len(DATA) :])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return event
        if not isinstance(chunk, dict) or "usage" not in chunk:
            return event
        if isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        if not self.strip_usage:
            return event
        if not chunk.get("choices"):
            return b""  # the usage chunk itself
        del chunk["usage"]
        return encode_event(chunk)


def answer_as_stream(answer: dict[str, Any], chat: bool, include_usage: bool) -> bytes:
    """A whole (not streamed) answer as `lmserve serve` would have streamed it: for chat each choice's role, content
    (with its logprobs) and finish reason as three chunks, for completions one chunk a choice; then the usage chunk
    when the client asked for it, and [DONE]."""
    header = ResponseHeader(answer.get("id", ""), answer.get("model", ""), answer.get("created", 0))
    object_name = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if include_usage else {}
    choices = []
    for choice in answer.get("choices") or []:
        index, logprobs, finish_reason = choice.get("index", 0), choice.get("logprobs"), choice.get("finish_reason")
        if chat:
            content = (choice.get("message") or {}).get("content") or ""
            choices += [
                chat_chunk_choice(index, {"role": "assistant", "content": ""}),
                chat_chunk_choice(index, {"content": content}, logprobs),
                chat_chunk_choice(index, {}, finish_reason=finish_reason),
            ]
        else:
            choices.append(completion_choice(index, choice.get("text", ""), logprobs, finish_reason))
    events = [encode_event(header.body(object_name, [choice], **extra)) for choice in choices]
    if include_usage:
        events.append(encode_event(header.body(object_name, [], usage=answer.get("usage"))))
    return b"".join(events) + DONE_EVENT


def encode_event(chunk: dict[str, Any]) -> bytes:
    return DATA + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + EVENT_END
