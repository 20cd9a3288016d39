"""Layers shared by the model families: normalisation, rotary embedding, fused projections."""

from lmserve.models.layers.linear import MergedLinear
from lmserve.models.layers.normalization import RMSNorm
from lmserve.models.layers.rotary import RotaryEmbedding

__all__ = ["MergedLinear", "RMSNorm", "RotaryEmbedding"]
