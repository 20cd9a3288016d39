"""Prefill attention kernel speed: whole prompts packed into one step, against the GPU's matrix rate.

    python -m benchmarks.prefill_attention --heads 32 --kv-heads 8 --block-q 16 32 --block-n 32 64 128

The step holds as many prompts as fit in `--tokens` (lengths drawn as the workloads draw them, uniform in
[100, 1024], seeded), each attending causally over itself in randomly scattered cache blocks, as a
prefill step of workload A or B does. The figure is the median device time of calls replayed from a CUDA
graph; TFLOP/s counts the two matrix products over the visible (causal) keys only.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
from pathlib import Path

import torch
from triton.runtime.errors import OutOfResources

from benchmarks.attention_kernel import add_attention_arguments
from benchmarks.workloads import device_time_ms, environment
from lmserve.kernels import paged_attention


def prompt_lengths(tokens: int, seed: int) -> list[int]:
    """Prompt lengths uniform in [100, 1024] until `tokens` are used; the last one takes the rest."""
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < tokens:
        lengths.append(min(rng.randint(100, 1024), tokens - sum(lengths)))
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_attention_arguments(parser, heads=32)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-q", type=int, nargs="+", default=[None])
    parser.add_argument("--out", default="benchmarks/results/prefill-attention.json")
    args = parser.parse_args()

    device = torch.device("cuda")
    lengths = prompt_lengths(args.tokens, args.seed)
    blocks = [-(-length // args.block_size) for length in lengths]
    num_blocks = sum(blocks) + 1
    cache = torch.randn(2, num_blocks, args.block_size, args.kv_heads, args.head_dim, dtype=torch.bfloat16,
                        device=device)
    tables = torch.zeros(len(lengths), max(blocks), dtype=torch.int64)
    scattered = (torch.randperm(num_blocks - 1) + 1).tolist()
    for row, count in enumerate(blocks):
        tables[row, :count] = torch.tensor(scattered[:count])
        del scattered[:count]
    seq_lens = torch.tensor(lengths, dtype=torch.int64)
    query_start_loc = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(seq_lens, 0, out=query_start_loc[1:])
    query = torch.randn(args.tokens, args.heads, args.head_dim, dtype=torch.bfloat16, device=device)
    tables, seq_lens, query_start_loc = tables.to(device), seq_lens.to(device), query_start_loc.to(device)
    visible_keys = sum(length * (length + 1) // 2 for length in lengths)
    flops = 4 * visible_keys * args.heads * args.head_dim
    rows = []
    print(f"{len(lengths)} prompts, {args.tokens} tokens; {'kernel':<28} {'ms':>8} {'TFLOP/s':>8}")
    for block_q, block_n, num_warps, num_stages in itertools.product(
        args.block_q, args.block_n, args.num_warps, args.num_stages
    ):
        call = functools.partial(paged_attention, query, cache, tables, seq_lens, query_start_loc, max(lengths),
                                 args.head_dim**-0.5, block_q=block_q, block_n=block_n, num_warps=num_warps,
                                 num_stages=num_stages)
        try:
            ms = device_time_ms(call)
        except OutOfResources as error:  # a tile that does not fit in shared memory: note it and go on
            print(f"q={block_q},n={block_n},w={num_warps},s={num_stages}: {error}")
            continue
        name = f"q={block_q},n={block_n},w={num_warps},s={num_stages}"
        rows.append({"kernel": name, "ms": ms, "tflops": flops / ms / 1e9})
        print(f"{'':>30} {name:<28} {ms:>8.3f} {flops / ms / 1e9:>8.0f}")
    report = {**environment(), "shape": vars(args), "prompt_lengths": lengths, "flops": flops, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
