"""The cluster's OpenAI-compatible front door: the router's own app and Gateway, run as a Ray Serve deployment.

Each model is one "backend" of the router: its deployment's route on Ray Serve's HTTP proxy, which is on every
node. So the router's model routing, queue bound (429), retries before the first byte and metrics apply as
they do in `lmserve router`, while Ray Serve balances each model's requests over its replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from lmserve.cluster.config import ClusterConfig, IngressConfig
from lmserve.cluster.deployment import model_route_prefix
from lmserve.cluster.metrics import ClusterMetrics
from lmserve.cluster.status import read_deployments
from lmserve.router.app import build_app
from lmserve.router.config import RouterConfig, config_from_mapping
from lmserve.router.gateway import Gateway

INGRESS_APPLICATION = "lmserve"
STATUS_POLL_INTERVAL_S = 1.0

logger = logging.getLogger("lmserve.cluster")


@serve.ingress()
class Ingress:
    """One ingress replica: a Gateway (started by the router app's lifespan) and a task that polls Ray Serve
    for the replica counts shown on /metrics."""

    def __init__(self, router_config: RouterConfig) -> None:
        self.gateway = Gateway(router_config)
        self.cluster_metrics = ClusterMetrics(self.gateway.metrics.registry)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.gateway)

    async def _poll(self) -> None:
        while True:
            try:
                self.cluster_metrics.observe(await asyncio.to_thread(read_deployments))
            except Exception as error:  # noqa: BLE001 - the controller restarting must not end the metrics
                logger.warning("cannot read Ray Serve's deployments: %r", error)
            await asyncio.sleep(STATUS_POLL_INTERVAL_S)

    def __del__(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._poller.cancel()


def build_router_config(config: ClusterConfig) -> RouterConfig:
    """The router's config: each model's one backend is its deployment's route on the local Ray Serve proxy.

    As that backend stands for all the model's replicas, it may take as many requests at once as the model's
    replicas can at their largest, and a failed request is retried on it after a pause (Ray Serve then picks
    another replica), unless `ingress.router` says otherwise.
    """
    ingress = config.ingress
    base = f"http://{_local_host(ingress)}:{ingress.port}"
    models = {model.name: {"backends": [base + model_route_prefix(model.name)]} for model in config.models}
    capacity = max(model.autoscaling.max_replicas * model.max_ongoing_requests for model in config.models)
    # A request whose replica died gets its 5xx from Ray Serve's proxy until Ray drops that replica (a second or
    # so): retry after a pause, as Ray Serve then picks another, and keep the model's one backend in service.
    defaults = {"max_outstanding_per_backend": capacity, "max_retries": 4, "retry_backoff": 0.5,
                "eject_on_failure": False}
    document = {**defaults, **ingress.router, "models": models, "routes": ingress.routes}
    return config_from_mapping(document, "ingress")


def build_ingress_application(config: ClusterConfig) -> Application:
    deployment = serve.deployment(Ingress).options(
        name="ingress", num_replicas=config.ingress.num_replicas, ray_actor_options={"num_cpus": 0}
    )
    return deployment.bind(build_router_config(config))


def _local_host(ingress: IngressConfig) -> str:
    """Where an ingress replica reaches the proxy on its own node."""
    return "127.0.0.1" if ingress.host in ("0.0.0.0", "::", "localhost") else ingress.host
