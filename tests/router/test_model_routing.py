"""Model routing: a route's name (`"model": "auto"`) sends each request to its simple or complex model, as the
classifier labels it. Config parsing and the cost arithmetic without processes; then two real replicas ("small"
and "large", both the embedded model) behind a real router, given every example of the labeled set."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lmserve.errors import ConfigError, ModelNotFoundError
from lmserve.router.classifier import load_examples
from lmserve.router.config import TokenPrice, load_config
from lmserve.router.cost import CostMeter
from lmserve.router.metrics import RouterMetrics
from lmserve.router.request import parse_request
from lmserve.router.routing import ModelRouter
from tests.router.router_process import RouterProcess
from tests.server.helpers import assert_openai_error
from tests.server.server_process import ServerProcess

TARGET = {"simple": "small", "complex": "large"}
PRICES = {"small": TokenPrice(0.5, 1.5), "large": TokenPrice(5.0, 15.0)}
MODELS = """
models:
  small:
    backends: [http://small:8000]
    price_per_million_tokens: {input: 0.5, output: 1.5}
  large:
    backends: [http://large:8000]
    price_per_million_tokens: {input: 5, output: 15}
"""
ROUTES = """
routes:
  auto:
    simple: small
    complex: large
    classifier: {kind: heuristic, threshold: 1.5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_a_route_names_its_two_models_and_its_classifier(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + ROUTES))
    (route,) = config.routes
    assert (route.name, route.simple, route.complex) == ("auto", "small", "large")
    assert (route.classifier.kind, route.classifier.threshold) == ("heuristic", 1.5)
    assert [route.target(label) for label in ("simple", "complex")] == ["small", "large"]
    assert {group.model: group.price_per_million_tokens for group in config.groups} == PRICES
    assert load_config(write(tmp_path, MODELS)).routes == []


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("routes:\n  auto: {simple: small, complex: huge}", "complex goes to 'huge', which is no configured model"),
        ("routes:\n  auto: {simple: small}", "name the model for complex"),
        ("routes:\n  small: {simple: small, complex: large}", "a model of that name exists"),
        ("routes:\n  auto: {simple: small, complex: large, classifier: {kind: magic}}", "classifier kind"),
        ("routes:\n  auto: {simple: small, complex: large, classifier: {kk: 1}}", "unknown field(s) kk"),
        ("routes:\n  auto: {simple: small, complex: large, extra: 1}", "unknown field(s) extra"),
        ("routes: [auto]", "`routes` must map"),
        ("routes:\n  auto: large", "must be a mapping"),
    ],
)
def test_a_route_to_no_configured_model_is_a_clear_config_error(tmp_path: Path, routes: str, message: str) -> None:
    with pytest.raises(ConfigError, match="route|routes") as error:
        load_config(write(tmp_path, MODELS + routes))
    assert message in str(error.value)


@pytest.mark.parametrize(("price", "message"), [("{input: -1}", "non-negative"), ("{inputs: 1}", "unknown field")])
def test_a_bad_price_is_a_config_error(tmp_path: Path, price: str, message: str) -> None:
    text = f"models:\n  small:\n    backends: [http://small:8000]\n    price_per_million_tokens: {price}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_the_model_router_classifies_route_requests_and_passes_model_names_through(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + ROUTES))
    router = ModelRouter([group.model for group in config.groups], config.routes)
    simple = asyncio.run(router.route({"model": "auto", "prompt": "hi"}))
    assert (simple.group, simple.route.name, simple.decision.label) == ("small", "auto", "simple")
    proof = {"model": "auto", "prompt": "Prove the theorem by induction, step by step, in detail."}
    assert asyncio.run(router.route(proof)).group == "large"
    assert asyncio.run(router.route({"model": "large", "prompt": "hi"})).route is None
    with pytest.raises(ModelNotFoundError, match="small, large, auto"):
        asyncio.run(router.route({"model": "gpt-5"}))


def test_a_routed_request_names_its_model_and_counts_what_it_saved(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + ROUTES))
    metrics = RouterMetrics()
    request = parse_request("POST", "/v1/completions", b'{"model": "auto", "prompt": "hi"}', {})
    routed = request.routed_to("small", "auto")
    assert json.loads(routed.upstream_body())["model"] == "small" and routed.route == "auto"
    CostMeter(config, metrics).observe(routed, "small", {"prompt_tokens": 1000, "completion_tokens": 100})
    cost = (1000 * 0.5 + 100 * 1.5) / 1e6
    sample = metrics.registry.get_sample_value
    assert sample("lmserve_router:cost_dollars_total", {"model": "small"}) == pytest.approx(cost)
    saved = sample("lmserve_router:cost_saved_dollars_total", {"route": "auto"})
    assert saved == pytest.approx((1000 * 5 + 100 * 15) / 1e6 - cost)


@pytest.fixture(scope="module")
def routed(
    small_and_large: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    """Replicas "small" and "large" behind a router whose route "auto" picks between them."""
    text = with_replicas(MODELS, small_and_large)
    # The test asks for 1 token to stay fast; small_max_tokens: 0 keeps that from voting "simple" itself.
    text += ROUTES.replace("threshold: 1.5", "small_max_tokens: 0")
    with RouterProcess("--config", str(write(tmp_path_factory.mktemp("router"), text))) as router:
        yield router


def with_replicas(text: str, replicas: dict[str, ServerProcess]) -> str:
    """A config's placeholder URLs (http://small:8000, ...) replaced with the replicas' own."""
    for name, replica in replicas.items():
        text = text.replace(f"http://{name}:8000", replica.url)
    return text


def send(router: RouterProcess, body: dict, client: httpx.Client) -> httpx.Response:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    return client.post(f"{router.url}{path}", json={**body, "model": "auto", "max_tokens": 1, "temperature": 0})


def test_every_labeled_example_goes_to_its_labels_model(routed: RouterProcess) -> None:
    examples = load_examples()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda example: send(routed, example.body, client), examples))
    assert [response.status_code for response in responses] == [200] * len(examples)
    served = [response.json()["model"] for response in responses]
    assert served == [response.headers["x-lmserve-model"] for response in responses]
    right = sum(model == TARGET[example.label] for model, example in zip(served, examples, strict=True))
    assert right >= 0.9 * len(examples), f"{right}/{len(examples)} routed to their label's model"

    decisions = Counter(served)
    for label, model in TARGET.items():
        assert routed.metric("lmserve_router:routing_decisions_total", route="auto", label=label) == decisions[model]
        assert routed.metric("lmserve_router:routing_decisions_total", route="auto", model=model) == decisions[model]
    usage = {model: Counter() for model in TARGET.values()}
    for model, response in zip(served, responses, strict=True):
        usage[model].update(response.json()["usage"])
    costs = {
        model: (usage[model]["prompt_tokens"] * PRICES[model].input
                + usage[model]["completion_tokens"] * PRICES[model].output) / 1e6
        for model in usage
    }
    for model, cost in costs.items():
        assert routed.metric("lmserve_router:cost_dollars_total", model=model) == pytest.approx(cost)
    small_on_large = (usage["small"]["prompt_tokens"] * PRICES["large"].input
                      + usage["small"]["completion_tokens"] * PRICES["large"].output) / 1e6
    saved = routed.metric("lmserve_router:cost_saved_dollars_total", route="auto")
    assert saved == pytest.approx(small_on_large - costs["small"]) and saved > 0


def test_a_routed_stream_names_the_model_that_served_it(routed: RouterProcess) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{routed.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["x-lmserve-model"] == "small"
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert {json.loads(line)["model"] for line in lines[:-1]} == {"small"}


def test_models_lists_the_routes_and_unknown_names_stay_404(routed: RouterProcess) -> None:
    models = httpx.get(f"{routed.url}/v1/models", timeout=10).json()["data"]
    assert [model["id"] for model in models] == ["small", "large", "auto"]
    response = httpx.post(f"{routed.url}/v1/completions", json={"model": "auto2", "prompt": "x"}, timeout=10)
    assert_openai_error(response, 404, "auto2", "auto")
