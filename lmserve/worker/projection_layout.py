"""How each projection's weight is laid out in GPU memory: [out, in] as checkpoints hold it, or [in, out].

`F.linear` hands cuBLAS the weight as it lies, and cuBLAS picks its kernel from the shapes and that layout.
For some shapes one layout gets a far slower kernel at small batches, and which one depends on the model
and the batch: on an H200, Qwen3-0.6B's o_proj at one row took 12.9 us laid out [out, in] and 5.7 us
[in, out], while storing all of Llama-3.1-8B's projections [in, out] made its batch-128 decode 15% slower
(benchmarks/results/linear-small-batch-*-h200.json, latency-*-h200-transposed-projections.json). So by
default ("auto") each distinct projection shape is timed both ways at start-up, at the batch sizes the
engine runs, and stored the way that is faster on average. Values never change; only strides do.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.worker.device_timing import device_time_ms

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "out_in", "in_out")
TIMED_ROWS = (1, 8, 32, 128, 256, 2048)  # decode batches and a prefill chunk, capped at the engine's budget
_MARGIN = 0.01  # [in, out] must be this much faster on average: the checkpoint's layout wins a tie


@dataclass(frozen=True)
class ShapeLayout:
    """The layout chosen for every projection of one shape, and why: the mean of each layout's time over
    the faster layout's time at each timed row count (1.0 is best everywhere)."""

    in_features: int
    out_features: int
    layout: str
    relative_time: dict[str, float]

    def describe(self) -> str:
        ratios = ", ".join(f"{name} {value:.2f}" for name, value in self.relative_time.items())
        return f"[{self.out_features}, {self.in_features}] -> {self.layout} ({ratios})"


def apply_projection_layout(model: nn.Module, layout: str, max_rows: int) -> list[ShapeLayout]:
    """Lay out every linear layer's weight as `layout` says ("auto": time each shape on its CUDA device,
    up to `max_rows` rows); return the choices made by timing (none for a fixed layout or on the CPU)."""
    if layout not in LAYOUTS:
        raise ValueError(f"projection layout must be one of {LAYOUTS}, got {layout!r}")
    by_shape: dict[tuple[int, int], list[nn.Linear]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            by_shape[module.in_features, module.out_features].append(module)
    choices = []
    for (in_features, out_features), modules in by_shape.items():
        chosen = layout
        if layout == "auto":
            if not modules[0].weight.is_cuda:
                continue
            rows = sorted({min(count, max_rows) for count in TIMED_ROWS})
            times = {name: time_layout([m.weight for m in modules], name == "in_out", rows) for name in LAYOUTS[1:]}
            choice = ShapeLayout(in_features, out_features, choose_layout(times), relative_times(times))
            choices.append(choice)
            chosen = choice.layout
        if chosen == "in_out":
            store_transposed(modules)
    for choice in choices:
        logger.info("projection layout %s", choice.describe())
    return choices


def relative_times(times: dict[str, list[float]]) -> dict[str, float]:
    """Each layout's mean over row counts of its time divided by the faster layout's time there."""
    best = [min(pair) for pair in zip(*times.values(), strict=True)]
    return {name: sum(t / b for t, b in zip(values, best, strict=True)) / len(best) for name, values in times.items()}


def choose_layout(times: dict[str, list[float]]) -> str:
    """"in_out" when it is faster on average, relative to the faster layout at each row count, by the margin."""
    relative = relative_times(times)
    return "in_out" if relative["in_out"] < relative["out_in"] * (1 - _MARGIN) else "out_in"


@torch.no_grad()
def store_transposed(modules: list[nn.Linear]) -> None:
    """Store each weight [in, out] in memory; its [out, in] shape and values stay."""
    for module in modules:
        module.weight.data = module.weight.data.t().contiguous().t()


@torch.no_grad()
def time_layout(weights: list[torch.Tensor], transposed: bool, rows: list[int]) -> list[float]:
    """Device ms per call of `F.linear` at each row count, on enough of `weights` (laid out as asked) that
    their bytes are several times the L2: in a step, every layer's weight comes from memory."""
    l2_bytes = torch.cuda.get_device_properties(weights[0].device).L2_cache_size
    count = min(len(weights), math.ceil(4 * l2_bytes / (weights[0].numel() * weights[0].element_size())))
    stored = [w.t().contiguous().t() if transposed else w.contiguous() for w in weights[:count]]
    return [_time_rows(stored, num_rows) for num_rows in rows]


def _time_rows(weights: list[torch.Tensor], num_rows: int) -> float:
    x = torch.randn(num_rows, weights[0].shape[1], dtype=weights[0].dtype, device=weights[0].device)
    cycle = itertools.cycle(weights)
    return device_time_ms(lambda: F.linear(x, next(cycle)), iterations=10, calls_per_graph=len(weights))
