"""The embedded default model ships small, loads in lmserve, completes code and ends its chat replies."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from lmserve import LLM, SamplingParams
from lmserve.models.default import DEFAULT_MODEL_DIR, default_model_dir

MODEL_DIR = Path(DEFAULT_MODEL_DIR)
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
PRINTABLE = set(string.printable)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(default_model_dir(), max_model_len=256, kv_cache_memory_bytes=16 << 20)


def test_the_folder_holds_a_small_complete_model():
    names = {path.name for path in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"generation_config.json", "TRAINING.md"} <= names
    assert sum(path.stat().st_size for path in MODEL_DIR.iterdir()) < 25e6
    assert json.loads((MODEL_DIR / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_chat_replies_end_at_im_end_as_well_as_endoftext():
    """Completions end at <|endoftext|>; a chat reply ends at <|im_end|>, so both are eos ids."""
    tokenizer = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    special = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
    eos_ids = json.loads((MODEL_DIR / "generation_config.json").read_text())["eos_token_id"]
    assert sorted(eos_ids) == sorted([special["<|endoftext|>"], special["<|im_end|>"]])


def test_bfloat16_weights_run_in_float32_as_the_config_says(llm):
    assert llm.engine.config.model.torch_dtype == torch.float32


def test_greedy_completions_look_like_code(llm):
    outputs = llm.generate(["def ", "import "], GREEDY, use_tqdm=False)
    for output in outputs:
        text = output.outputs[0].text
        assert text.strip(), f"empty completion of {output.prompt!r}"
        printable = sum(character in PRINTABLE for character in text)
        assert printable >= 0.9 * len(text), f"{output.prompt!r} -> {text!r}"
    assert "(" in outputs[0].outputs[0].text  # after "def ", a function's name and its parameters


def test_chat_reply_ends(llm):
    [output] = llm.chat([{"role": "user", "content": "What does `os.path.join` do?"}], GREEDY, use_tqdm=False)
    reply = output.outputs[0]
    assert reply.text.strip()
    assert reply.finish_reason in ("stop", "length")
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
