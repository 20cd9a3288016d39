"""The cluster's configuration (`lmserve cluster up --config cluster.yaml`): one dataclass for each model's
deployment and its autoscaling policy, one for the ingress, read from YAML and validated once here.

Engine options are only checked by name: the model directory need not exist where `up` runs, only on the
nodes that host the model's replicas, where the replica builds its EngineConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmserve.config import CacheConfig, ModelConfig, RunnerConfig, SchedulerConfig
from lmserve.config_mapping import build_dataclass
from lmserve.errors import ConfigError
from lmserve.server.config import ServerConfig

ENGINE_OPTION_CLASSES = (ModelConfig, CacheConfig, SchedulerConfig, RunnerConfig)
# The server options a replica takes from the config; how it listens is Ray Serve's business.
REPLICA_SERVER_OPTIONS = ("max_waiting_requests", "request_timeout", "max_request_body_bytes", "log_requests")


@dataclass
class AutoscalingConfig:
    """How many replicas a model has: Ray Serve adds one when the requests in flight per replica stay above
    `target_ongoing_requests` for `upscale_delay_s`, and removes one when they stay below for `downscale_delay_s`."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"autoscaling.min_replicas must be non-negative, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError(
                f"autoscaling.max_replicas must be at least 1 and min_replicas ({self.min_replicas}), "
                f"got {self.max_replicas}"
            )
        for name in ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"autoscaling.{name} must be positive, got {getattr(self, name)}")

    def ray_serve_options(self) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config` for these settings."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }


@dataclass
class ModelDeploymentConfig:
    """One model served by a Ray Serve deployment: what each replica loads and what it needs from the cluster."""

    name: str  # the name clients pass as `model`, and the deployment's
    model: str | None = None  # a Hugging Face model directory on every node that hosts a replica; None: the embedded
    device: str = "auto"  # "cuda" on GPU nodes, "cpu" for CPU replicas
    engine: dict[str, Any] = field(default_factory=dict)  # fields of the engine's config classes, e.g. dtype
    server: dict[str, Any] = field(default_factory=dict)  # the replica's ServerConfig fields (REPLICA_SERVER_OPTIONS)
    num_gpus: float | None = None  # GPUs a replica takes; None: 1 for device "cuda" (one replica per GPU), else 0
    num_cpus: float = 1
    max_ongoing_requests: int = 16  # requests Ray Serve sends one replica at once; more wait in Ray Serve's queue
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the replica's process
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        known = {item.name for cls in ENGINE_OPTION_CLASSES for item in dataclasses.fields(cls) if item.init}
        known.discard("model")
        if unknown := sorted(set(self.engine) - known):
            raise ConfigError(
                f"{where}: unknown engine option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if unknown := sorted(set(self.server) - set(REPLICA_SERVER_OPTIONS)):
            raise ConfigError(f"{where}: unknown server option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(REPLICA_SERVER_OPTIONS)}")
        if self.num_gpus is None:
            self.num_gpus = 1 if self.device == "cuda" else 0
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ConfigError(f"{where}: num_gpus and num_cpus must be non-negative")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"{where}: max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}")

    def server_config(self) -> ServerConfig:
        return ServerConfig(served_model_name=self.name, **self.server)


@dataclass
class IngressConfig:
    """The OpenAI-compatible front door: Ray Serve's HTTP proxy on host:port, and the router's options
    (`router`: fields of lmserve.router's RouterConfig, e.g. max_queue_size) and routes (`routes`)."""

    host: str = "127.0.0.1"  # 0.0.0.0 to take requests from other machines
    port: int = 8000
    num_replicas: int = 1  # each has its own router queue: the queue bound is per ingress replica
    router: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ConfigError(f"ingress.num_replicas must be at least 1, got {self.num_replicas}")
        if forbidden := sorted({"groups", "models", "host", "port"} & set(self.router)):
            raise ConfigError(f"ingress.router: {', '.join(forbidden)} come from the cluster config, not the router's")


@dataclass
class ClusterConfig:
    """Every model's deployment and the ingress in front of them."""

    models: list[ModelDeploymentConfig]
    ingress: IngressConfig = field(default_factory=IngressConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("the cluster config needs at least one model under `models`")
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"a model is configured twice: {names}")


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """A ClusterConfig from YAML: `models` maps each model's name to its deployment's fields (with an
    `autoscaling` mapping), `ingress` holds the IngressConfig fields."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the cluster config {str(path)!r}: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the cluster config must be a mapping")
    return cluster_config_from_mapping(document, str(path))


def cluster_config_from_mapping(document: dict[str, Any], where: str = "the cluster config") -> ClusterConfig:
    """A ClusterConfig from the YAML file's mapping (tests build one directly)."""
    if unknown := sorted(set(document) - {"models", "ingress"}):
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: ingress, models")
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{where}: `models` must map each model's name to its deployment")
    deployments = []
    for name, fields in models.items():
        fields = {**_mapping(fields, f"{where}: model {name!r}"), "name": str(name)}
        if "autoscaling" in fields:
            part = f"{where}: model {name!r}: autoscaling"
            fields["autoscaling"] = build_dataclass(AutoscalingConfig, _mapping(fields["autoscaling"], part), part)
        deployments.append(build_dataclass(ModelDeploymentConfig, fields, f"{where}: model {name!r}"))
    part = f"{where}: ingress"
    ingress = build_dataclass(IngressConfig, _mapping(document.get("ingress") or {}, part), part)
    return ClusterConfig(deployments, ingress)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    return value

