"""One-row projections (batch-1 decode): lmserve's Triton matrix-vector kernel beside cuBLAS (F.linear).

    python -m benchmarks.gemv_kernel --config B
    python -m benchmarks.gemv_kernel --config A --block-n 4 8 16 --block-k 256 512 1024 --num-warps 4 8

For each projection of the model's layers (and the LM head), the device time of a call replayed from a
CUDA graph and the weight bandwidth it reaches, as a fraction of the device's copy bandwidth.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.workloads import device_time_ms, environment, load_config, measure_copy_bandwidth
from lmserve.kernels.gemv import gemv


def projection_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each distinct projection of a Llama-family config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return {
        "qkv": ((heads + 2 * kv_heads) * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_up": (2 * config["intermediate_size"], hidden),
        "down": (hidden, config["intermediate_size"]),
        "lm_head": (config["vocab_size"], hidden),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A", help="preset A or B, or a JSON file with a Hugging Face config")
    parser.add_argument("--block-n", type=int, nargs="+", default=[8])
    parser.add_argument("--block-k", type=int, nargs="+", default=[512])
    parser.add_argument("--num-warps", type=int, nargs="+", default=[4])
    parser.add_argument("--out", help="JSON results path (default: benchmarks/results/gemv-<config>.json)")
    args = parser.parse_args()

    bandwidth = measure_copy_bandwidth()
    rows = []
    for name, (features, inputs) in projection_shapes(load_config(args.config)).items():
        weight = torch.randn(features, inputs, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(1, inputs, dtype=torch.bfloat16, device="cuda")
        nbytes = weight.numel() * weight.element_size()
        calls = {"cublas": functools.partial(F.linear, x, weight)}
        for block_n, block_k, num_warps in itertools.product(args.block_n, args.block_k, args.num_warps):
            tile = {"block_n": block_n, "block_k": block_k, "num_warps": num_warps}
            calls[f"gemv(n={block_n},k={block_k},w={num_warps})"] = functools.partial(gemv, x, weight, **tile)
        for kernel, call in calls.items():
            ms = device_time_ms(call)
            rows.append({"projection": name, "shape": [features, inputs], "kernel": kernel, "us": ms * 1e3,
                         "of_copy_bandwidth": nbytes / ms * 1e3 / bandwidth})
        del weight
    print(f"{'projection':<10} {'kernel':<26} {'us':>8} {'of copy bw':>10}")
    for row in rows:
        print(f"{row['projection']:<10} {row['kernel']:<26} {row['us']:>8.1f} {row['of_copy_bandwidth']:>10.1%}")
    report = {**environment(), "config": args.config, "bandwidth_bytes_per_s": bandwidth, "rows": rows}
    out = Path(args.out or f"benchmarks/results/gemv-{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
