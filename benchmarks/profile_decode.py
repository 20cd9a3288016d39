"""Where a decode step's time goes: host stages under cProfile, and GPU kernels under torch.profiler.

    python -m benchmarks.profile_decode --config A --batch-size 128 --input-len 512 --steps 100

First runs the requests until every one decodes, then (1) times plain steps, (2) profiles the host side
with cProfile and prints the share of each engine stage and the functions with the most own time, and
(3) on CUDA, profiles the GPU kernels of the same kind of steps and prints them by GPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time

import torch

from benchmarks.workloads import load_config, write_model_dir


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_steps(engine, steps: int) -> float:
    _synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from lmserve import SamplingParams
    from lmserve.engine.llm_engine import LLMEngine

    config = load_config(args.config)
    engine = LLMEngine.from_options(
        write_model_dir(config), load_format="dummy", skip_tokenizer_init=True,
        dtype="bfloat16", max_model_len=args.input_len + 4 * args.steps + 64, max_num_seqs=max(args.batch_size, 8),
    )
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, max_tokens=4 * args.steps + 40, ignore_eos=True)
    max_id = min(99999, config["vocab_size"] - 1)
    for index in range(args.batch_size):
        engine.add_request(str(index), [rng.randint(10, max_id) for _ in range(args.input_len)], params)
    while engine.stats().num_waiting or any(
        r.num_tokens - r.num_computed_tokens > 1 for r in engine.core.scheduler.running
    ):
        engine.step()  # prefill until every request decodes
    for _ in range(5):
        engine.step()

    per_step = _timed_steps(engine, args.steps)
    print(f"batch {args.batch_size}, context {args.input_len}+: {per_step * 1000:.2f} ms per step")
    host_profile = cProfile.Profile()
    host_profile.enable()
    per_step = _timed_steps(engine, args.steps)
    host_profile.disable()
    print(f"under cProfile: {per_step * 1000:.2f} ms per step")
    stats = pstats.Stats(host_profile)
    for name in ("schedule", "execute", "update_from_output", "process_outputs"):
        total = sum(v[3] for k, v in stats.stats.items() if k[2] == name)
        print(f"  {name:<20} {total / args.steps * 1000:7.2f} ms per step")
    stats.sort_stats("tottime").print_stats(args.top)

    if torch.cuda.is_available():
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            _timed_steps(engine, args.steps)
        events = prof.key_averages()
        gpu_total = sum(e.self_device_time_total for e in events)
        print(f"GPU time per step (kernels and copies): {gpu_total / args.steps / 1000:.3f} ms")
        print(events.table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
