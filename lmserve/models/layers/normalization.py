"""RMS normalisation, optionally fused with the residual add that precedes it in every decoder block."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

_HAS_TRITON = importlib.util.find_spec("triton") is not None


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Hugging Face does, so low-precision runs match it."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalise `x`; given `residual`, first add it and also return the sum as the new residual.

        On CUDA one Triton launch does it all; the torch code below is the reference (and the CPU path).
        """
        if x.is_cuda and _HAS_TRITON:
            from lmserve.kernels.rms_norm import rms_norm  # needs triton: import on demand

            return rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._normalize(x)
        x = x + residual
        return self._normalize(x), x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
