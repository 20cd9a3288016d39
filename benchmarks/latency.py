"""Decode latency per step at several batch sizes, against the bandwidth floor.

    python benchmarks/latency.py --config A --batch-sizes 1 8 32 128 --input-len 128 --output-len 512

Each batch of requests (random prompts, EOS ignored) runs through the engine; the figure is the batch's
end-to-end time (prefill included) over the output length, as vLLM's `bench latency` reports it: the
pace at which each user of the batch receives tokens. Beside it, the median of the same decode steps
timed one by one with a device synchronisation after each, which hides nothing but also overlaps nothing
(the engine prepares step N+1 while the GPU runs step N). The floor is one read of all weights plus every
request's KV cache, over the device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.workloads import (
    environment,
    kv_element_size,
    latency_floor_seconds,
    latency_prompts,
    load_config,
    measure_copy_bandwidth,
    triton_compiles,
    write_model_dir,
)


def _add_batch(engine, batch_size: int, input_len: int, output_len: int, seed: int, tag: str) -> None:
    from lmserve import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for index, prompt in enumerate(latency_prompts(batch_size, input_len, seed)):
        engine.add_request(f"{tag}-{index}", prompt, params)


def end_to_end_step_seconds(engine, batch_size: int, input_len: int, output_len: int, seed: int) -> float:
    """The batch's whole generation time over its output length."""
    _sync()
    start = time.perf_counter()
    _add_batch(engine, batch_size, input_len, output_len, seed, f"e2e-b{batch_size}")
    while engine.has_unfinished_requests():
        engine.step()
    _sync()
    return (time.perf_counter() - start) / output_len


def synchronized_step_seconds(engine, batch_size: int, input_len: int, output_len: int, seed: int) -> float:
    """The median decode step, each timed alone up to a device synchronisation."""
    _add_batch(engine, batch_size, input_len, output_len, seed, f"sync-b{batch_size}")
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        _sync()
        stats = engine.stats()
        if stats.num_running == batch_size and stats.num_waiting == 0:
            times.append(time.perf_counter() - start)
    # The first steps prefill; once all requests decode, every step is one token for each.
    return statistics.median(times[2:] if len(times) > 4 else times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A", help="preset A or B, or a JSON file with a Hugging Face config")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-options", type=json.loads, default={}, help='JSON, e.g. {"enforce_eager": true}')
    parser.add_argument("--out", help="JSON results path (default: benchmarks/results/latency-<config>.json)")
    args = parser.parse_args()

    from lmserve.engine.llm_engine import LLMEngine

    config = load_config(args.config)
    options = {"dtype": "bfloat16", "max_model_len": args.input_len + args.output_len + 16, **args.engine_options}
    engine = LLMEngine.from_options(write_model_dir(config), load_format="dummy", skip_tokenizer_init=True, **options)
    end_to_end_step_seconds(engine, 2, 16, 8, args.seed)  # warm-up
    bandwidth = measure_copy_bandwidth()
    rows = []
    for batch_size in args.batch_sizes:
        lengths = (batch_size, args.input_len, args.output_len, args.seed)
        with triton_compiles() as compiles:
            seconds = end_to_end_step_seconds(engine, *lengths)
        synchronized = synchronized_step_seconds(engine, *lengths)
        floor = latency_floor_seconds(config, batch_size, args.input_len, args.output_len, bandwidth,
                                      kv_element_size(options))
        rows.append({"batch_size": batch_size, "ms_per_step": seconds * 1000, "floor_ms": floor * 1000,
                     "fraction_of_floor": floor / seconds, "synchronized_median_ms": synchronized * 1000,
                     "triton_compiles_in_timed_run": compiles})
    report = {**environment(), "config": args.config, "input_len": args.input_len, "output_len": args.output_len,
              "engine_options": options, "bandwidth_bytes_per_s": bandwidth, "results": rows}
    out = Path(args.out or f"benchmarks/results/latency-{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'batch':>6} {'ms/step':>9} {'floor ms':>9} {'of floor':>9} {'synced ms':>10}")
    for row in rows:
        figures = f"{row['ms_per_step']:>9.2f} {row['floor_ms']:>9.2f} {row['fraction_of_floor']:>9.1%}"
        figures += f" {row['synchronized_median_ms']:>10.2f}"
        print(f"{row['batch_size']:>6} {figures}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
