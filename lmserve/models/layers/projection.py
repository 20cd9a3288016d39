"""Projections with the step before them: the residual add and RMSNorm, or SwiGLU's activation.

A decoder layer runs each pair through these functions, which pick the kernels. At one row (decode at
batch 1), a projection runs in lmserve's `gemv` kernel with its step fused in: a launch fewer, and on an
H200 the kernel streams both workloads' weights about as fast as cuBLAS or faster (Qwen3-0.6B's o_proj:
3.3 us against 12.8). Batch-1 decode of Llama-3.1-8B took 4.40 ms a step against 4.55 with cuBLAS and the
unfused kernels (benchmarks/results/latency-*-b1-h200-gemv-pipelined.json). More rows run the step as its
own kernel, then the projection through cuBLAS (`F.linear`), or, at the row counts the runner's
`stream_k_rows` names, through lmserve's stream-K GEMM, which keeps every SM busy where cuBLAS's tiles leave a
part-empty last wave.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.attention import Attention, AttentionMetadata
from lmserve.attention.backend import Rotation
from lmserve.models.layers.normalization import RMSNorm

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_stream_k_rows = range(0)


def use_stream_k(rows: range) -> None:
    """Run projections of these row counts through the stream-K GEMM. One setting per process, as torch's
    own backend switches are: the model runner sets it from its `stream_k_rows`."""
    global _stream_k_rows
    _stream_k_rows = rows


def streams_k(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether this projection of x runs in the stream-K GEMM."""
    if not (x.is_cuda and _HAS_TRITON and layer.bias is None and x.dim() == 2 and x.shape[0] in _stream_k_rows):
        return False
    from lmserve.kernels.matmul import supports, tiles_for  # needs triton: import on demand

    return supports(x, layer.weight, tiles_for(x.shape[0]))


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x), unless `streams_k`."""
    if not streams_k(x, layer):
        return layer(x)
    from lmserve.kernels.matmul import matmul

    return matmul(x, layer.weight)


def fuses(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether this projection of x runs in `gemv`, its step fused in."""
    if not (x.is_cuda and _HAS_TRITON and x.dim() == 2 and x.shape[0] == 1):
        return False
    from lmserve.kernels.gemv import supports  # needs triton: import on demand

    return supports(x, layer.weight)


def normed_projection(
    norm: RMSNorm, layer: nn.Linear, hidden: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """layer(norm(hidden + residual)), and hidden + residual, the next residual (hidden itself when
    `residual` is None: the first layer)."""
    if not fuses(hidden, layer):
        if residual is None:
            return linear(layer, norm(hidden)), hidden
        normed, residual = norm(hidden, residual)
        return linear(layer, normed), residual
    from lmserve.kernels.gemv import gemv

    options = {"bias": layer.bias, "norm_weight": norm.weight, "eps": norm.eps}
    if residual is None:
        return gemv(hidden, layer.weight, prologue="rms_norm", **options), hidden
    return gemv(hidden, layer.weight, prologue="add_rms_norm", residual=residual, **options)


def stored_qkv_projection(
    norm: RMSNorm,
    layer: nn.Linear,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    attention: Attention,
    rotation: Rotation,
    metadata: AttentionMetadata,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`normed_projection` of a fused q/k/v projection that also rotates the queries and keys and stores the
    keys and values in `attention`'s cache: (rotated queries, next residual), for `Attention.attend`.

    Only where `fuses(hidden, layer)`, without per-head norms, and with heads a power of two >= 16 wide (as
    `LlamaAttention.stores_in_projection` checks): one launch instead of two."""
    from lmserve.kernels.gemv import RotaryStore, gemv

    query_size = attention.num_heads * attention.head_dim
    store = RotaryStore(rotation.positions, rotation.cos_cache, rotation.sin_cache, attention.kv_cache,
                        metadata.slot_mapping, query_size)
    options = {"bias": layer.bias, "norm_weight": norm.weight, "eps": norm.eps, "store": store}
    if residual is None:
        return gemv(hidden, layer.weight, prologue="rms_norm", **options), hidden
    return gemv(hidden, layer.weight, prologue="add_rms_norm", residual=residual, **options)


def projection(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x)."""
    if not fuses(x, layer):
        return linear(layer, x)
    from lmserve.kernels.gemv import gemv

    return gemv(x, layer.weight, layer.bias)


def gated_projection(layer: nn.Linear, gate_up: torch.Tensor) -> torch.Tensor:
    """layer(silu(gate) * up) over a fused gate/up projection's output [rows, 2 * in]."""
    if gate_up.is_cuda and _HAS_TRITON:
        if fuses(gate_up, layer):
            from lmserve.kernels.gemv import gemv

            return gemv(gate_up, layer.weight, layer.bias, prologue="silu_and_mul")
        from lmserve.kernels.activation import silu_and_mul

        return linear(layer, silu_and_mul(gate_up))
    gate, up = gate_up.chunk(2, dim=-1)
    return layer(F.silu(gate) * up)
