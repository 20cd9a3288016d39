"""A client's request as the router handles it: parsed once into what routing, queueing and forwarding need."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from lmserve.errors import InvalidRequestError

PRIORITY_HEADER = "x-priority"
REQUEST_ID_HEADER = "x-request-id"
# Never forwarded: they describe one connection, or the body the router may rewrite. accept-encoding goes
# too, so replicas answer uncompressed and the router can read usage from streams.
HOP_BY_HOP_HEADERS = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-connection", "accept-encoding",
})


@dataclass
class ProxyRequest:
    """What the router forwards, and what it knows of it."""

    method: str
    path: str
    raw: bytes = b""  # the body as the client sent it
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # those to forward, with a request id
    priority: int = 0  # lower is served first, as in `lmserve serve`
    stream: bool = False
    client_wants_usage: bool = False  # the client asked for stream_options.include_usage itself
    # The route that chose the model (`"model": "auto"`), whose saving the answer counts; None for a cascade's
    # first try, whose saving is known only once the cascade has judged it.
    route: str | None = None

    @property
    def request_id(self) -> str:
        return self.headers[REQUEST_ID_HEADER]

    def routed_to(self, model: str, route: str | None) -> ProxyRequest:
        """This request with `model` in its body in place of the route's name: a replica answers only for its own."""
        return self.with_body({**self.body, "model": model}, route)

    def with_body(self, body: dict[str, Any], route: str | None) -> ProxyRequest:
        """This request with another body (whether it streams read from it), its saving counted for `route`."""
        raw = json.dumps(body, ensure_ascii=False).encode()
        return dataclasses.replace(self, raw=raw, body=body, stream=body.get("stream") is True, route=route)

    def upstream_body(self) -> bytes:
        """The body sent to a replica. A stream always asks for its usage chunk, so the router can count
        tokens; the router strips that chunk again when the client did not ask for it."""
        if not self.stream or self.client_wants_usage:
            return self.raw
        options = self.body.get("stream_options")
        options = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        return json.dumps({**self.body, "stream_options": options}, ensure_ascii=False).encode()


def parse_request(method: str, path: str, raw: bytes, headers: dict[str, str]) -> ProxyRequest:
    """Parse a request's JSON body (POST) and its priority (the body's `priority`, else X-Priority)."""
    forwarded = {name.lower(): value for name, value in headers.items() if name.lower() not in HOP_BY_HOP_HEADERS}
    forwarded.setdefault(REQUEST_ID_HEADER, uuid.uuid4().hex)
    if method != "POST":
        return ProxyRequest(method, path, headers=forwarded)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"the request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    priority = body.get("priority")
    if priority is None:
        priority = _integer(forwarded.get(PRIORITY_HEADER, "0"), f"header {PRIORITY_HEADER}")
    elif not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidRequestError(f"priority must be an integer, got {priority!r}")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ProxyRequest(method, path, raw, body, forwarded, priority, stream, wants_usage)


def prefix_key(body: dict[str, Any], chars: int) -> str | None:
    """The first `chars` characters of the prompt (the first prompt of a batch; token ids as text) or of
    the messages rendered as "role: content" lines; None when the body has neither."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        prompt = " ".join(str(token) for token in prompt)
    if isinstance(prompt, str):
        return prompt[:chars]
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        return "\n".join(_render_message(message) for message in messages)[:chars]
    return None


def _render_message(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: the text parts, in order
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return f"{message.get('role')}: {content}"


def _integer(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}") from None
