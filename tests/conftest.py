"""Session-wide fixtures: tiny random checkpoints and a tiny trained tokenizer, each built once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.kernels.triton_setup import use_interpreter_without_gpu
from tests.tiny_models import TinyModelCache
from tests.tiny_tokenizer import make_tokenizer

# Before anything imports lmserve.kernels: without a GPU, Triton kernels run in its interpreter.
use_interpreter_without_gpu()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModelCache:
    return TinyModelCache(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return make_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def text_model_dir(tiny_models: TinyModelCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny "llama" checkpoint with the tiny tokenizer saved beside it, so prompts can be text.

    Treat it as read-only; tests that change a file work on a copy.
    """
    model_dir = tmp_path_factory.mktemp("text_model") / "llama"
    shutil.copytree(tiny_models.get("llama"), model_dir)
    make_tokenizer(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def text_tokenizer(text_model_dir: Path) -> PreTrainedTokenizerFast:
    """The tokenizer in text_model_dir, loaded by transformers itself: the reference for lmserve's texts."""
    return AutoTokenizer.from_pretrained(text_model_dir)
