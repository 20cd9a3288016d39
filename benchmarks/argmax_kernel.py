"""The sampler's argmax: lmserve's two-stage kernel against torch, on a workload's vocabulary.

    python -m benchmarks.argmax_kernel --config B --rows 1 8 256

Greedy: the kernel against torch.argmax. Random sampling at a temperature: the kernel's race (Gumbel noise
drawn inside the argmax, one pass over the logits) against the torch ops lmserve ran before (upcast,
temperature, softmax, exponential draws, division, argmax). Top-p 0.95 (lmserve.kernels.top_p) over the
float32 scores at temperature 0.6, of whole rows and of rows cut to their top 20 (Qwen3's defaults). Median
device times of calls replayed from a CUDA graph, on random bf16 logits [rows, vocab].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.workloads import device_time_ms, environment, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 256])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from lmserve.kernels.argmax import argmax, gumbel_race
    from lmserve.kernels.top_p import top_p_race

    vocab = load_config(args.config)["vocab_size"]
    results = []
    for rows in args.rows:
        logits = torch.randn(rows, vocab, dtype=torch.bfloat16, device="cuda")
        assert torch.equal(argmax(logits), logits.argmax(dim=-1))
        temperature = torch.full((rows,), 0.8, device="cuda")
        keys = torch.randint(-(2**63), 2**63 - 1, (rows,), device="cuda")
        counters = torch.zeros(rows, dtype=torch.int64, device="cuda")
        top_p = torch.full((rows,), 0.95, device="cuda")
        scores = logits.float() / 0.6
        top_k_scores = scores.masked_fill(scores < scores.topk(20, dim=-1).values[:, -1:], float("-inf"))
        kernels = {
            "torch": lambda x=logits: x.argmax(dim=-1),
            "lmserve": lambda x=logits: argmax(x),
            "torch race": lambda x=logits, t=temperature: _torch_race(x, t),
            "lmserve race": lambda x=logits, t=temperature, k=keys, c=counters: gumbel_race(x, t, k, c),
            "top-p": lambda x=scores, p=top_p, k=keys, c=counters: top_p_race(x, p, k, c),
            "top-k top-p": lambda x=top_k_scores, p=top_p, k=keys, c=counters: top_p_race(x, p, k, c),
        }
        for name, fn in kernels.items():
            results.append({"kernel": name, "rows": rows, "vocab": vocab, "us": 1000 * device_time_ms(fn)})
    out = Path(args.out or f"benchmarks/results/argmax-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "results": results}, indent=2) + "\n")
    for r in results:
        print(f"{r['kernel']:>12} rows {r['rows']:>4} vocab {r['vocab']:>6} {r['us']:8.2f} us")


def _torch_race(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Random sampling as lmserve's sampler did it in torch ops before the kernel's race."""
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)
    return probs.div(torch.empty_like(probs).exponential_()).argmax(dim=-1)


if __name__ == "__main__":
    main()
