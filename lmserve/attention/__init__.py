"""Attention over the paged KV cache, behind one small interface so backends are interchangeable."""

import functools

from lmserve.attention.backend import AttentionBackend, AttentionMetadata
from lmserve.attention.layer import Attention
from lmserve.attention.torch_backend import TorchAttentionBackend


@functools.cache
def attention_backend(name: str) -> AttentionBackend:
    """The backend called `name`, "torch" or "triton"; backends hold no state, so one instance serves all."""
    if name == "triton":
        from lmserve.attention.triton_backend import TritonAttentionBackend  # needs triton: import on demand

        return TritonAttentionBackend()
    return TorchAttentionBackend()


__all__ = ["Attention", "AttentionBackend", "AttentionMetadata", "TorchAttentionBackend", "attention_backend"]
