"""Prompt sources: random word prompts, and JSONL datasets of completion prompts or chat messages."""

import json
from pathlib import Path

import pytest

from lmserve.bench.workload import WORDS, BenchRequest, load_dataset, random_requests
from lmserve.errors import ConfigError


def test_random_prompts_are_words_of_the_asked_length_and_fixed_by_the_seed():
    requests = random_requests(num_prompts=5, input_len=12, output_len=7, seed=0)
    assert len(requests) == 5
    for request in requests:
        assert len(request.prompt.split()) == 12 and set(request.prompt.split()) <= set(WORDS)
        assert (request.messages, request.max_tokens) == (None, 7)
    assert len({request.prompt for request in requests}) == 5  # distinct, so no prompt hits the prefix cache
    assert random_requests(5, 12, 7, seed=0) == requests
    assert random_requests(5, 12, 7, seed=1) != requests


def write_jsonl(path: Path, entries: list) -> Path:
    path.write_text("\n".join(json.dumps(entry) for entry in entries) + "\n")
    return path


def test_a_dataset_holds_prompts_or_messages(tmp_path: Path):
    messages = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"prompt": "import os", "max_tokens": 8}, {"messages": messages}, {"prompt": "def f():", "max_tokens": 2},
    ])
    assert load_dataset(path) == [
        BenchRequest(prompt="import os", max_tokens=8), BenchRequest(messages=messages),
        BenchRequest(prompt="def f():", max_tokens=2),
    ]
    assert len(load_dataset(path, num_prompts=2)) == 2


@pytest.mark.parametrize("entry, words", [
    ({"text": "x"}, '"prompt"'),
    ({"prompt": "x", "messages": []}, "either"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ([1, 2], '"prompt"'),
])
def test_bad_dataset_lines_name_the_line(tmp_path: Path, entry, words: str):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "fine"}, entry])
    with pytest.raises(ConfigError, match=f"data.jsonl:2: .*{words}"):
        load_dataset(path)


def test_an_empty_dataset_is_refused(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no prompts"):
        load_dataset(tmp_path / "empty.jsonl")
