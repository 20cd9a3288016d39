"""Server-sent events through the router: whole events pass on as they come, usage is read, and the usage
chunk the router asked for is stripped."""

from __future__ import annotations

import json

from lmserve.router.sse import EventRelay

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def event(body: dict | str) -> bytes:
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))  # as lmserve
    return f"data: {data}\n\n".encode()


def stream(include_usage: bool) -> list[bytes]:
    extra = {"usage": None} if include_usage else {}
    events = [event({"id": "c", "choices": [{"text": "Hé"}], **extra}), event({"id": "c", "choices": [{"text": "!"}],
                                                                               **extra})]
    if include_usage:
        events.append(event({"id": "c", "choices": [], "usage": USAGE}))
    return [*events, event("[DONE]")]


def relay_all(relay: EventRelay, data: bytes, piece: int) -> bytes:
    out = b"".join(relay.feed(data[start : start + piece]) for start in range(0, len(data), piece))
    return out + relay.flush()


def test_events_pass_on_whole_however_the_bytes_are_cut() -> None:
    data = b"".join(stream(include_usage=False))
    for piece in (1, 7, len(data)):
        relay = EventRelay(strip_usage=False)
        assert relay_all(relay, data, piece) == data
        assert relay.usage is None


def test_an_event_passes_on_as_soon_as_it_is_whole() -> None:
    relay = EventRelay(strip_usage=False)
    first = stream(include_usage=False)[0]
    assert relay.feed(first[:-1]) == b""
    assert relay.feed(first[-1:]) == first


def test_usage_the_client_asked_for_passes_on_and_is_counted() -> None:
    data = b"".join(stream(include_usage=True))
    relay = EventRelay(strip_usage=False)
    assert relay_all(relay, data, 5) == data
    assert relay.usage == USAGE


def test_usage_the_router_asked_for_is_counted_and_stripped() -> None:
    relay = EventRelay(strip_usage=True)
    out = relay_all(relay, b"".join(stream(include_usage=True)), 3)
    assert relay.usage == USAGE
    assert out == b"".join(stream(include_usage=False))


def test_a_cut_off_last_event_is_flushed_as_it_is() -> None:
    relay = EventRelay(strip_usage=True)
    assert relay.feed(b'data: {"choi') == b""
    assert relay.flush() == b'data: {"choi'
