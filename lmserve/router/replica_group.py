"""A model's replicas and its load-balancing policy: picks the replica for a request."""

from __future__ import annotations

from lmserve.router.backend import Backend
from lmserve.router.config import ReplicaGroupConfig, RouterConfig
from lmserve.router.policies import make_policy
from lmserve.router.request import prefix_key

CATCH_ALL = "*"  # the name of a group configured without a model name: it serves whatever model is asked


class ReplicaGroup:
    """The replicas of one model, in configuration order."""

    def __init__(self, config: ReplicaGroupConfig, router_config: RouterConfig) -> None:
        self.name = config.model or CATCH_ALL
        self.prefix_chars = config.prefix_chars
        self.policy = make_policy(config)
        self.backends = [
            Backend(
                url,
                self.name,
                router_config.max_outstanding_per_backend,
                router_config.unhealthy_threshold,
                router_config.healthy_threshold,
            )
            for url in config.backends
        ]

    @property
    def has_healthy_backend(self) -> bool:
        return any(backend.healthy for backend in self.backends)

    def served_name(self, requested: object) -> str:
        """The model name a response reports: the group's, or for the catch-all group the one asked for."""
        if self.name == CATCH_ALL:
            return requested if isinstance(requested, str) else CATCH_ALL
        return self.name

    def key_of(self, body: dict) -> str | None:
        return prefix_key(body, self.prefix_chars)

    def pick(self, key: str | None, tried: set[str]) -> Backend | None:
        """A replica for a request (None: wait). Replicas it failed on are avoided while others are healthy."""
        healthy = [backend for backend in self.backends if backend.healthy]
        untried = [backend for backend in healthy if backend.url not in tried]
        candidates = untried or healthy
        return self.policy.choose(candidates, key) if candidates else None
