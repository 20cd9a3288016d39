"""Fused projections: several linear layers over the same input computed as one matmul."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MergedLinear(nn.Linear):
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
