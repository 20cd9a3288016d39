"""Attention over the paged KV cache, behind one small interface so backends are interchangeable."""

from lmserve.attention.backend import AttentionBackend, AttentionMetadata
from lmserve.attention.layer import Attention
from lmserve.attention.torch_backend import TorchAttentionBackend

__all__ = ["Attention", "AttentionBackend", "AttentionMetadata", "TorchAttentionBackend"]
