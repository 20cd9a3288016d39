"""The FastAPI application: middleware, error handlers, the API routers and the operational endpoints."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from lmserve.errors import EngineDeadError
from lmserve.server import openai_api, tgi_api
from lmserve.server.errors import ServerError, error_response, install_error_handlers
from lmserve.server.middleware import GatewayMiddleware
from lmserve.server.state import ServerState, server_state

_STARTED = int(time.time())


def build_app(state: ServerState) -> FastAPI:
    """An app whose lifespan starts the engine (the model loads before the port answers) and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        try:
            yield
        finally:
            state.engine.shutdown()

    app = FastAPI(title="lmserve", lifespan=lifespan)
    app.state.lmserve = state
    install_error_handlers(app)
    app.add_middleware(GatewayMiddleware)
    app.include_router(openai_api.router)
    app.include_router(tgi_api.router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    return app


async def health(request: Request) -> Response:
    """Liveness: the engine core process is up."""
    state = server_state(request)
    if not state.engine.is_healthy:
        return error_response(state.engine.dead_error or EngineDeadError("the engine core process is not running"))
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: alive, and not draining for shutdown."""
    state = server_state(request)
    if state.draining:
        return error_response(ServerError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down"))
    return await health(request)


async def metrics(request: Request) -> Response:
    body, content_type = server_state(request).metrics.render()
    return Response(body, media_type=content_type)


async def list_models(request: Request) -> JSONResponse:
    state = server_state(request)
    model = {
        "id": state.model_name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "lmserve",
        "root": state.engine.config.model.model,
        "max_model_len": state.engine.config.model.max_model_len,
    }
    return JSONResponse({"object": "list", "data": [model]})
