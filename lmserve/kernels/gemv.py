"""Small-batch projections with the step before them fused in: y = prologue(x) @ W.T for a few rows.

At decode batch sizes a projection reads its whole weight to compute a few rows, and the small kernels
around it (the residual add and RMSNorm before q/k/v and gate/up, SwiGLU's activation before down, and
cuBLAS's own split-K reduction) each cost a launch that takes longer than its arithmetic. Here one program
streams `BLOCK_N` weight rows over the whole input width, and builds its input tile on the fly:

- `"add_rms_norm"`: x + residual, normalised by its root mean square and scaled by the norm weight. The
  sum of squares accumulates over the same pass as the product, and the product is scaled by the inverse
  root mean square at the end (the norm is linear in it). The first column block of programs also writes
  x + residual out, the next block's residual.
- `"rms_norm"`: the same without a residual (the first layer's input norm).
- `"silu_and_mul"`: silu(gate) * up of a fused gate/up projection, rounded as the unfused kernel rounds it.
- `"none"`: x as it is.

The weight is [out, in] with contiguous rows, as checkpoints hold it. Products run on the CUDA cores and
accumulate elementwise in float32, summed once at the end: summing each column block as it arrives costs
a cross-warp reduction an iteration, and ran slower on an H200. On the tensor cores, with the rows padded
to 16, the prologue's layout follows the operand's and every thread computes it again (32 times the
exponentials at one row, in the compiled code), and the kernel ran 3-10 times slower than cuBLAS.

The column loop is software-pipelined (`num_stages` > 1: Triton copies the next tiles into shared memory
asynchronously while it works on this one), so each program keeps several tiles of its weight rows in
flight: at one row a projection is bound by how many bytes wait on memory at once, not by arithmetic.
Without it the kernel lost to cuBLAS on Llama-3.1-8B's weights; with it, its fused step included, it beat
cuBLAS and the unfused kernels on q/k/v, o and down and came within 3% on gate/up, on an H200
(benchmarks/results/linear-small-batch-*-h200-gemv-pipelined-sum-once.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

PROLOGUES = ("none", "rms_norm", "add_rms_norm", "silu_and_mul")
MAX_ROWS = 4  # every row adds a weight tile's worth of products and accumulators


@dataclass(frozen=True)
class GemvTile:
    """Weight rows per program, input columns per iteration at one row (halved for each doubling of the
    rows, so the product tile stays the same size in registers), the launch's warps, and the column tiles
    in flight (the software pipeline's stages)."""

    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _gemv_kernel(
    x_ptr,  # [rows, in] (silu_and_mul: [rows, 2 * in], gate then up)
    residual_ptr,  # add_rms_norm: [rows, in]
    norm_weight_ptr,  # rms_norm, add_rms_norm: [in]
    weight_ptr,  # [out, in], rows contiguous
    bias_ptr,  # [out] when HAS_BIAS
    out_ptr,  # [rows, out]
    new_residual_ptr,  # add_rms_norm: [rows, in], x + residual
    num_rows,
    num_out,
    num_in,
    stride_x,
    stride_residual,
    stride_weight,
    stride_out,
    eps,
    NORM: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    SILU_AND_MUL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    block = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    outs = block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < num_rows
    out_valid = outs < num_out
    dtype = out_ptr.dtype.element_ty
    # Products accumulate elementwise and are summed over the columns once, after the loop.
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    sum_squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in tl.range(0, num_in, BLOCK_K, num_stages=NUM_STAGES):
        columns = start + tl.arange(0, BLOCK_K)
        column_valid = columns < num_in
        mask = row_valid[:, None] & column_valid[None, :]
        x_offsets = rows[:, None].to(tl.int64) * stride_x + columns[None, :]
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0)
        if SILU_AND_MUL:
            gate = x.to(tl.float32)
            up = tl.load(x_ptr + x_offsets + num_in, mask=mask, other=0.0).to(tl.float32)
            activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
            x = (activated * up).to(dtype)
        if ADD_RESIDUAL:
            residual_offsets = rows[:, None].to(tl.int64) * stride_residual + columns[None, :]
            residual = tl.load(residual_ptr + residual_offsets, mask=mask, other=0.0)
            # Rounded to the input dtype, as the unfused add is.
            x = (x.to(tl.float32) + residual.to(tl.float32)).to(dtype)
            tl.store(new_residual_ptr + residual_offsets, x, mask=mask & (block == 0))
        x32 = x.to(tl.float32)
        if NORM:
            sum_squares += tl.sum(x32 * x32, axis=1)
            norm_weight = tl.load(norm_weight_ptr + columns, mask=column_valid, other=0.0).to(tl.float32)
            x32 = (x32 * norm_weight[None, :]).to(dtype).to(tl.float32)
        weight = tl.load(
            weight_ptr + outs[:, None].to(tl.int64) * stride_weight + columns[None, :],
            mask=out_valid[:, None] & column_valid[None, :],
            other=0.0,
        ).to(tl.float32)
        # A few rows: products on the CUDA cores, each row's input laid out once beside the weight tile.
        acc += x32[:, None, :] * weight[None, :, :]
    out = tl.sum(acc, axis=2)
    if NORM:
        out *= tl.rsqrt(sum_squares / num_in + eps)[:, None]
    if HAS_BIAS:
        out += tl.load(bias_ptr + outs, mask=out_valid, other=0.0).to(tl.float32)[None, :]
    out_offsets = rows[:, None].to(tl.int64) * stride_out + outs[None, :]
    tl.store(out_ptr + out_offsets, out.to(dtype), mask=row_valid[:, None] & out_valid[None, :])


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `gemv` serves this input and weight: at most MAX_ROWS rows, 16-bit, rows of W contiguous."""
    return (
        x.shape[0] <= MAX_ROWS
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.stride(1) == 1
    )


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    prologue: str = "none",
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    tile: GemvTile = GemvTile(),
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reference_gemv` in one launch for at most MAX_ROWS rows; returns (out, x + residual) for
    `"add_rms_norm"`, else out. x and residual are [rows, in] with contiguous rows (silu_and_mul: [rows,
    2 * in]); weight is [out, in] with contiguous rows."""
    if prologue not in PROLOGUES:
        raise ValueError(f"prologue must be one of {PROLOGUES}, got {prologue!r}")
    num_out, num_in = weight.shape
    width = 2 * num_in if prologue == "silu_and_mul" else num_in
    if x.dim() != 2 or x.shape[1] != width or x.stride(1) != 1:
        raise ValueError(f"x must be [rows, {width}] with contiguous rows, got {tuple(x.shape)}")
    if not supports(x, weight):
        raise ValueError(f"gemv takes at most {MAX_ROWS} 16-bit rows and a weight with contiguous rows")
    norm = prologue in ("rms_norm", "add_rms_norm")
    if norm and (norm_weight is None or norm_weight.shape != (num_in,)):
        raise ValueError(f"prologue {prologue!r} needs a norm weight of shape ({num_in},)")
    add_residual = prologue == "add_rms_norm"
    if add_residual and (residual is None or residual.shape != x.shape or residual.stride(1) != 1):
        raise ValueError("prologue 'add_rms_norm' needs a residual of x's shape with contiguous rows")
    num_rows = x.shape[0]
    out = torch.empty(num_rows, num_out, dtype=x.dtype, device=x.device)
    new_residual = torch.empty_like(x) if add_residual else out
    if num_rows:
        block_m = triton.next_power_of_2(num_rows)
        _gemv_kernel[(triton.cdiv(num_out, tile.block_n),)](
            x,
            residual if add_residual else x,
            norm_weight if norm else weight,
            weight,
            bias if bias is not None else weight,
            out,
            new_residual,
            num_rows,
            num_out,
            num_in,
            x.stride(0),
            residual.stride(0) if add_residual else 0,
            weight.stride(0),
            out.stride(0),
            eps,
            NORM=norm,
            ADD_RESIDUAL=add_residual,
            SILU_AND_MUL=prologue == "silu_and_mul",
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=tile.block_n,
            BLOCK_K=max(16, tile.block_k // block_m),
            NUM_STAGES=tile.num_stages,
            num_warps=tile.num_warps,
        )
    return (out, new_residual) if add_residual else out


def reference_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    prologue: str = "none",
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The unfused torch ops that `gemv` replaces."""
    from lmserve.kernels.activation import reference_silu_and_mul
    from lmserve.kernels.rms_norm import reference_rms_norm

    new_residual = None
    if prologue == "silu_and_mul":
        x = reference_silu_and_mul(x)
    elif prologue == "rms_norm":
        x = reference_rms_norm(x, norm_weight, eps)
    elif prologue == "add_rms_norm":
        x, new_residual = reference_rms_norm(x, norm_weight, eps, residual)
    out = torch.nn.functional.linear(x, weight, bias)
    return out if new_residual is None else (out, new_residual)
