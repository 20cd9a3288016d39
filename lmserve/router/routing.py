"""Which model's replicas take a request: the `route(body) -> RouteChoice` step before load balancing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lmserve.errors import InvalidRequestError, ModelNotFoundError
from lmserve.router.classifier import Classifier, Decision, build_classifier
from lmserve.router.config import RouteConfig
from lmserve.router.replica_group import CATCH_ALL


@dataclass
class RouteChoice:
    """Where a request goes: its group, and when a route chose that group, the route and the classifier's decision
    (none for a cascade route: its simple group answers first, and the cascade decides once it has)."""

    group: str
    route: RouteConfig | None = None
    decision: Decision | None = None


class ModelRouter:
    """Routes by the request's `model` field: a model's name picks its group; a route's name (`"model": "auto"`)
    lets the route's classifier pick between its simple and complex groups, or for a cascade, picks the simple one."""

    def __init__(self, names: list[str], routes: list[RouteConfig] | None = None) -> None:
        self.names = names
        self.routes = {route.name: route for route in routes or []}
        # Built once at start: a kNN classifier loads its embedding model and embeds its examples here.
        self.classifiers: dict[str, Classifier] = {
            route.name: build_classifier(route.classifier) for route in self.routes.values() if route.cascade is None
        }

    @property
    def served(self) -> list[str]:
        """The model names clients may ask for: the groups', then the routes'."""
        return [*self.names, *self.routes]

    async def route(self, body: dict[str, Any]) -> RouteChoice:
        """Where a request goes; raises when the router serves no such model."""
        model = body.get("model")
        route = self.routes.get(model) if isinstance(model, str) else None
        if route is None:
            return RouteChoice(self.group_of(model))
        if route.cascade is not None:
            return RouteChoice(route.simple, route)
        classifier = self.classifiers[route.name]
        if route.classifier.kind == "knn":  # tens of milliseconds of embedding: keep the event loop free
            decision = await asyncio.to_thread(classifier.classify, body)
        else:
            decision = classifier.classify(body)
        return RouteChoice(route.target(decision.label), route, decision)

    def group_of(self, model: object) -> str:
        """The replica group serving the model a request names."""
        if self.names == [CATCH_ALL]:
            return CATCH_ALL
        served = ", ".join(self.served)
        if model is None and len(self.names) == 1:
            return self.names[0]
        if model is None:
            raise InvalidRequestError(f"name a `model`: this router serves {served}")
        if model not in self.names:
            raise ModelNotFoundError(f"the model {model!r} does not exist; this router serves {served}")
        return model
