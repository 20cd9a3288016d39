"""Where the prefill phase of a workload goes: step times, then GPU kernels of steady prefill steps.

    python -m benchmarks.profile_prefill --config A

Adds the workload's requests and steps until every request decodes, twice over (fresh request ids the
second time, and other prompts): the first pass shows one-off costs (kernel compilation for new shapes), the second the
steady state. Then profiles a few prefill steps of a third pass with torch.profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from benchmarks.workloads import load_config, make_requests, write_model_dir


def _prefill_pass(engine, requests, tag: str, profile_steps: int = 0, synchronize: bool = True) -> list[float]:
    """Step until no request has prompt left; the wall time of each step. Aborts the requests after.

    With `synchronize`, each step's time holds its own GPU work; without, steps overlap as in serving.
    """
    from lmserve import SamplingParams

    for index, request in enumerate(requests):
        params = SamplingParams(temperature=0.0, max_tokens=request.output_len, ignore_eos=True)
        engine.add_request(f"{tag}-{index}", request.prompt_token_ids, params)
    times = []
    scheduler = engine.core.scheduler
    while scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in scheduler.running):
        if profile_steps and len(times) == 3:
            _profile(engine, profile_steps)
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    for index in range(len(requests)):
        engine.abort_request(f"{tag}-{index}")
    while engine.has_unfinished_requests():
        engine.step()
    return times


def _profile(engine, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_total = sum(e.self_device_time_total for e in events)
    print(f"GPU time per prefill step: {gpu_total / steps / 1000:.2f} ms")
    print(events.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--profile-steps", type=int, default=5)
    args = parser.parse_args()

    from lmserve.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_options(
        write_model_dir(load_config(args.config)), load_format="dummy", skip_tokenizer_init=True,
        dtype="bfloat16", max_model_len=4096,
    )
    # Each pass draws other prompts, so the prefix cache finds nothing.
    for seed, tag in enumerate(("first", "second, synchronised", "third, overlapped", "fourth, host profile")):
        host_profile = cProfile.Profile() if seed == 3 else None
        if host_profile:
            host_profile.enable()
        requests = make_requests(args.num_prompts, (100, 1024), (100, 1024), seed)
        times = _prefill_pass(engine, requests, tag.split(",")[0], synchronize=seed < 2)
        if host_profile:
            host_profile.disable()
            pstats.Stats(host_profile).sort_stats("tottime").print_stats(25)
        print(f"{tag} pass: {len(times)} steps, {sum(times):.2f} s, median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.0f} ms, slowest {sorted(round(t * 1000) for t in times)[-5:]}")
    _prefill_pass(engine, make_requests(args.num_prompts, (100, 1024), (100, 1024), 4), "profiled",
                  args.profile_steps)


if __name__ == "__main__":
    main()
