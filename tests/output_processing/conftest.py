"""The tiny tokenizer, trained once per test run."""

import pytest
from transformers import PreTrainedTokenizerFast

from tests.tiny_tokenizer import make_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return make_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))
