"""A tiny byte-level BPE tokenizer trained on the fly, so tests need no model hub.

Its vocabulary (under 512 entries) fits the tiny test models; the non-ASCII training text makes some merges
cover parts of multi-byte characters, so characters split across tokens as they do in real tokenizers.
"""

from __future__ import annotations

import inspect
import json
import shlex
import textwrap
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 480
# In this order the ids match the tiny model configs: bos (<|endoftext|>) = 1, eos (<|im_end|>) = 2.
SPECIAL_TOKENS = ["<|im_start|>", "<|endoftext|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_NON_ASCII_TEXT = """
Café, naïve façade, crème brûlée, smörgåsbord, Ærø, jalapeño, São Paulo, Zürich, Łódź.
Größe, Straße, Übermäßig schön. Ελληνικά γράμματα. Привет, как дела? Здравствуй, мир!
日本語のテキストです。東京は大きな都市です。こんにちは世界。
中文文本：你好，世界！我们今天学习分词器。北京和上海都是大城市。
한국어 문장입니다. 안녕하세요 세계.
Emoji: 😀 😃 🎉 🚀 👍🏽 👨‍👩‍👧 ❤️ 🇫🇷 — “quotes” and ‘single’ … done.
"""


def _training_texts() -> list[str]:
    """About 50 KB of stdlib Python source plus multilingual text; fixed for a given Python, so stable."""
    sources = [inspect.getsource(module) for module in (textwrap, shlex, json)]
    return sources + [_NON_ASCII_TEXT] * 8


def make_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train the tiny tokenizer, save it (tokenizer.json + config) into out_dir and return it."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
