"""Greedy sampling's argmax: lmserve's two-stage kernel against torch.argmax, on a workload's vocabulary.

    python -m benchmarks.argmax_kernel --config B --rows 1 8 256

Median device times of calls replayed from a CUDA graph, on random bf16 logits [rows, vocab].
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

    from lmserve.kernels.argmax import argmax

    vocab = load_config(args.config)["vocab_size"]
    results = []
    for rows in args.rows:
        logits = torch.randn(rows, vocab, dtype=torch.bfloat16, device="cuda")
        assert torch.equal(argmax(logits), logits.argmax(dim=-1))
        for name, fn in (("torch", lambda x=logits: x.argmax(dim=-1)), ("lmserve", lambda x=logits: argmax(x))):
            results.append({"kernel": name, "rows": rows, "vocab": vocab, "us": 1000 * device_time_ms(fn)})
    out = Path(args.out or f"benchmarks/results/argmax-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "results": results}, indent=2) + "\n")
    for r in results:
        print(f"{r['kernel']:>8} rows {r['rows']:>4} vocab {r['vocab']:>6} {r['us']:8.2f} us")


if __name__ == "__main__":
    main()
