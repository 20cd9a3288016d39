"""Model routing's classifier: the heuristic routes the packaged labeled set as labeled, explains itself, reads
any request body without raising; the kNN classifier votes among embedded examples."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from lmserve.errors import ConfigError, ModelLoadError
from lmserve.router.classifier import (
    LABELS,
    WEIGHTS,
    ClassifierConfig,
    Decision,
    HeuristicClassifier,
    build_classifier,
    load_examples,
    read_request,
)
from lmserve.router.embeddings import KnnClassifier, TextEmbedder, nearest_label

EXAMPLES = load_examples()
HEURISTIC = HeuristicClassifier(ClassifierConfig())
PROSE = "The committee met on Tuesday to review the budget and the schedule for the new library building. "


def chat(*turns: str, **fields: object) -> dict:
    """A chat body whose turns alternate user, assistant, user, ..."""
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)], **fields}


def test_the_packaged_set_is_large_balanced_and_covers_both_endpoints():
    labels = [example.label for example in EXAMPLES]
    assert len(EXAMPLES) >= 60
    assert labels.count("simple") >= 25 and labels.count("complex") >= 25
    assert sum("prompt" in example.body for example in EXAMPLES) >= 15
    assert sum(read_request(example.body).user_turns >= 2 for example in EXAMPLES) >= 5


def test_the_heuristic_routes_the_packaged_set_as_labeled():
    misses = [
        (example.label, read_request(example.body).user_text[:60])
        for example in EXAMPLES
        if HEURISTIC.classify(example.body).label != example.label
    ]
    assert 1 - len(misses) / len(EXAMPLES) >= 0.9, misses


def test_a_decision_is_its_weighted_features_against_the_threshold():
    for example in EXAMPLES:
        decision = HEURISTIC.classify(example.body)
        assert decision.score == pytest.approx(sum(WEIGHTS[reason] for reason in decision.reasons))
        assert decision.label == ("complex" if decision.score >= 1.0 else "simple")


@pytest.mark.parametrize(
    ("body", "label", "reasons"),
    [
        (chat("hi"), "simple", []),
        ({"prompt": "What is the capital of Peru?"}, "simple", []),
        (chat("What is 2 + 2?"), "simple", ["arithmetic"]),
        (chat("Is the sky blue? Answer yes or no."), "simple", ["short_answer"]),
        (chat("Tell me a story.", max_tokens=4096), "simple", ["large_max_tokens"]),
        (chat("Explain why the sky is blue, in one sentence."), "simple", ["reasoning", "short_answer"]),
        (chat("Why?\n```python\nprint(items[3])\n```"), "complex", ["code"]),
        (chat("Write a Go program that tails a log file."), "complex", ["code"]),
        ({"prompt": "Prove that there are infinitely many primes."}, "complex", ["math"]),
        ({"prompt": r"Compute $\int_0^1 x^2 dx$."}, "complex", ["math"]),
        (chat("Compare Postgres and MySQL for an analytics workload."), "complex", ["reasoning"]),
        ({"prompt": PROSE * 20 + "Summarize this."}, "complex", ["long_prompt"]),
        ({"prompt": PROSE * 4, "max_completion_tokens": 2000}, "complex", ["medium_prompt", "large_max_tokens"]),
        ({"prompt": list(range(8000))}, "complex", ["long_prompt"]),
    ],
)
def test_hand_picked_requests(body: dict, label: str, reasons: list[str]):
    assert HEURISTIC.classify(body) == Decision(label, sum(WEIGHTS[reason] for reason in reasons), reasons)


def test_a_deep_conversation_with_a_long_system_prompt_is_complex_though_each_turn_is_short():
    turns = chat("hi", "Hello!", "Can you help me?", "Sure.", "Thanks.", "Anything else?", "One more thing.")
    body = {"messages": [{"role": "system", "content": PROSE * 15}, *turns["messages"]]}
    assert HEURISTIC.classify(body).reasons == ["deep_conversation", "long_system_prompt"]
    assert HEURISTIC.classify(body).label == "complex"


def test_the_thresholds_come_from_the_config():
    body = chat("Tell me a story.", max_tokens=4096)
    assert build_classifier(ClassifierConfig(threshold=0.5)).classify(body).label == "complex"
    assert build_classifier(ClassifierConfig(large_max_tokens=8192)).classify(body).reasons == []


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "hello",
        {},
        {"prompt": ""},
        {"prompt": None},
        {"prompt": 7},
        {"prompt": []},
        {"prompt": ["Translate 'cat' to French.", "Prove Fermat's little theorem."]},
        {"prompt": [1, 2, 3]},
        {"prompt": [[1, 2], [3, 4, 5]]},
        {"prompt": [None, {"a": 1}]},
        {"messages": None},
        {"messages": "hi"},
        {"messages": [None, 3, "x", []]},
        {"messages": [{"role": "user"}, {"content": "no role"}, {"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": None}, "plain", 3, None]}]},
        {"messages": [{"role": "system", "content": {"text": "odd"}}], "max_tokens": "lots"},
        {"prompt": "hi", "max_tokens": True, "max_completion_tokens": None},
        {"prompt": "x" * 1_000_000},
    ],
)
def test_any_body_gets_a_decision_without_raising(body: object):
    decision = HEURISTIC.classify(body)
    assert decision.label in LABELS and all(reason in WEIGHTS for reason in decision.reasons)


def test_read_request_takes_user_text_from_either_endpoint():
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "x"}}, "this"]
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "And its colour?"},
        ],
        "max_tokens": 50,
    }
    request = read_request(body)
    assert (request.user_text, request.system_text) == ("Describe\nthis\nAnd its colour?", "Be brief.")
    assert (request.user_turns, request.token_ids, request.max_tokens) == (2, 0, 50)
    assert read_request({"prompt": ["a", "b"]}).user_text == "a\nb"
    assert read_request({"prompt": [[1, 2], [3]]}).token_ids == 3


def test_the_heuristic_takes_microseconds():
    start = time.perf_counter()
    for example in EXAMPLES * 10:
        HEURISTIC.classify(example.body)
    # About 30 us on a laptop core; the bound leaves room for a slow CI machine.
    assert (time.perf_counter() - start) / (len(EXAMPLES) * 10) < 1e-3


@pytest.mark.parametrize(
    ("options", "message"),
    [({"kind": "bert"}, "kind"), ({"k": 0}, "k"), ({"medium_prompt_words": 300}, "medium_prompt_words")],
)
def test_a_bad_config_is_refused(options: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        ClassifierConfig(**options)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"prompt": "hi", "label": "easy"}', "label"),
        ('{"prompt": [1, 2], "label": "simple"}', "text"),
    ],
)
def test_a_malformed_examples_file_names_its_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "examples.jsonl"
    path.write_text('{"prompt": "hello", "label": "simple"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=rf"examples.jsonl:2: .*{message}"):
        load_examples(str(path))


@pytest.fixture(scope="module")
def knn() -> KnnClassifier:
    classifier = build_classifier(ClassifierConfig(kind="knn"))
    assert isinstance(classifier, KnnClassifier)
    return classifier


def test_knn_gives_an_example_its_own_label(knn: KnnClassifier):
    for example in EXAMPLES:
        assert knn.classify(example.body) == Decision(example.label, 1.0, ["knn_exact"])


def test_knn_routes_each_example_by_the_others_as_labeled(knn: KnnClassifier):
    """Leave one out: 70 of 80 right with the embedded default model and k=5 (a code model, not a sentence model)."""
    similarities = knn.vectors @ knn.vectors.T
    similarities.fill_diagonal_(-float("inf"))
    right = sum(nearest_label(similarities[i], knn.labels, knn.k)[0] == knn.labels[i] for i in range(len(knn.labels)))
    assert right / len(knn.labels) >= 0.8


def test_knn_votes_on_new_requests_and_leaves_token_ids_to_the_heuristic(knn: KnnClassifier):
    assert knn.classify(chat("What's the capital of Spain?")) == Decision("simple", 1.0, ["knn"])
    assert knn.classify({"prompt": list(range(8000))}) == HEURISTIC.classify({"prompt": list(range(8000))})


def test_knn_reads_its_examples_file_and_k_from_the_config(tmp_path: Path):
    path = tmp_path / "examples.jsonl"
    lines = [{"prompt": "def add(a, b):\n    return a + b", "label": "complex"}, {**chat("Hello!"), "label": "simple"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    knn = build_classifier(ClassifierConfig(kind="knn", examples=str(path), k=1))
    assert knn.classify({"prompt": "def mul(a, b):\n    return a * b"}).label == "complex"
    assert knn.classify(chat("Hello there!")) == Decision("simple", 1.0, ["knn"])


def test_nearest_label_is_the_majority_and_breaks_ties_by_similarity():
    labels = ["simple", "complex", "complex", "simple"]
    assert nearest_label(torch.tensor([0.9, 0.8, 0.7, 0.1]), labels, 3) == ("complex", pytest.approx(2 / 3))
    assert nearest_label(torch.tensor([0.9, 0.8, 0.1, 0.1]), labels, 2) == ("simple", 0.5)
    assert nearest_label(torch.tensor([0.1, 0.2, 0.3, 0.9]), labels, 10) == ("simple", 0.5)  # k > examples


def test_embeddings_are_unit_vectors_whatever_the_batch(knn: KnnClassifier):
    texts = ["hi", "A much longer sentence, so that the first one is padded in the batch."]
    together = knn.embedder.embed(texts)
    alone = torch.cat([knn.embedder.embed([text]) for text in texts])
    assert together.dtype == torch.float32 and together.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert knn.embedder.embed([]).shape == (0, together.shape[1])


def test_a_missing_embedding_model_is_a_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="embedding model"):
        TextEmbedder(str(tmp_path / "nowhere"))
