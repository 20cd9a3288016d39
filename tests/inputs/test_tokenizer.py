"""Loading the tokenizer from a model directory, and the tiny test tokenizer itself."""

import json

import pytest
from transformers import PreTrainedTokenizerFast

from lmserve.errors import ModelLoadError
from lmserve.inputs.tokenizer import load_tokenizer
from tests.tiny_tokenizer import make_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("model")
    make_tokenizer(directory)
    return directory


def test_loads_the_fast_tokenizer_saved_in_the_directory(model_dir):
    tokenizer = load_tokenizer(model_dir)

    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    text = "Größe 中文 😀 def f():"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|endoftext|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    messages = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_tokenizer_fits_tiny_models_and_is_deterministic(tmp_path, model_dir):
    tokenizer = make_tokenizer(tmp_path)

    assert 400 <= len(tokenizer) <= 512
    assert (tmp_path / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()
    assert len(tokenizer.encode("中")) > 1  # multi-byte characters split across tokens


def test_directory_without_tokenizer_files_is_a_load_error(tmp_path):
    # A config.json alone would let AutoTokenizer build an empty tokenizer instead of failing.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))

    with pytest.raises(ModelLoadError, match="no tokenizer files.*skip_tokenizer_init"):
        load_tokenizer(tmp_path)


def test_missing_directory_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_corrupt_tokenizer_file_is_a_load_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")

    with pytest.raises(ModelLoadError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)
