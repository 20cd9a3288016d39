"""The gate every HTTP request passes before a handler: request id, draining, API keys, body size, metrics,
and the answer to an unexpected error.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, so streamed responses and client
disconnects pass through untouched.
"""

from __future__ import annotations

import hmac
import time
import uuid
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmserve.server.errors import ServerError, error_response
from lmserve.server.logs import log_access, logger, request_id_var

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
REQUEST_ID_HEADER = b"x-request-id"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.lmserve
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.monotonic()
        status_holder = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode("latin-1"))]
            await send(message)

        try:
            refusal = self._refusal(state, scope["path"], headers)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_with_id)
            else:
                await self._call_with_body_limit(state, scope, receive, send_with_id)
        except Exception as error:  # a bug: answered here, so the 500 has its request id, log line and count
            if status_holder[0]:
                raise  # the response had started; the server closes the connection
            logger.exception("unexpected error in %s %s", scope["method"], scope["path"])
            await error_response(error)(scope, receive, send_with_id)
        finally:
            state.metrics.observe_http(status_holder[0])
            log_access(scope["method"], scope["path"], status_holder[0], time.monotonic() - started)
            request_id_var.reset(token)

    @staticmethod
    def _refusal(state, path: str, headers: dict[bytes, bytes]) -> ServerError | None:
        is_open = path in OPEN_PATHS
        if state.draining and not is_open:
            return ServerError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down")
        if state.config.api_key and not (is_open and state.config.open_health_and_metrics):
            if not _key_matches(headers, state.config.api_key):
                return ServerError(HTTPStatus.UNAUTHORIZED, "missing or invalid API key")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > state.config.max_request_body_bytes:
            return _too_large(state)
        return None

    async def _call_with_body_limit(self, state, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the body as it arrives, for clients that send no Content-Length or lie in it."""
        limit = state.config.max_request_body_bytes
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException from body reading; the error handlers shape it.
                    raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _too_large(state).args[0])
            return message

        await self.app(scope, counting_receive, send)


def _key_matches(headers: dict[bytes, bytes], keys: list[str]) -> bool:
    """Compare the bearer token with every key in constant time, so timing reveals nothing."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return False
    matches = [hmac.compare_digest(token, key.encode()) for key in keys]
    return any(matches)


def _too_large(state) -> ServerError:
    limit = state.config.max_request_body_bytes
    return ServerError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body exceeds {limit} bytes")
