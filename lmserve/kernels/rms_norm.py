"""RMS normalisation with the residual add fused in, one program per row; one launch instead of about eight."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_WIDTH = 8192  # a whole row sits in one program's registers


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    new_residual_ptr,
    inner_rows,
    stride_x_outer,
    stride_x_inner,
    stride_residual_outer,
    stride_residual_inner,
    width,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Rows are (outer, inner) pairs, so per-head norms read [tokens, heads, head_dim] views of a fused
    # QKV projection in place; out and new_residual are contiguous [rows, width].
    row = tl.program_id(0).to(tl.int64)
    outer = row // inner_rows
    inner = row % inner_rows
    columns = tl.arange(0, BLOCK)
    mask = columns < width

    x = tl.load(x_ptr + outer * stride_x_outer + inner * stride_x_inner + columns, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual_offset = outer * stride_residual_outer + inner * stride_residual_inner
        residual = tl.load(residual_ptr + residual_offset + columns, mask=mask, other=0.0)
        # The sum is rounded to the input dtype before it is normalised, as the unfused add does.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * width + columns, x, mask=mask)
    x32 = x.to(tl.float32)
    variance = tl.sum(x32 * x32, axis=0) / width
    normed = (x32 * tl.rsqrt(variance + eps)).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + columns, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * width + columns, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reference_rms_norm` in one launch: x is [rows, width] or [tokens, heads, width], any strides but
    contiguous in width (views of a fused projection work); residual has x's shape and dtype.

    Returns new contiguous tensors and leaves the inputs alone.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [rows, width] or [tokens, heads, width], got {tuple(x.shape)}")
    width = x.shape[-1]
    if width > MAX_WIDTH or weight.shape != (width,):
        raise ValueError(f"width must be at most {MAX_WIDTH} and match weight {tuple(weight.shape)}, got {width}")
    x3 = x if x.dim() == 3 else x[:, None, :]
    residual3 = x3 if residual is None else (residual if residual.dim() == 3 else residual[:, None, :])
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {residual.dtype}{tuple(residual.shape)} differs from x {x.dtype}{tuple(x.shape)}")
    if x3.stride(2) != 1 or residual3.stride(2) != 1:
        raise ValueError("x and residual must be contiguous in their last dimension")

    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else out
    num_rows = x3.shape[0] * x3.shape[1]
    if num_rows > 0:
        block = triton.next_power_of_2(width)
        _rms_norm_kernel[(num_rows,)](
            x3,
            residual3,
            weight,
            out,
            new_residual,
            x3.shape[1],
            x3.stride(0),
            x3.stride(1),
            residual3.stride(0),
            residual3.stride(1),
            width,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK=block,
            num_warps=min(max(block // 256, 1), 8),
        )
    return out if residual is None else (out, new_residual)


def reference_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's RMSNorm over the last dimension, in float32; given `residual`, normalise x + residual
    and also return that sum."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed if residual is None else (normed, x)
