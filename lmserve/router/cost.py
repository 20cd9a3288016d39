"""What answered requests cost, from their usage and the configured per-model prices, and what routes saved (and
cascades wasted on escalated answers)."""

from __future__ import annotations

from lmserve.router.config import RouterConfig, TokenPrice
from lmserve.router.metrics import RouterMetrics
from lmserve.router.request import ProxyRequest


class CostMeter:
    """Counts `cost_dollars_total{model}`, `cost_saved_dollars_total{route}` and a cascade's
    `cost_wasted_dollars_total{route}`; models without a price cost nothing and routes whose models lack one save
    nothing, so no made-up number ever appears."""

    def __init__(self, config: RouterConfig, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.prices = {
            group.model: group.price_per_million_tokens for group in config.groups if group.price_per_million_tokens
        }
        self.complex_of = {route.name: route.complex for route in config.routes}

    def observe(self, request: ProxyRequest, model: str, usage: object) -> None:
        """Count one answer's cost, and for a routed request, the saving over its route's complex model."""
        cost = self._cost_of(model, usage)
        if cost is None:
            return
        self.metrics.cost_dollars.labels(model).inc(cost)
        if request.route is not None:
            self._count_saving(request.route, usage, cost)

    def observe_cascade(self, route: str, model: str, usage: object, accepted: bool) -> None:
        """A cascade judged its simple answer, whose cost `observe` counted already. Accepted, it saved as any routed
        answer does; escalated, it saved nothing and its cost was spent on top of the complex model's: wasted."""
        cost = self._cost_of(model, usage)
        if cost is None:
            return
        if accepted:
            self._count_saving(route, usage, cost)
        else:
            self.metrics.cost_wasted_dollars.labels(route).inc(cost)

    def _cost_of(self, model: str, usage: object) -> float | None:
        tokens = _tokens(usage)
        price = self.prices.get(model)
        return None if tokens is None or price is None else _dollars(price, *tokens)

    def _count_saving(self, route: str, usage: object, cost: float) -> None:
        """What the route's complex model would have cost for the same usage, less `cost`."""
        complex_cost = self._cost_of(self.complex_of.get(route, ""), usage)
        if complex_cost is not None:
            # The same token counts on the complex model: an estimate, as its tokenizer and answer would differ.
            self.metrics.cost_saved_dollars.labels(route).inc(max(complex_cost - cost, 0))


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
