"""The gateway answers an unexpected error itself: a 500 with the OpenAI error shape, the request id, and the
status in the access log and metrics (Starlette's own handler sits outside the gateway and loses all three)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from lmserve.server.config import ServerConfig
from lmserve.server.errors import install_error_handlers
from lmserve.server.middleware import GatewayMiddleware


def test_an_unexpected_error_is_a_500_with_its_request_id_counted_and_logged(caplog) -> None:
    observed: list[int] = []
    app = FastAPI()
    app.state.lmserve = SimpleNamespace(draining=False, config=ServerConfig(), metrics=SimpleNamespace(
        observe_http=observed.append))
    install_error_handlers(app)
    app.add_middleware(GatewayMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a secret detail")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom", headers={"x-request-id": "trace-me"})

    with caplog.at_level(logging.INFO, logger="lmserve"):
        response = asyncio.run(call())

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me"
    assert response.json()["error"]["message"] == "internal server error"  # no detail leaks
    assert observed == [500]
    assert any(record.exc_info and "GET /boom" in record.getMessage() for record in caplog.records)
