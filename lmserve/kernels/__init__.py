"""Triton kernels for the GPU path, each beside a plain torch reference that the tests compare it with.

Import this package only where Triton is installed. To run the kernels on a CPU (tests, CI), set
`TRITON_INTERPRET=1` before the first import: Triton decides at decoration time whether to interpret.
"""

from lmserve.kernels.activation import reference_silu_and_mul, silu_and_mul
from lmserve.kernels.kv_cache import reference_write_kv_cache, write_kv_cache
from lmserve.kernels.paged_attention import paged_attention, reference_paged_attention
from lmserve.kernels.rms_norm import reference_rms_norm, rms_norm
from lmserve.kernels.rotary import reference_rotary_embedding, rotary_embedding

__all__ = [
    "paged_attention",
    "reference_paged_attention",
    "reference_rms_norm",
    "reference_rotary_embedding",
    "reference_silu_and_mul",
    "reference_write_kv_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv_cache",
]
