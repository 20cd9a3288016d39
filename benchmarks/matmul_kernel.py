"""Projection GEMMs at decode batches: cuBLAS (`F.linear`) against lmserve's stream-K kernel per tile.

    python -m benchmarks.matmul_kernel --config B --rows 128 192 256

For each projection of a workload's layer (and its LM head), at each row count, this times `F.linear` and
`lmserve.kernels.matmul.matmul` at the tile it picks for the rows (`tiles_for`) and at each of TILES
(block_m, block_n, block_k, warps, stages), and reports microseconds, TFLOP/s and the speed-up over cuBLAS. A
tile that fails to compile (too much shared memory) is reported with its error. Median device times of
calls replayed from a CUDA graph, rotating weight copies so no call reads its weight from L2. Each variant's
largest error against a float32 product is recorded beside its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.linear_small_batch import layer_shapes, time_rotating
from benchmarks.workloads import environment, load_config

TILES = [(64, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
         (256, 128, 64, 8, 3), (256, 128, 64, 8, 4), (256, 64, 64, 8, 4), (128, 128, 128, 8, 3),
         (64, 256, 64, 8, 4)]


def copies_for(weight_bytes: int) -> int:
    """Enough weight copies that one rotation is far larger than the L2."""
    return max(2, min(8, (512 << 20) // weight_bytes + 1))


def measure(num_in: int, num_out: int, rows: int, weights: list[torch.Tensor]) -> list[dict]:
    from lmserve.kernels.matmul import MatmulTiles, matmul, supports, tiles_for

    x = torch.randn(rows, num_in, dtype=torch.bfloat16, device="cuda")
    expected = F.linear(x.float(), weights[0].float())
    scale = expected.abs().max().item()
    variants = {"linear": lambda weight: F.linear(x, weight)}
    picked = tiles_for(rows)
    for tiles in (picked, *(MatmulTiles(*shape) for shape in TILES)):
        name = ",".join(map(str, dataclasses.astuple(tiles))) + (" (picked)" if tiles is picked else "")
        if supports(x, weights[0], tiles):
            variants[name] = lambda weight, tiles=tiles: matmul(x, weight, tiles)
    results = []
    for name, compute in variants.items():
        try:
            error = (compute(weights[0]).float() - expected).abs().max().item() / scale
            us = 1000 * time_rotating(weights, compute)
        except Exception as failure:  # noqa: BLE001 - a tile too large for shared memory fails to compile
            results.append({"variant": name, "error": repr(failure)[:300]})
            continue
        results.append({"variant": name, "us": us, "tflops": 2 * rows * num_in * num_out / us / 1e6,
                        "max_error_of_max": error, "speedup_over_linear": results[0]["us"] / us if results else 1.0})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="B")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128, 192, 256, 512])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    results = []
    for layer, (num_in, num_out, _) in layer_shapes(load_config(args.config)).items():
        weight_bytes = num_in * num_out * 2
        weights = [torch.randn(num_out, num_in, dtype=torch.bfloat16, device="cuda") * num_in**-0.5
                   for _ in range(copies_for(weight_bytes))]
        for rows in args.rows:
            for result in measure(num_in, num_out, rows, weights):
                results.append({"layer": layer, "in": num_in, "out": num_out, "rows": rows, **result})
                r = results[-1]
                if "error" in r:
                    print(f"{layer:<13} {num_in:>6} {num_out:>7} {rows:>5} {r['variant']:>18} {r['error']}")
                    continue
                print(f"{layer:<13} {num_in:>6} {num_out:>7} {rows:>5} {r['variant']:>18} {r['us']:>9.2f} us "
                      f"{r['tflops']:>6.0f} TFLOP/s  x{r['speedup_over_linear']:.3f}  err {r['max_error_of_max']:.1e}",
                      flush=True)
        del weights
    out = Path(args.out or f"benchmarks/results/matmul-kernel-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "tiles": TILES, "results": results},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
