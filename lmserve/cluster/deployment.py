"""A model's Ray Serve deployment: each replica runs lmserve's engine behind the same FastAPI app as
`lmserve serve`, so the OpenAI (and TGI) protocol is handled by the server's own code."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from lmserve.cluster.config import ModelDeploymentConfig
from lmserve.config import EngineConfig
from lmserve.engine.async_engine import AsyncEngine
from lmserve.errors import EngineDeadError
from lmserve.server.app import build_app
from lmserve.server.metrics import ServerMetrics
from lmserve.server.state import ServerState

MODEL_ROUTE_PREFIX = "/_lmserve/models/"  # each model's deployment answers under this prefix and its name
HEALTH_CHECK_PERIOD_S = 2.0  # how often Ray Serve asks a replica whether its engine lives; a dead one is replaced


def model_route_prefix(name: str) -> str:
    return MODEL_ROUTE_PREFIX + name


@serve.ingress()
class ModelReplica:
    """One replica: an engine and the server's app. Ray Serve runs the app's lifespan, which starts the engine
    (its core process) before the replica takes requests, and stops it when the replica goes."""

    def __init__(self, config: ModelDeploymentConfig) -> None:
        from lmserve.models.default import DEFAULT_MODEL_DIR

        model = config.model or DEFAULT_MODEL_DIR
        engine_config = EngineConfig.from_options(model, device=config.device, **config.engine)
        metrics = ServerMetrics(config.name)
        engine = AsyncEngine(engine_config, observer=metrics)
        self.state = ServerState(engine, config.server_config(), config.name, metrics)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.state)

    def check_health(self) -> None:
        """Ray Serve's health check: raising makes it replace the replica."""
        if not self.state.engine.is_healthy:
            raise self.state.engine.dead_error or EngineDeadError("the engine core process is not running")


def build_model_application(config: ModelDeploymentConfig) -> Application:
    """The deployment of one model, with its autoscaling policy and each replica's resources."""
    deployment = serve.deployment(ModelReplica).options(
        name=config.name,
        autoscaling_config=config.autoscaling.ray_serve_options(),
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": config.num_cpus,
            "num_gpus": config.num_gpus,
            "runtime_env": {"env_vars": config.env},
        },
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )
    return deployment.bind(config)
