"""SwiGLU's activation, silu(gate) * up, over a fused gate/up projection in one launch.

Unfused, torch runs silu and the product as two kernels with an intermediate in memory; at decode batch
sizes each is a launch that costs more than its arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(gate_up_ptr, out_ptr, width, stride_in_token, stride_out_token, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = columns < width
    row = gate_up_ptr + token * stride_in_token
    gate = tl.load(row + columns, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + width + columns, mask=mask, other=0.0).to(tl.float32)
    # Rounded like the unfused ops: silu in float32 then to the input dtype, then the product.
    dtype = out_ptr.dtype.element_ty
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + token * stride_out_token + columns, (activated * up).to(dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[tokens, 2 * width] (gate then up, rows contiguous) -> [tokens, width]; equal to `reference_silu_and_mul`."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or gate_up.stride(1) != 1:
        raise ValueError(f"gate_up must be [tokens, 2 * width] with contiguous rows, got {tuple(gate_up.shape)}")
    num_tokens, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(num_tokens, width, dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens:
        _silu_and_mul_kernel[(num_tokens, triton.cdiv(width, _BLOCK))](
            gate_up, out, width, gate_up.stride(0), out.stride(0), BLOCK=_BLOCK
        )
    return out


def reference_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """The torch path of the SwiGLU MLP's activation."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
