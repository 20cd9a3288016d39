"""Warm the L2 cache with a tensor that a later kernel reads: bulk prefetches, no data through the SMs.

At decode batch 1 a layer's projections stream their weights from memory while the kernels between them
(rotary, the cache write, attention) read almost nothing, and memory idles. Launched on a side stream
beside those kernels, `prefetch_to_l2` loads the next projection's weight into L2 in that idle time, and
the projection then reads it from L2. Each thread issues one Hopper bulk prefetch
(`cp.async.bulk.prefetch.L2`) of a chunk: a hint that holds no registers while the bytes arrive, so a few
programs keep memory busy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_CHUNK_BYTES = 16384
_CHUNKS_PER_PROGRAM = 128  # one a thread at 4 warps


@triton.jit
def _prefetch_kernel(base_ptr, num_bytes, CHUNK_BYTES: tl.constexpr, BLOCK: tl.constexpr):
    chunks = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offsets = chunks.to(tl.int64) * CHUNK_BYTES
    # Sizes must be multiples of 16 bytes; chunks past the end get none and issue nothing.
    sizes = (tl.minimum(num_bytes - offsets, CHUNK_BYTES) // 16 * 16).to(tl.int32)
    addresses = (base_ptr + offsets).to(tl.int64, bitcast=True)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r",
        [addresses, sizes],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


def supports(tensor: torch.Tensor) -> bool:
    """Whether this device has bulk prefetches (Hopper and later, sm_90+)."""
    return tensor.is_cuda and torch.cuda.get_device_capability(tensor.device)[0] >= 9


def prefetch_to_l2(tensor: torch.Tensor, chunk_bytes: int = _CHUNK_BYTES) -> None:
    """Ask the GPU to bring `tensor`'s bytes into L2 (a contiguous tensor on a device that `supports` it).
    Changes nothing that a kernel reads: only where the bytes are cached."""
    if not supports(tensor) or not tensor.is_contiguous():
        raise ValueError("prefetch_to_l2 takes a contiguous tensor on a Hopper (sm_90+) GPU")
    if chunk_bytes % 16 or chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be a positive multiple of 16, got {chunk_bytes}")
    num_bytes = tensor.numel() * tensor.element_size()
    num_chunks = triton.cdiv(num_bytes, chunk_bytes)
    if num_chunks:
        grid = (triton.cdiv(num_chunks, _CHUNKS_PER_PROGRAM),)
        _prefetch_kernel[grid](tensor.reshape(-1).view(torch.uint8), num_bytes, CHUNK_BYTES=chunk_bytes,
                               BLOCK=_CHUNKS_PER_PROGRAM)
