"""Where a decode step's time goes: cProfile over engine steps at one batch size.

    python benchmarks/profile_decode.py --config A --batch-size 1 --steps 200

Prints the functions with the most time of their own, and the share of each engine stage
(schedule, model runner, output processing) in the step time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time

import torch

from benchmarks.workloads import load_config, write_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from lmserve import SamplingParams
    from lmserve.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_options(
        write_model_dir(load_config(args.config)), load_format="dummy", skip_tokenizer_init=True,
        dtype="bfloat16", max_model_len=args.input_len + args.steps + 64,
    )
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, max_tokens=args.steps + 20, ignore_eos=True)
    for index in range(args.batch_size):
        engine.add_request(str(index), [rng.randint(10, 99999) for _ in range(args.input_len)], params)
    for _ in range(10):  # prefill and settle into decoding
        engine.step()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for _ in range(args.steps):
        engine.step()
    profile.disable()
    elapsed = time.perf_counter() - start
    print(f"batch {args.batch_size}: {elapsed / args.steps * 1000:.2f} ms per step (under cProfile)")
    stats = pstats.Stats(profile)
    stages = {
        "schedule": "scheduler.py", "execute": "model_runner.py", "update_from_output": "scheduler.py",
        "process_outputs": "frontend.py",
    }
    for name, file in stages.items():
        total = sum(v[3] for k, v in stats.stats.items() if k[2] == name and k[0].endswith(file))
        print(f"  {name:<20} {total / args.steps * 1000:7.2f} ms per step")
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
