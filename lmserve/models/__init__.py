"""Model implementations built from shared layers, and the loader that fills them from checkpoints."""

from lmserve.models.loader import load_model
from lmserve.models.registry import resolve_model_class

__all__ = ["load_model", "resolve_model_class"]
