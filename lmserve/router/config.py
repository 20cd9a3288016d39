"""The router's configuration: one dataclass for each replica group (a model), one for each route (a model name
whose requests a classifier or a cascade spreads over two groups) and one for the router, read from a YAML file
(`--config`) or built from `--backends` for a single model; validated once here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmserve.config_mapping import build_dataclass
from lmserve.errors import ConfigError
from lmserve.router.classifier import LABELS, ClassifierConfig

POLICIES = ("round_robin", "least_outstanding", "prefix_aware")


@dataclass
class TokenPrice:
    """What a model's tokens cost, in dollars per million; the router's cost metrics multiply usage by it."""

    input: float = 0.0
    output: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"price_per_million_tokens.{name} must be a non-negative number, got {value!r}")


@dataclass
class ReplicaGroupConfig:
    """The replicas that serve one model, and how requests are spread over them.

    `model` None (only with a single group, as `--backends` makes) sends every request to this group,
    whatever model it names: the replicas themselves answer for their model's name.
    """

    model: str | None = None
    backends: list[str] = field(default_factory=list)  # base URLs of `lmserve serve` replicas
    policy: str = "least_outstanding"
    # prefix_aware: the key is this many leading characters of the prompt (or of the rendered messages)...
    prefix_chars: int = 256
    # ...and a key's replica is kept while its outstanding requests stay within factor * least + slack.
    max_load_imbalance: float = 2.0
    load_imbalance_slack: int = 2
    price_per_million_tokens: TokenPrice | None = None  # None: its requests count no cost

    def __post_init__(self) -> None:
        where = f"model {self.model!r}" if self.model else "the backends"
        if not self.backends:
            raise ConfigError(f"{where}: give at least one backend URL")
        self.backends = [_check_url(url, where) for url in self.backends]
        if len(set(self.backends)) != len(self.backends):
            raise ConfigError(f"{where}: a backend URL is listed twice: {self.backends}")
        if self.policy not in POLICIES:
            raise ConfigError(f"{where}: policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.prefix_chars < 1:
            raise ConfigError(f"{where}: prefix_chars must be positive, got {self.prefix_chars}")
        if self.max_load_imbalance < 1:
            raise ConfigError(f"{where}: max_load_imbalance must be at least 1, got {self.max_load_imbalance}")
        if self.load_imbalance_slack < 0:
            raise ConfigError(f"{where}: load_imbalance_slack must be non-negative, got {self.load_imbalance_slack}")


@dataclass
class CascadeConfig:
    """A route's cascade: its simple model answers every request first, and the complex model answers instead when
    the simple answer's mean token logprob (its confidence) is below `min_mean_logprob`."""

    min_mean_logprob: float

    def __post_init__(self) -> None:
        value = self.min_mean_logprob
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot (-1e9) as text
            try:
                value = self.min_mean_logprob = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value > 0:
            raise ConfigError(
                f"cascade min_mean_logprob must be a number at most 0 (a logprob never exceeds 0), e.g. -1.5; "
                f"got {value!r}"
            )


@dataclass
class RouteConfig:
    """A model name clients may ask for (`"model": "auto"`) that is turned into one of two groups: by the classifier,
    or with a cascade, by trying the simple group first and escalating to the complex one."""

    name: str
    simple: str  # the group that serves requests labeled "simple"; a cascade's first try
    complex: str  # ... and "complex"; a cascade's escalations
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # unused by a cascade
    cascade: CascadeConfig | None = None

    def target(self, label: str) -> str:
        """The group's name for a classifier label."""
        return self.simple if label == "simple" else self.complex


@dataclass
class RouterConfig:
    """How the router listens, queues, retries and checks its replicas."""

    groups: list[ReplicaGroupConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    max_outstanding_per_backend: int = 64  # requests in flight on one replica; more wait in the router's queue
    max_queue_size: int = 1024  # requests waiting for a replica; past it, 429
    max_queue_wait: float = 30.0  # seconds a request may wait for a replica; past it, 429 (or 503: none healthy)
    max_retries: int = 2  # further replicas a request may try after one failed before answering
    # Seconds before the first retry, doubling after each: for a backend that stands for a pool (a Ray Serve
    # deployment) whose failed member takes it a moment to drop. 0: retry at once, on another replica.
    retry_backoff: float = 0.0
    # Take a replica out at once when a request cannot reach it or it answers 503 (health checks re-admit it).
    # False for a backend that stands for a pool (a Ray Serve deployment): its failures are one member's.
    eject_on_failure: bool = True
    health_interval: float = 2.0  # seconds between two active health checks of a replica
    health_timeout: float = 2.0
    health_path: str = "/health"  # "/ready" also takes draining replicas out
    unhealthy_threshold: int = 3  # consecutive failed checks that eject a replica
    healthy_threshold: int = 2  # consecutive passed checks that re-admit it
    connect_timeout: float = 5.0
    request_timeout: float | None = None  # seconds between two bytes from a replica; None: no limit
    drain_timeout: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    log_format: str = "text"  # "text" or "json"

    def __post_init__(self) -> None:
        if not self.groups:
            raise ConfigError("the router needs at least one model's backends (--backends or a config file)")
        names = [group.model for group in self.groups]
        if None in names and len(names) > 1:
            raise ConfigError("with several models, each needs its name")
        if len(set(names)) != len(names):
            raise ConfigError(f"a model is configured twice: {names}")
        for name in ("max_outstanding_per_backend", "unhealthy_threshold", "healthy_threshold"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_queue_size", "max_retries", "retry_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in (
            "max_queue_wait", "health_interval", "health_timeout", "connect_timeout", "request_timeout", "drain_timeout"
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if not self.health_path.startswith("/"):
            raise ConfigError(f"health_path must start with '/', got {self.health_path!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        self._check_routes(names)

    def _check_routes(self, names: list[str | None]) -> None:
        route_names = [route.name for route in self.routes]
        if len(set(route_names)) != len(route_names):
            raise ConfigError(f"a route is configured twice: {route_names}")
        for route in self.routes:
            if route.name in names:
                raise ConfigError(f"route {route.name!r}: a model of that name exists already; a route needs its own")
            for label in LABELS:
                if route.target(label) not in names:
                    known = ", ".join(name for name in names if name) or "none (name the models under `models`)"
                    raise ConfigError(
                        f"route {route.name!r}: {label} goes to {route.target(label)!r}, which is no configured "
                        f"model; the models are {known}"
                    )


def load_config(path: str | Path, **overrides: Any) -> RouterConfig:
    """A RouterConfig from a YAML file (see `config_from_mapping`); `overrides` (command-line flags) win over it."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the router config {str(path)!r}: {error}") from error
    return config_from_mapping(document, str(path), **overrides)


def config_from_mapping(document: Any, where: str, **overrides: Any) -> RouterConfig:
    """A RouterConfig from a config file's mapping: router fields at the top level, under `models` each model's
    name mapped to its group's fields, and under `routes` each route's name mapped to its fields. Errors name
    `where` (the file, or whatever built the mapping)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: the router config must be a mapping")
    document = {**document}
    if "groups" in document:
        raise ConfigError(f"{where}: list the replica groups under `models`, not `groups`")
    models = document.pop("models", None)
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{where}: `models` must map each model name to its backends and policy")
    groups = []
    for name, fields in models.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: model {name!r} must be a mapping with `backends`")
        model_where = f"{where}: model {name!r}"
        fields = {**fields, "model": str(name)}
        if isinstance(price := fields.get("price_per_million_tokens"), dict):
            part = f"{model_where}: price_per_million_tokens"
            fields["price_per_million_tokens"] = build_dataclass(TokenPrice, price, part)
        groups.append(build_dataclass(ReplicaGroupConfig, fields, model_where))
    routes = _load_routes(document.pop("routes", None) or {}, where)
    return build_dataclass(RouterConfig, {**document, **overrides, "groups": groups, "routes": routes}, where)


def _load_routes(routes: Any, where: str) -> list[RouteConfig]:
    if not isinstance(routes, dict):
        raise ConfigError(f"{where}: `routes` must map each route's name to its `simple` and `complex` models")
    built = []
    for name, fields in routes.items():
        route_where = f"{where}: route {name!r}"
        if not isinstance(fields, dict):
            raise ConfigError(f"{route_where} must be a mapping with `simple` and `complex`")
        cascade = "cascade" in fields
        missing = [label for label in LABELS if label not in fields]
        if missing:
            roles = "a cascade needs `simple` (answers first) and `complex` (escalations): " if cascade else ""
            raise ConfigError(f"{route_where}: {roles}name the model for {' and '.join(missing)} requests")
        if cascade and "classifier" in fields:
            raise ConfigError(f"{route_where}: a cascade route sends every request to its simple model first; "
                              "drop `classifier` or `cascade`")
        classifier = _build_part(ClassifierConfig, fields, "classifier", route_where, "{kind: heuristic}")
        fields = {**fields, "name": str(name), "classifier": classifier}
        if cascade:
            fields["cascade"] = _build_part(CascadeConfig, fields, "cascade", route_where, "{min_mean_logprob: -1.5}")
        built.append(build_dataclass(RouteConfig, fields, route_where))
    return built


def _build_part(cls: type, fields: dict[str, Any], name: str, where: str, example: str) -> Any:
    """A route's `classifier` or `cascade` mapping built into its dataclass, errors naming the file and the route."""
    part = fields.get(name) or {}
    if not isinstance(part, dict):
        raise ConfigError(f"{where}: `{name}` must be a mapping, e.g. {example}")
    try:
        return build_dataclass(cls, part, f"{where}: {name}")
    except ConfigError as error:  # the dataclass's own checks know nothing of the file or the route
        message = str(error)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from error


def config_from_backends(backends: str, model: str | None = None, **options: Any) -> RouterConfig:
    """A RouterConfig for one model from comma-separated replica URLs; `options` are any fields of either
    dataclass (the group's go to the group)."""
    group_names = {item.name for item in dataclasses.fields(ReplicaGroupConfig)}
    group_options = {name: value for name, value in options.items() if name in group_names}
    router_options = {name: value for name, value in options.items() if name not in group_names}
    urls = [url.strip() for url in backends.split(",") if url.strip()]
    group = ReplicaGroupConfig(model=model, backends=urls, **group_options)
    return RouterConfig(groups=[group], **router_options)


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: a backend must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")
