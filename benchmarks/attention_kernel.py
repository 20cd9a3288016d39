"""Decode attention kernel speed: time per call and KV bandwidth, against the device's copy bandwidth.

    python -m benchmarks.attention_kernel --heads 16 --kv-heads 8 --batch-sizes 1 32 128 256 --context 512 2048
    python -m benchmarks.attention_kernel --num-splits auto 1 2 4 8 16    # sweep the flash-decoding split

Each request has one query token and `context` keys in randomly scattered cache blocks; small batches
split their keys over several programs as the engine does (flash-decoding), or as `--num-splits` says.
`--spread 0.6` draws each request's context uniformly from `context` +-60% (seeded), as a serving batch's
contexts are ragged; `--order batch` starts the programs in batch order instead of the engine's
longest-first.
`--block-n`, `--num-warps` and `--num-stages` sweep the tile. The figure is the median device time of
calls replayed from a CUDA graph (as the engine's decode steps run them); bandwidth counts each request's
keys and values read once. As a reference of what a tuned kernel reaches, the same shapes also run
through torch's SDPA on contiguous (unpaged) keys and values. `--cache-dtype fp8` times a float8 cache
(no SDPA beside it).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.workloads import device_time_ms, environment, measure_copy_bandwidth
from lmserve.kernels import paged_attention
from lmserve.worker.input_preparation import longest_first

CACHE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}  # the queries are bf16


def _row(kernel: str, batch: int, context: int, ms: float, kv_bytes: int, bandwidth: float) -> dict:
    return {"kernel": kernel, "batch": batch, "context": context, "ms": ms, "bytes_per_s": kv_bytes / ms * 1e3,
            "of_copy_bandwidth": kv_bytes / ms * 1e3 / bandwidth}


def measure_shape(args: argparse.Namespace, batch: int, context: int, bandwidth: float) -> list[dict]:
    """Rows for one (batch, context): the paged kernel at each block_n and split, then SDPA on contiguous keys."""
    device = torch.device("cuda")
    low, high = round(context * (1 - args.spread)), round(context * (1 + args.spread))
    generator = torch.Generator().manual_seed(args.seed)
    contexts = torch.randint(max(low, 1), high + 1, (batch,), generator=generator)
    decode_order = None
    if args.order == "longest-first":  # as the engine orders a decode step
        decode_order = torch.from_numpy(longest_first(contexts.numpy())).to(device)
    longest = int(contexts.max())
    blocks_per_seq = -(-longest // args.block_size)
    num_blocks = batch * blocks_per_seq + 1
    cache = torch.randn(2, num_blocks, args.block_size, args.kv_heads, args.head_dim, dtype=torch.bfloat16,
                        device=device).to(CACHE_DTYPES[args.cache_dtype])
    tables = torch.randperm(num_blocks - 1, device=device)[: batch * blocks_per_seq].view(batch, -1) + 1
    seq_lens = contexts.to(device)
    query_start_loc = torch.arange(batch + 1, dtype=torch.int64, device=device)
    query = torch.randn(batch, args.heads, args.head_dim, dtype=torch.bfloat16, device=device)
    kv_bytes = 2 * int(contexts.sum()) * args.kv_heads * args.head_dim * cache.element_size()
    scale = args.head_dim**-0.5
    rows = []
    for block_n, num_warps, num_stages, num_splits in itertools.product(
        args.block_n, args.num_warps, args.num_stages, args.num_splits
    ):
        call = functools.partial(paged_attention, query, cache, tables, seq_lens, query_start_loc, 1, scale,
                                 max_seq_len=longest, block_n=block_n, num_warps=num_warps, num_stages=num_stages,
                                 num_splits=num_splits, decode_order=decode_order)
        name = f"paged(n={block_n},w={num_warps},s={num_stages},splits={num_splits or 'auto'},{args.order})"
        rows.append(_row(name, batch, context, device_time_ms(call), kv_bytes, bandwidth))
    del cache
    if args.cache_dtype != "bf16" or args.spread:
        return rows  # SDPA has no float8 path to compare with, and takes one context length
    keys = torch.randn(batch, args.kv_heads, context, args.head_dim, dtype=torch.bfloat16, device=device)
    call = functools.partial(F.scaled_dot_product_attention, query[:, :, None, :], keys, torch.randn_like(keys),
                             enable_gqa=True)
    rows.append(_row("torch sdpa, contiguous", batch, context, device_time_ms(call), kv_bytes, bandwidth))
    return rows


def add_attention_arguments(parser: argparse.ArgumentParser, heads: int) -> None:
    """The head shape, the cache block size and the tile sweep (`--block-n`, `--num-warps`, `--num-stages`)."""
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--block-n", type=int, nargs="+", default=[None])
    parser.add_argument("--num-warps", type=int, nargs="+", default=[None])
    parser.add_argument("--num-stages", type=int, nargs="+", default=[None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_attention_arguments(parser, heads=16)
    parser.add_argument("--cache-dtype", choices=list(CACHE_DTYPES), default="bf16")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128, 256])
    parser.add_argument("--context", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--spread", type=float, default=0.0, help="contexts uniform in context * (1 +- spread)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=["batch", "longest-first"], default="longest-first",
                        help="the order decode programs take the requests in: the engine's, or batch order")
    parser.add_argument("--num-splits", type=lambda text: None if text == "auto" else int(text), nargs="+",
                        default=[None], help="auto (the engine's choice) or a number; 1 does not split")
    parser.add_argument("--out", default="benchmarks/results/attention-kernel.json")
    args = parser.parse_args()

    bandwidth = measure_copy_bandwidth()
    rows = [row for context in args.context for batch in args.batch_sizes
            for row in measure_shape(args, batch, context, bandwidth)]
    print(f"{'kernel':<40} {'batch':>5} {'context':>7} {'ms':>8} {'GB/s':>7} {'of copy bw':>10}")
    for row in rows:
        print(f"{row['kernel']:<40} {row['batch']:>5} {row['context']:>7} {row['ms']:>8.3f} "
              f"{row['bytes_per_s'] / 1e9:>7.0f} {row['of_copy_bandwidth']:>10.1%}")
    report = {**environment(), "shape": vars(args), "bandwidth_bytes_per_s": bandwidth, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
