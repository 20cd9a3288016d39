"""The KV cache's element type: the model's own, or float8 (e4m3), which halves the bytes a decode step reads.

Float8 values are stored as they are, with no scale (as vLLM does for checkpoints that carry none): e4m3
keeps 3 mantissa bits over a range of +-448, and values beyond it saturate there instead of becoming NaN.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")  # auto: the model's dtype; fp8 is fp8_e4m3
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
FLOAT8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper convert float8 in hardware; Triton has no float8 below


def kv_cache_torch_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache's torch dtype for a `KV_CACHE_DTYPES` name (the engine's config has checked it)."""
    return model_dtype if name == "auto" else torch.float8_e4m3fn


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` as a cache of `dtype` stores it: rounded to nearest even, float8 saturated at +-448."""
    if dtype == torch.float8_e4m3fn:
        x = x.float().clamp(-FP8_MAX, FP8_MAX)
    return x.to(dtype)


def store_rows(cache_rows: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """cache_rows[slots] = rows, in the cache's dtype (index_copy_ has no float8 kernel: copy the bytes)."""
    rows = to_cache_dtype(rows, cache_rows.dtype)
    if cache_rows.dtype == torch.float8_e4m3fn:
        cache_rows, rows = cache_rows.view(torch.uint8), rows.view(torch.uint8)
    cache_rows.index_copy_(0, slots, rows)
