"""`lmserve serve`: start the engine and the HTTP server; drain gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import FrameType

import uvicorn

from lmserve.config import EngineConfig
from lmserve.engine.async_engine import AsyncEngine
from lmserve.server.app import build_app
from lmserve.server.config import ServerConfig
from lmserve.server.logs import configure_logging, logger
from lmserve.server.metrics import ServerMetrics
from lmserve.server.state import ServerState


def run_server(engine_config: EngineConfig, server_config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT; return once drained (exit status 0)."""
    configure_logging(server_config.log_format)
    model_name = server_config.served_model_name or os.path.basename(os.path.normpath(engine_config.model.model))
    metrics = ServerMetrics(model_name)
    state = ServerState(AsyncEngine(engine_config, observer=metrics), server_config, model_name, metrics)
    config = uvicorn.Config(
        build_app(state),
        host=server_config.host,
        port=server_config.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        timeout_graceful_shutdown=1,  # requests have had drain_timeout already when uvicorn shuts down
    )
    logger.info("serving %s on http://%s:%d", model_name, server_config.host, server_config.port)
    DrainingServer(config, state).run()


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: refuse new requests (503), let in-flight ones finish for up to
    drain_timeout, then shut down. A second signal shuts down at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, this does not re-raise the signal after shutdown: a drained
        # server exits with status 0.
        if self.state.draining:
            self.force_exit = self.should_exit = True
            return
        self.state.draining = True
        logger.info("received %s: draining %d in-flight requests", signal.Signals(sig).name, len(self.state.in_flight))
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.state.config.drain_timeout
        while self.state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state.in_flight:
            logger.warning("drain timeout: %d requests still running are cancelled", len(self.state.in_flight))
        self.should_exit = True
