"""How projection weights lie in GPU memory: [out, in] as checkpoints hold them, or [in, out].

`F.linear` hands cuBLAS the weight as it lies, and cuBLAS picks its kernel from the shapes and that layout.
Neither layout is faster everywhere. On one H200 (2026-12-02, call 2 of session 5; latency-A-B-h200-layouts.json),
[in, out] made Qwen3-0.6B's batch-1 decode 14% faster (its o_proj alone took 12.9 us [out, in] and 5.7 us
[in, out]) but its batch 8-128 decode 3-15% slower, and Llama-3.1-8B's batch 128 9% slower. Choosing per
shape by timing each projection alone did no better: in a step the kernels' speed depends on their
neighbours. So [out, in] is the default and `projection_layout="in_out"` the option.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def apply_projection_layout(model: nn.Module, layout: str) -> None:
    """Lay out every linear layer's weight as `layout` ("out_in" or "in_out") says; shapes and values stay,
    only strides change."""
    if layout == "out_in":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
