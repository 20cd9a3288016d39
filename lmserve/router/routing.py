"""Which model's replicas take a request: the `route(body) -> model name` step before load balancing."""

from __future__ import annotations

from typing import Any

from lmserve.errors import InvalidRequestError, ModelNotFoundError
from lmserve.router.replica_group import CATCH_ALL


class ModelRouter:
    """Routes by the request's `model` field. Choosing a model for the request (`"model": "auto"`) is a
    later step that replaces or wraps `route`; nothing else in the router changes for it."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def route(self, body: dict[str, Any]) -> str:
        """The name of the replica group for a request; raises when the router serves no such model."""
        if self.names == [CATCH_ALL]:
            return CATCH_ALL
        model = body.get("model")
        if model is None and len(self.names) == 1:
            return self.names[0]
        if model is None:
            raise InvalidRequestError(f"name a `model`: this router serves {', '.join(self.names)}")
        if model not in self.names:
            raise ModelNotFoundError(f"the model {model!r} does not exist; this router serves {', '.join(self.names)}")
        return model
