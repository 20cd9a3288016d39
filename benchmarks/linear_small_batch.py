"""Small-batch projection speed: each linear layer of a workload's model with the step before it.

    python -m benchmarks.linear_small_batch --config A --rows 1 2 4

At decode batch sizes every projection reads its whole weight to compute a few rows, so it should run near
copy bandwidth. Each layer comes with the step the model runs before it: the residual add and RMSNorm
before q/k/v, gate/up and the LM head, SwiGLU's activation before down. For each layer shape this times
- `unfused`: that step's own kernel, then `F.linear` (cuBLAS) on the [out, in] weight, as the model runs
  them at larger batches;
- `linear`: `F.linear` alone, and `linear_in_out`: a matmul on the weight stored [in, out];
- `gemv(n, k, w, s)`: lmserve's small-batch kernel with the step fused in, at each tile (weight rows,
  columns, warps, pipeline stages); `gemv_alone(n, k, w, s)` the kernel without the step, against `linear`.
Figures are median device times of calls replayed from a CUDA graph, with weight bytes over time against
the measured copy bandwidth. Fresh random weights per shape, several copies rotated so that no call reads
a weight from L2.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.workloads import device_time_ms, environment, load_config, measure_copy_bandwidth

_COPIES = 8  # weights rotated per timed call: their sum is far larger than the L2
# (block_n, block_k at one row, num_warps, num_stages)
TILES = [(8, 512, 4, 3), (16, 512, 4, 3), (4, 1024, 4, 3), (8, 1024, 4, 3), (16, 1024, 4, 3), (8, 1024, 4, 4),
         (4, 2048, 8, 3), (16, 512, 4, 1)]


def layer_shapes(config: dict) -> dict[str, tuple[int, int, str]]:
    """(in, out, fused step before it) of each projection of a Llama-family layer, and of the LM head."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return {"qkv_proj": (hidden, q + 2 * kv, "add_rms_norm"), "o_proj": (q, hidden, "none"),
            "gate_up_proj": (hidden, 2 * inter, "add_rms_norm"), "down_proj": (inter, hidden, "silu_and_mul"),
            "lm_head": (hidden, config["vocab_size"], "add_rms_norm")}


def prologue_inputs(prologue: str, rows: int, num_in: int) -> dict:
    """The projection's input and what its fused step reads besides."""
    width = 2 * num_in if prologue == "silu_and_mul" else num_in
    inputs = {"x": torch.randn(rows, width, dtype=torch.bfloat16, device="cuda"), "prologue": prologue}
    if prologue == "add_rms_norm":
        inputs.update(residual=torch.randn(rows, num_in, dtype=torch.bfloat16, device="cuda"), eps=1e-6,
                      norm_weight=torch.rand(num_in, dtype=torch.bfloat16, device="cuda") + 0.5)
    return inputs


def unfused(inputs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's path at larger batches: the step's own Triton kernel, then cuBLAS."""
    from lmserve.kernels.activation import silu_and_mul
    from lmserve.kernels.rms_norm import rms_norm

    prologue, x = inputs["prologue"], inputs["x"]
    if prologue == "add_rms_norm":
        return lambda weight: F.linear(rms_norm(x, inputs["norm_weight"], inputs["eps"], inputs["residual"])[0], weight)
    if prologue == "silu_and_mul":
        return lambda weight: F.linear(silu_and_mul(x), weight)
    return lambda weight: F.linear(x, weight)


def time_rotating(weights: list[torch.Tensor], compute: Callable[[torch.Tensor], object]) -> float:
    """Median ms per call of `compute(weight)`, rotating over `weights`."""
    cycle = itertools.cycle(weights)
    return device_time_ms(lambda: compute(next(cycle)), calls_per_graph=len(weights))


def measure_layer(num_in: int, num_out: int, prologue: str, rows: int, weights: list[torch.Tensor]) -> dict[str, float]:
    """Microseconds per call of each variant on one layer shape at `rows` rows."""
    from lmserve.kernels.gemv import GemvTile, gemv, reference_gemv

    inputs = prologue_inputs(prologue, rows, num_in)
    linear_input = inputs["x"][:, :num_in].contiguous()
    variants: dict[str, Callable[[torch.Tensor], object]] = {
        "unfused": unfused(inputs),
        "linear": lambda weight: F.linear(linear_input, weight),
        "linear_in_out": lambda weight: torch.matmul(linear_input, weight.t()),
    }
    expected = reference_gemv(weight=weights[0], **inputs)
    expected = expected[0] if isinstance(expected, tuple) else expected
    for shape in TILES:
        tile = GemvTile(*shape)
        actual = gemv(weight=weights[0], tile=tile, **inputs)
        actual = actual[0] if isinstance(actual, tuple) else actual
        torch.testing.assert_close(actual, expected, rtol=3e-2, atol=3e-2 * expected.abs().max().item())
        name = ",".join(map(str, shape))
        variants[f"gemv({name})"] = lambda weight, tile=tile: gemv(weight=weight, tile=tile, **inputs)
        if prologue != "none":
            variants[f"gemv_alone({name})"] = lambda weight, tile=tile: gemv(linear_input, weight, tile=tile)
    transposed = [w.t().contiguous().t() for w in weights]
    return {name: 1000 * time_rotating(transposed if name == "linear_in_out" else weights, compute)
            for name, compute in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    bandwidth = measure_copy_bandwidth()
    results = []
    for name, (num_in, num_out, prologue) in layer_shapes(config).items():
        weights = [torch.randn(num_out, num_in, dtype=torch.bfloat16, device="cuda") * num_in**-0.5
                   for _ in range(_COPIES)]
        weight_bytes = num_in * num_out * 2
        for rows in args.rows:
            for variant, us in measure_layer(num_in, num_out, prologue, rows, weights).items():
                results.append({"layer": name, "in": num_in, "out": num_out, "prologue": prologue, "rows": rows,
                                "variant": variant, "us": us,
                                "of_copy_bandwidth": weight_bytes / (us / 1e6) / bandwidth})
        del weights
    out = Path(args.out or f"benchmarks/results/linear-small-batch-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "bandwidth_bytes_per_s": bandwidth,
                               "tiles": TILES, "results": results}, indent=2) + "\n")
    print(f"{'layer':<13} {'in':>6} {'out':>7} {'rows':>5} {'variant':>20} {'us':>8} {'of bw':>7}")
    for r in results:
        print(f"{r['layer']:<13} {r['in']:>6} {r['out']:>7} {r['rows']:>5} {r['variant']:>20} {r['us']:>8.2f} "
              f"{r['of_copy_bandwidth']:>7.1%}")


if __name__ == "__main__":
    main()
