"""What answered requests cost, from their usage and the configured per-model prices, and what routes saved."""

from __future__ import annotations

from lmserve.router.config import RouterConfig, TokenPrice
from lmserve.router.metrics import RouterMetrics
from lmserve.router.request import ProxyRequest


class CostMeter:
    """Counts `cost_dollars_total{model}` and `cost_saved_dollars_total{route}`; models without a price cost nothing
    and routes whose models lack one save nothing, so no made-up number ever appears."""

    def __init__(self, config: RouterConfig, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.prices = {
            group.model: group.price_per_million_tokens for group in config.groups if group.price_per_million_tokens
        }
        self.complex_of = {route.name: route.complex for route in config.routes}

    def observe(self, request: ProxyRequest, model: str, usage: object) -> None:
        """Count one answer's cost, and for a routed request, the saving over its route's complex model."""
        tokens = _tokens(usage)
        price = self.prices.get(model)
        if tokens is None or price is None:
            return
        cost = _dollars(price, *tokens)
        self.metrics.cost_dollars.labels(model).inc(cost)
        complex_price = self.prices.get(self.complex_of.get(request.route, ""))
        if complex_price is not None:
            # The same token counts on the complex model: an estimate, as its tokenizer and answer would differ.
            self.metrics.cost_saved_dollars.labels(request.route).inc(max(_dollars(complex_price, *tokens) - cost, 0))


def _tokens(usage: object) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI `usage` object; None when it is absent or malformed."""
    if not isinstance(usage, dict):
        return None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if not all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts):
        return None
    return counts


def _dollars(price: TokenPrice, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
