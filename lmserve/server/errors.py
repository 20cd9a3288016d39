"""The one place where errors become HTTP responses, all with an OpenAI-style error body."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmserve.errors import (
    EngineDeadError,
    InvalidRequestError,
    LmserveError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerOverloadedError,
)

RETRY_AFTER_SECONDS = 1

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: list[tuple[type[LmserveError], HTTPStatus]] = [
    (ModelNotFoundError, HTTPStatus.NOT_FOUND),
    (InvalidRequestError, HTTPStatus.BAD_REQUEST),
    (ServerOverloadedError, HTTPStatus.TOO_MANY_REQUESTS),
    (RequestTimeoutError, HTTPStatus.REQUEST_TIMEOUT),
    (EngineDeadError, HTTPStatus.SERVICE_UNAVAILABLE),
]


class ServerError(LmserveError):
    """An HTTP-level refusal (authentication, body size, draining) with its status code."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: Exception) -> HTTPStatus:
    if isinstance(error, ServerError):
        return error.status
    for error_type, status in _STATUS:
        if isinstance(error, error_type):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_body(status: HTTPStatus, message: str) -> dict:
    """OpenAI's error shape: the `openai` client reads `error.message` and `error.type`."""
    error_type = "invalid_request_error" if status < 500 else "server_error"
    if status == HTTPStatus.UNAUTHORIZED:
        error_type = "authentication_error"
    elif status == HTTPStatus.TOO_MANY_REQUESTS:
        error_type = "rate_limit_error"
    return {"error": {"message": message, "type": error_type, "param": None, "code": int(status)}}


def error_payload(error: Exception) -> tuple[HTTPStatus, dict]:
    """The status and body for an error; unexpected errors do not leak their text."""
    status = status_of(error)
    message = str(error) if status < 500 or isinstance(error, LmserveError) else "internal server error"
    return status, error_body(status, message)


def error_response(error: Exception) -> JSONResponse:
    status, body = error_payload(error)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == HTTPStatus.TOO_MANY_REQUESTS else None
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_lmserve_error(_: Request, error: LmserveError) -> JSONResponse:
        return error_response(error)

    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ())[1:]) or 'body'}: {item.get('msg')}"
            for item in error.errors()
        )
        return JSONResponse(error_body(HTTPStatus.BAD_REQUEST, details), status_code=HTTPStatus.BAD_REQUEST)

    async def on_http_error(_: Request, error: HTTPException) -> JSONResponse:
        status = HTTPStatus(error.status_code)
        return JSONResponse(error_body(status, str(error.detail)), status_code=status, headers=error.headers)

    app.add_exception_handler(LmserveError, on_lmserve_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
