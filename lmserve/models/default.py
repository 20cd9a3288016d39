"""Where the embedded default model lives: the model `lmserve serve` runs when no model is named.

It is a small Llama (about 6M parameters, 12 MB) with a byte-level BPE tokenizer and a ChatML template, trained
on the Python standard library's own sources by `scripts/train_default_model.py`; its folder's TRAINING.md holds
the exact command, the device and the losses. It writes code-like text, not good code: it is there so that
lmserve runs, and tests have a real trained model, on a machine with no model downloaded.
"""

from __future__ import annotations

from pathlib import Path

# The folder ships as package data (see pyproject.toml), so it sits beside the installed package too.
DEFAULT_MODEL_DIR = str(Path(__file__).resolve().parent.parent / "default_model")


def default_model_dir() -> str:
    """The Hugging Face model directory of the embedded default model."""
    return DEFAULT_MODEL_DIR
