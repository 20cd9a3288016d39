"""Linear layers: one-token steps on the GPU take a matrix-vector kernel; fused projections share one matmul."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_HAS_TRITON = importlib.util.find_spec("triton") is not None


class Linear(nn.Linear):
    """`nn.Linear` whose batch-1 decode on the GPU (one row, 16-bit) runs lmserve's matrix-vector kernel.

    cuBLAS's one-row tiles leave part of the memory bandwidth unused on such shapes; see
    benchmarks/gemv_kernel.py. Float32 stays on cuBLAS, whose results the tests compare exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and _HAS_TRITON and x.shape[0] == 1 and x.dtype in (torch.bfloat16, torch.float16):
            from lmserve.kernels.gemv import gemv  # needs triton: import on demand

            return gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Stacks sub-layers (q/k/v, or gate/up) along the output dim; one GEMM is faster than several.

    Checkpoints store the sub-layers separately, so the loader copies each into its `shard`.
    """

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool) -> None:
        super().__init__(input_size, sum(output_sizes), bias=bias)
        self.output_sizes = list(output_sizes)

    def shard(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """The rows of this layer's weight or bias (`tensor`) that belong to sub-layer `index`."""
        start = sum(self.output_sizes[:index])
        return tensor.narrow(0, start, self.output_sizes[index])
