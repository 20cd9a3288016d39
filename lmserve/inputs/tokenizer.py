"""Loads the model's tokenizer from its directory, failing with a clear ModelLoadError; encodes request text."""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmserve.errors import InvalidRequestError, ModelLoadError

# A tokenizer needs its vocabulary: without one of these files, AutoTokenizer may build an empty
# tokenizer from config.json alone instead of failing.
_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(model_dir: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The fast (Rust `tokenizers`) tokenizer in model_dir; the detokenizer streams through its backend."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ModelLoadError(f"model directory {model_dir!r} does not exist")
    if not any(os.path.isfile(os.path.join(model_dir, name)) for name in _VOCABULARY_FILES):
        raise ModelLoadError(
            f"{model_dir!r} holds no tokenizer files (one of {', '.join(_VOCABULARY_FILES)}); "
            "add them, or pass skip_tokenizer_init=True and give prompts as token ids"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError or tokenizers' own errors
        raise ModelLoadError(f"cannot load the tokenizer in {model_dir!r}: {error}") from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelLoadError(
            f"the tokenizer in {model_dir!r} is a slow {type(tokenizer).__name__}; lmserve needs a fast "
            "tokenizer (a tokenizer.json file)"
        )
    return tokenizer


def encode_text(tokenizer: PreTrainedTokenizerFast, text: str, **options) -> list[int]:
    """`tokenizer.encode(text, **options)`, refusing text that is not Unicode: JSON may escape a lone
    surrogate (\\ud800), which the tokenizer cannot take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequestError(f"text must be valid Unicode: {error.reason} at position {error.start}") from None
    return tokenizer.encode(text, **options)
