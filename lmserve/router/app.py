"""The router's FastAPI application: the proxied OpenAI endpoints, /v1/models, /health and /metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from lmserve.router.gateway import Gateway
from lmserve.router.replica_group import CATCH_ALL
from lmserve.router.request import ProxyRequest, parse_request
from lmserve.server.errors import error_body, install_error_handlers
from lmserve.server.streams import CLIENT_CLOSED_REQUEST, ClientDisconnected, until_disconnected

_STARTED = int(time.time())


def build_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="lmserve router", lifespan=lifespan)
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_api_route("/v1/completions", proxy, methods=["POST"])
    app.add_api_route("/v1/chat/completions", proxy, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app


async def proxy(request: Request) -> Response:
    proxy_request = parse_request("POST", request.url.path, await request.body(), dict(request.headers))
    return await _answer(request, proxy_request)


async def list_models(request: Request) -> Response:
    """The configured models, then the routes; a router configured with backends only asks one of its replicas."""
    gateway = _gateway(request)
    if list(gateway.groups) == [CATCH_ALL]:
        return await _answer(request, parse_request("GET", "/v1/models", b"", dict(request.headers)))
    names = gateway.model_router.served
    models = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "lmserve"} for name in names]
    return JSONResponse({"object": "list", "data": models})


async def health(request: Request) -> Response:
    """200 while every model has a healthy replica, else 503; both list each model's replicas' health."""
    groups = _gateway(request).groups.values()
    models = {
        group.name: {backend.url: "healthy" if backend.healthy else "ejected" for backend in group.backends}
        for group in groups
    }
    if all(group.has_healthy_backend for group in groups):
        return JSONResponse({"status": "ok", "models": models})
    down = ", ".join(group.name for group in groups if not group.has_healthy_backend)
    body = error_body(HTTPStatus.SERVICE_UNAVAILABLE, f"no healthy replica of {down}")
    return JSONResponse({**body, "models": models}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)


async def metrics(request: Request) -> Response:
    body, content_type = _gateway(request).metrics.render()
    return Response(body, media_type=content_type)


async def _answer(request: Request, proxy_request: ProxyRequest) -> Response:
    """Forward, unless the client leaves first: then its queued or in-flight request is cancelled."""
    try:
        return await until_disconnected(request, _gateway(request).handle(proxy_request))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway
