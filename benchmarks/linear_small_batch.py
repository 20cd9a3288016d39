"""Small-batch projection speed: each linear layer of a workload's model, timed as cuBLAS runs it.

    python -m benchmarks.linear_small_batch --config A --rows 1 8 32

At decode batch 1 every projection reads its whole weight to compute one row, so it should run near copy
bandwidth; the batch-1 profiles show cuBLAS well below it on some shapes. For each layer shape this times
`F.linear` on the [out, in] weight the model holds and, for comparison, a matmul on the same weight stored
transposed ([in, out], contiguous), which cuBLAS serves with other kernels, and at one row the
matrix-vector product `torch.mv` on the [out, in] weight (cuBLAS gemv). Figures are median device
times of calls replayed from a CUDA graph, with weight bytes over time against the measured copy bandwidth.
Fresh random weights per shape, several copies rotated so that no call reads a weight from L2.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.workloads import device_time_ms, environment, load_config, measure_copy_bandwidth

_COPIES = 8  # weights rotated per timed call: their sum is far larger than the L2


def layer_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of a Llama-family layer, and of the LM head."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return {"qkv_proj": (hidden, q + 2 * kv), "o_proj": (q, hidden), "gate_up_proj": (hidden, 2 * inter),
            "down_proj": (inter, hidden), "lm_head": (hidden, config["vocab_size"])}


# How each variant computes x @ W.T from the weight it is given: F.linear on [out, in]; a matmul on the
# transposed copy [in, out]; at one row, a matrix-vector product W @ x on [out, in] (cuBLAS gemv).
VARIANTS = {
    "out_in": lambda x, weight: F.linear(x, weight),
    "in_out": lambda x, weight: torch.matmul(x, weight),
    "out_in_mv": lambda x, weight: torch.mv(weight, x[0]),
}


def time_variant(weights: list[torch.Tensor], x: torch.Tensor, variant: str) -> float:
    """Median ms per call, rotating over `weights`."""
    cycle = itertools.cycle(weights)
    compute = VARIANTS[variant]
    return device_time_ms(lambda: compute(x, next(cycle)), calls_per_graph=len(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    bandwidth = measure_copy_bandwidth()
    results = []
    for name, (num_in, num_out) in layer_shapes(config).items():
        weights = [torch.randn(num_out, num_in, dtype=torch.bfloat16, device="cuda") for _ in range(_COPIES)]
        transposed = [w.t().contiguous() for w in weights]
        weight_bytes = num_in * num_out * 2
        for rows in args.rows:
            x = torch.randn(rows, num_in, dtype=torch.bfloat16, device="cuda")
            torch.testing.assert_close(torch.matmul(x, transposed[0]), F.linear(x, weights[0]), rtol=2e-2, atol=2e-1)
            variants = [("out_in", weights), ("in_out", transposed)]
            if rows == 1:
                torch.testing.assert_close(torch.mv(weights[0], x[0]), F.linear(x, weights[0])[0], rtol=2e-2, atol=2e-1)
                variants.append(("out_in_mv", weights))
            for variant, stored in variants:
                ms = time_variant(stored, x, variant)
                results.append({"layer": name, "in": num_in, "out": num_out, "rows": rows, "variant": variant,
                                "us": ms * 1000, "of_copy_bandwidth": weight_bytes / (ms / 1000) / bandwidth})
        del weights, transposed
    out = Path(args.out or f"benchmarks/results/linear-small-batch-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "bandwidth_bytes_per_s": bandwidth,
                               "results": results}, indent=2) + "\n")
    print(f"{'layer':<13} {'in':>6} {'out':>7} {'rows':>5} {'variant':>9} {'us':>8} {'of bw':>7}")
    for r in results:
        print(f"{r['layer']:<13} {r['in']:>6} {r['out']:>7} {r['rows']:>5} {r['variant']:>9} {r['us']:>8.2f} "
              f"{r['of_copy_bandwidth']:>7.1%}")


if __name__ == "__main__":
    main()
