"""A replica's server-sent events on their way to the client: cut into whole events, usage read from the
final usage chunk, and that chunk stripped when the router (not the client) asked for it."""

from __future__ import annotations

import json
from typing import Any

EVENT_END = b"\n\n"
DATA = b"data: "


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
        return DATA + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + EVENT_END
