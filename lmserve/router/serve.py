"""Run the router: uvicorn serving the router's app until SIGTERM/SIGINT."""

from __future__ import annotations

import uvicorn

from lmserve.router.app import build_app
from lmserve.router.config import RouterConfig
from lmserve.router.gateway import Gateway
from lmserve.server.logs import configure_logging, logger


def run_router(config: RouterConfig) -> None:
    configure_logging(config.log_format)
    server_config = uvicorn.Config(
        build_app(Gateway(config)),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        timeout_graceful_shutdown=config.drain_timeout,
    )
    for group in config.groups:
        logger.info("routing %s to %s (%s)", group.model or "every model", ", ".join(group.backends), group.policy)
    for route in config.routes:
        how = f"the {route.classifier.kind} classifier"
        if route.cascade is not None:
            how = f"a cascade (escalating below a mean logprob of {route.cascade.min_mean_logprob:g})"
        logger.info("routing %s to %s (simple) or %s (complex) by %s", route.name, route.simple, route.complex, how)
    logger.info("router listening on http://%s:%d", config.host, config.port)
    uvicorn.Server(server_config).run()
