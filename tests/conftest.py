"""Session-wide fixtures: tiny random checkpoints and a tiny trained tokenizer, each built once."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from tests.tiny_models import TinyModelCache
from tests.tiny_tokenizer import make_tokenizer


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModelCache:
    return TinyModelCache(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return make_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))
