"""Matrix-vector product for one-token steps: out = x @ weight.T (+ bias) with x of a single row.

A batch-1 decode step reads every weight once and does almost no arithmetic, so only the bandwidth
counts. cuBLAS's tiles for one row leave part of it unused on some shapes (benchmarks/gemv_kernel.py
measures them side by side). Here each program owns `BLOCK_N` output features and streams their weight
rows through registers `BLOCK_K` columns at a time, accumulating products in float32 and reducing once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    num_features,
    num_inputs,
    stride_weight,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_mask = features < num_features
    rows = weight_ptr + features.to(tl.int64)[:, None] * stride_weight
    products = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, num_inputs, BLOCK_K):
        columns = start + tl.arange(0, BLOCK_K)
        column_mask = columns < num_inputs
        x = tl.load(x_ptr + columns, mask=column_mask, other=0.0).to(tl.float32)
        weight = tl.load(rows + columns[None, :], mask=feature_mask[:, None] & column_mask[None, :], other=0.0)
        products += weight.to(tl.float32) * x[None, :]
    out = tl.sum(products, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + features, mask=feature_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + features, out.to(out_ptr.dtype.element_ty), mask=feature_mask)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block_n: int = 8,
    block_k: int = 512,
    num_warps: int = 4,
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for `x` of shape [1, in_features]; weight rows must be contiguous.

    `block_n`, `block_k` and `num_warps` override the tile (benchmarks tune them; powers of two).
    """
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [1, {weight.shape[1]}], got {tuple(x.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("weight rows must be contiguous")
    x = x.contiguous()
    num_features = weight.shape[0]
    out = torch.empty(1, num_features, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(num_features, block_n),)](
        x,
        weight,
        bias if bias is not None else weight,  # unread without a bias
        out,
        num_features,
        weight.shape[1],
        weight.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=num_warps,
    )
    return out
