"""The cascade: a route whose small model answers first and whose large model answers instead when the small
answer's mean token logprob is below the route's threshold. The check, the cost arithmetic and the config without
processes; then replicas "small" and "large" (conftest.py) behind a real router with a route every answer passes
("confident") and one none passes ("doubtful"), through httpx and the `openai` client, streamed and not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from lmserve.errors import ConfigError
from lmserve.router.cascade import check_answer, mean_logprob
from lmserve.router.config import load_config
from lmserve.router.cost import CostMeter
from lmserve.router.metrics import RouterMetrics
from lmserve.router.request import parse_request
from lmserve.router.routing import ModelRouter
from lmserve.router.sse import answer_as_stream
from tests.router.router_process import RouterProcess
from tests.router.test_model_routing import MODELS, PRICES, with_replicas, write
from tests.server.server_process import ServerProcess

CASCADES = """
routes:
  confident:
    simple: small
    complex: large
    cascade: {min_mean_logprob: -1000000000.0}
  doubtful:
    simple: small
    complex: large
    cascade: {min_mean_logprob: 0.0}
"""
REQUESTS = [
    {"prompt": "The capital of France is", "max_tokens": 8},
    {"prompt": ["def add(a, b):", "Once upon a time"], "max_tokens": 6, "n": 2},
    {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 8},
]
CHAT = {"messages": [{"role": "user", "content": "Write a haiku about rain."}], "max_tokens": 8}
TIMEOUT = 60


def chat_choice(*logprobs: float) -> dict:
    return {"message": {"content": "x"}, "logprobs": {"content": [{"token": "x", "logprob": lp} for lp in logprobs]}}


def completion_choice(*logprobs: float | None) -> dict:
    return {"text": "x", "logprobs": {"tokens": ["x"] * len(logprobs), "token_logprobs": list(logprobs)}}


def cost(usage: dict, model: str) -> float:
    return (usage["prompt_tokens"] * PRICES[model].input + usage["completion_tokens"] * PRICES[model].output) / 1e6


def test_the_mean_logprob_is_over_a_choices_generated_tokens_in_either_api() -> None:
    assert mean_logprob(chat_choice(-1.0, -2.0, -3.0)) == pytest.approx(-2.0)
    assert mean_logprob(completion_choice(-0.5, -1.5)) == pytest.approx(-1.0)
    for nothing_to_judge in (chat_choice(), completion_choice(), completion_choice(-1.0, None), {"logprobs": None}):
        assert mean_logprob(nothing_to_judge) is None


def test_an_answer_passes_only_when_every_choice_does_and_an_empty_one_never() -> None:
    answer = {"choices": [chat_choice(-0.5), chat_choice(-2.0, -1.0)]}
    assert (check_answer(answer, -1.5).accepted, check_answer(answer, -1.5).mean_logprob) == (True, -1.5)
    assert check_answer(answer, -1.4).decision == "escalated"
    for empty in ({"choices": []}, {"choices": [chat_choice(-0.1), chat_choice()]}, {"error": {}}, None):
        check = check_answer(empty, -1e9)
        assert (check.accepted, check.mean_logprob) == (False, None)


def test_an_escalation_costs_both_calls_and_saves_nothing(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + CASCADES))
    metrics = RouterMetrics()
    meter = CostMeter(config, metrics)
    request = parse_request("POST", "/v1/completions", b'{"model": "doubtful", "prompt": "hi"}', {})
    small_usage = {"prompt_tokens": 100, "completion_tokens": 10}
    large_usage = {"prompt_tokens": 90, "completion_tokens": 30}
    meter.observe(request.routed_to("small", None), "small", small_usage)  # the first try, not yet judged
    meter.observe_cascade("doubtful", "small", small_usage, accepted=False)
    meter.observe(request.routed_to("large", "doubtful"), "large", large_usage)
    meter.observe(request.routed_to("small", None), "small", small_usage)
    meter.observe_cascade("confident", "small", small_usage, accepted=True)

    sample = metrics.registry.get_sample_value
    spent = {model: sample("lmserve_router:cost_dollars_total", {"model": model}) for model in ("small", "large")}
    assert spent == {"small": pytest.approx(2 * cost(small_usage, "small")), "large": cost(large_usage, "large")}
    # Escalated: no saving, and the small call's whole cost wasted (net, it cost that much more than the large alone).
    assert sample("lmserve_router:cost_saved_dollars_total", {"route": "doubtful"}) == 0
    assert sample("lmserve_router:cost_wasted_dollars_total", {"route": "doubtful"}) == cost(small_usage, "small")
    saved = sample("lmserve_router:cost_saved_dollars_total", {"route": "confident"})
    assert saved == pytest.approx(cost(small_usage, "large") - cost(small_usage, "small"))
    assert sample("lmserve_router:cost_wasted_dollars_total", {"route": "confident"}) is None


def test_a_cascade_route_sends_every_request_to_its_small_model_first(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODELS + CASCADES))
    assert [route.cascade.min_mean_logprob for route in config.routes] == [-1e9, 0.0]
    router = ModelRouter([group.model for group in config.groups], config.routes)
    assert router.classifiers == {}
    proof = {"model": "doubtful", "prompt": "Prove the theorem by induction, step by step, in detail."}
    choice = asyncio.run(router.route(proof))
    assert (choice.group, choice.route.name, choice.decision) == ("small", "doubtful", None)


def test_a_threshold_yaml_reads_as_text_is_still_a_number(tmp_path: Path) -> None:
    routes = f"{MODELS}routes:\n  auto: {{simple: small, complex: large, cascade: {{min_mean_logprob: -1e9}}}}\n"
    assert load_config(write(tmp_path, routes)).routes[0].cascade.min_mean_logprob == -1e9


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ("{simple: small, complex: large, cascade: {min_mean_logprob: high}}", "must be a number at most 0"),
        ("{simple: small, complex: large, cascade: {min_mean_logprob: true}}", "must be a number"),
        ("{simple: small, complex: large, cascade: {min_mean_logprob: 0.5}}", "never exceeds 0"),
        ("{simple: small, complex: large, cascade: {}}", "min_mean_logprob"),
        ("{simple: small, complex: large, cascade: {min_logprob: -1}}", "unknown field(s) min_logprob"),
        ("{simple: small, complex: large, cascade: -1.5}", "`cascade` must be a mapping, e.g. {min_mean_logprob"),
        ("{simple: small, cascade: {min_mean_logprob: -1.5}}", "a cascade needs `simple` (answers first) and"),
        ("{complex: large, cascade: {min_mean_logprob: -1.5}}", "name the model for simple requests"),
        ("{simple: small, complex: huge, cascade: {min_mean_logprob: -1.5}}", "'huge', which is no configured model"),
        ("{simple: small, complex: large, classifier: {}, cascade: {min_mean_logprob: -1}}", "drop `classifier`"),
    ],
)
def test_a_bad_cascade_is_a_clear_config_error(tmp_path: Path, cascade: str, message: str) -> None:
    with pytest.raises(ConfigError, match="route 'auto'") as error:
        load_config(write(tmp_path, f"{MODELS}routes:\n  auto: {cascade}\n"))
    assert message in str(error.value)


def test_a_whole_answer_is_written_as_the_stream_a_replica_sends() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    answer = {"id": "cmpl-1", "created": 7, "model": "small", "usage": usage, "choices": [
        {"index": 0, "text": "Hé", "logprobs": None, "finish_reason": "length"},
        {"index": 1, "text": "!", "logprobs": None, "finish_reason": "stop"},
    ]}
    events = answer_as_stream(answer, chat=False, include_usage=True).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert [chunk["choices"] for chunk in chunks[:-1]] == [[choice] for choice in answer["choices"]]
    assert chunks[-1]["usage"] == usage and chunks[-1]["choices"] == []
    assert {(chunk["id"], chunk["object"], chunk["created"], chunk["model"]) for chunk in chunks} == {
        ("cmpl-1", "text_completion", 7, "small")
    }
    assert "usage" not in json.loads(answer_as_stream(answer, chat=False, include_usage=False).split(b"\n\n")[0][6:])


@pytest.fixture(scope="module")
def cascade(
    small_and_large: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    """The shared "small" and "large" replicas behind a router with the routes "confident" and "doubtful"."""
    text = with_replicas(MODELS, small_and_large) + CASCADES
    with RouterProcess("--config", str(write(tmp_path_factory.mktemp("cascade"), text))) as router:
        yield router


def ask(url: str, model: str, body: dict) -> httpx.Response:
    """A greedy request for `model`, to the chat or completions API as the body's fields say."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    return httpx.post(f"{url}{path}", json={**body, "model": model, "temperature": 0}, timeout=TIMEOUT)


def texts(answer: dict) -> list[str]:
    return [choice["message"]["content"] if "message" in choice else choice["text"] for choice in answer["choices"]]


class Counts:
    """The router's metrics a cascade changes, read before and after, so each test sees only its own requests."""

    SAMPLES = {
        "small": ("lmserve_router:backend_requests_total", {"model": "small"}),
        "large": ("lmserve_router:backend_requests_total", {"model": "large"}),
        "small_cost": ("lmserve_router:cost_dollars_total", {"model": "small"}),
        "large_cost": ("lmserve_router:cost_dollars_total", {"model": "large"}),
    }

    def __init__(self, router: RouterProcess, route: str) -> None:
        self.router = router
        self.samples = {
            **self.SAMPLES,
            "accepted": ("lmserve_router:cascade_decisions_total", {"route": route, "decision": "accepted"}),
            "escalated": ("lmserve_router:cascade_decisions_total", {"route": route, "decision": "escalated"}),
            "saved": ("lmserve_router:cost_saved_dollars_total", {"route": route}),
            "wasted": ("lmserve_router:cost_wasted_dollars_total", {"route": route}),
        }
        self.before = self.read()

    def read(self) -> dict[str, float]:
        return {key: self.router.metric(name, **labels) for key, (name, labels) in self.samples.items()}

    def changes(self) -> dict[str, float]:
        return {key: value - self.before[key] for key, value in self.read().items()}


def served(response: httpx.Response, model: str, decision: str) -> dict:
    """The answer, checked: it succeeded, names `model` in its body and header, says `decision`, and carries no
    logprobs (the client asked for none)."""
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], response.headers["x-lmserve-model"]) == (model, model)
    assert response.headers["x-lmserve-cascade"] == decision
    assert [choice["logprobs"] for choice in answer["choices"]] == [None] * len(answer["choices"])
    return answer


def test_answers_that_pass_come_from_the_small_model_and_the_large_one_gets_nothing(
    cascade: RouterProcess, small_and_large: dict[str, ServerProcess]
) -> None:
    counts = Counts(cascade, "confident")
    small_cost = 0.0
    for body in REQUESTS:
        answer = served(ask(cascade.url, "confident", body), "small", "accepted")
        alone = ask(small_and_large["small"].url, "small", body).json()
        assert texts(answer) == texts(alone) and answer["usage"] == alone["usage"]
        small_cost += cost(answer["usage"], "small")
    changes = counts.changes()
    assert (changes["small"], changes["large"]) == (len(REQUESTS), 0)
    assert (changes["accepted"], changes["escalated"]) == (len(REQUESTS), 0)
    assert (changes["small_cost"], changes["wasted"]) == (pytest.approx(small_cost), 0)
    assert changes["saved"] > 0


def test_logprobs_the_client_asked_for_stay_in_an_accepted_answer(cascade: RouterProcess) -> None:
    response = ask(cascade.url, "confident", {**CHAT, "logprobs": True, "top_logprobs": 2})
    assert response.headers["x-lmserve-cascade"] == "accepted"
    (choice,) = response.json()["choices"]
    tokens = choice["logprobs"]["content"]
    assert tokens and all(len(token["top_logprobs"]) == 2 for token in tokens)


def test_answers_that_fail_come_from_the_large_model_as_it_alone_answers(
    cascade: RouterProcess, small_and_large: dict[str, ServerProcess]
) -> None:
    counts = Counts(cascade, "doubtful")
    small_cost = large_cost = 0.0
    for body in REQUESTS:
        answer = served(ask(cascade.url, "doubtful", body), "large", "escalated")
        alone = ask(small_and_large["large"].url, "large", body).json()
        assert texts(answer) == texts(alone) and answer["usage"] == alone["usage"]
        small_cost += cost(ask(small_and_large["small"].url, "small", body).json()["usage"], "small")  # the first try
        large_cost += cost(answer["usage"], "large")
    changes = counts.changes()
    assert (changes["small"], changes["large"]) == (len(REQUESTS), len(REQUESTS))
    assert (changes["accepted"], changes["escalated"]) == (0, len(REQUESTS))
    assert changes["small_cost"] == pytest.approx(small_cost) and changes["large_cost"] == pytest.approx(large_cost)
    assert (changes["wasted"], changes["saved"]) == (pytest.approx(small_cost), 0)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(("route", "model", "decision"), [("confident", "small", "accepted"),
                                                          ("doubtful", "large", "escalated")])
def test_a_stream_through_the_cascade_says_what_the_whole_answer_says(
    cascade: RouterProcess, route: str, model: str, decision: str, include_usage: bool
) -> None:
    client = openai.OpenAI(base_url=f"{cascade.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chat = {"model": route, "temperature": 0, **CHAT}
    whole = client.chat.completions.create(**chat)
    stream = client.chat.completions.create(**chat, stream=True, **options)
    assert stream.response.headers["x-lmserve-cascade"] == decision
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2 if include_usage else -1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert {chunk.model for chunk in chunks} == {model}
    assert [chunk.usage for chunk in chunks if chunk.usage] == ([whole.usage] if include_usage else [])

    completion = {"model": route, "temperature": 0, **REQUESTS[1]}
    whole = client.completions.create(**completion)
    stream = client.completions.create(**completion, stream=True, **options)
    assert stream.response.headers["x-lmserve-model"] == model
    streamed = {index: "" for index in range(len(whole.choices))}
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert list(streamed.values()) == [choice.text for choice in whole.choices]


@pytest.mark.parametrize("route", ["confident", "doubtful"])
def test_a_streamed_client_gets_one_answer(cascade: RouterProcess, route: str) -> None:
    body = {**CHAT, "model": route, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{cascade.url}/v1/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines.count("[DONE]") == 1 and lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert [choice["delta"].get("role") for chunk in chunks for choice in chunk["choices"]].count("assistant") == 1


def test_echo_is_refused_on_a_cascade_route(cascade: RouterProcess) -> None:
    response = ask(cascade.url, "confident", {"prompt": "hi", "max_tokens": 1, "echo": True})
    assert response.status_code == 400 and "echo" in response.json()["error"]["message"]
