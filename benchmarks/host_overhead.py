"""The host's time per engine step: scheduling, input preparation, sampling metadata and output handling.

    python -m benchmarks.host_overhead --batch-size 256
    python -m benchmarks.host_overhead --batch-size 256 --temperature 0.8 --repetition-penalty 1.1

With steps overlapped, the GPU hides the host's work only while a step's GPU time is the longer, so this
is the figure to hold against a GPU step (about 1 ms for Qwen3-0.6B at batch 1, 3 ms at batch 128). It
runs on the CPU, with a one-layer model of a 512-token vocabulary, and prints the wall-clock milliseconds
per step of the whole step and of each part (parts nest: the runner's launch holds the forward, the
penalty history, the sampling metadata and the sampler), then writes JSON. The forward is the CPU
model's, not the host's overhead, and swings between runs.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import time
from pathlib import Path

from benchmarks.workloads import environment, make_requests, write_model_dir

TINY_MODEL = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096, "dtype": "float32",
}


def timed_parts(engine) -> tuple[collections.Counter, collections.Counter]:
    """Wrap the step's parts so each adds its wall-clock seconds and its calls to the returned counters."""
    from lmserve.sample import metadata, sampler
    from lmserve.worker import model_runner

    seconds: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    runner = engine.core.runner
    parts = {
        "engine step": (engine, "step"),
        "schedule": (engine.core.scheduler, "schedule"),
        "runner launch": (runner, "launch"),
        "layout_step": (model_runner, "layout_step"),
        "forward": (runner, "_forward"),
        "penalty history": (runner.penalty_history, "penalties"),
        "sampling metadata": (metadata.SamplingMetadata, "build"),
        "sampler": (sampler.Sampler, "__call__"),
        "complete (results, scheduler update)": (engine.core, "_complete"),
        "frontend outputs": (engine.frontend, "process_outputs"),
    }
    for name, (owner, attribute) in parts.items():
        function = getattr(owner, attribute)

        @functools.wraps(function)
        def timed(*args, _function=function, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                seconds[_name] += time.perf_counter() - start
                calls[_name] += 1

        setattr(owner, attribute, timed)
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON results path (default: benchmarks/results/host-overhead-b<batch>.json)")
    args = parser.parse_args()

    from lmserve import LLM, SamplingParams

    requests = make_requests(args.batch_size, (args.input_len, args.input_len), (args.output_len, args.output_len),
                             args.seed)
    prompts = [[token % TINY_MODEL["vocab_size"] for token in r.prompt_token_ids] for r in requests]
    params = SamplingParams(temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                            max_tokens=args.output_len, ignore_eos=True)
    llm = LLM(write_model_dir(TINY_MODEL), load_format="dummy", skip_tokenizer_init=True,
              max_num_seqs=args.batch_size, max_num_batched_tokens=max(8192, args.batch_size * args.input_len))
    llm.generate(prompts[:2], params, use_tqdm=False)
    seconds, calls = timed_parts(llm.engine)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_steps = calls["engine step"]
    per_step_ms = {name: round(1000 * total / num_steps, 3) for name, total in seconds.items()}
    for name, milliseconds in per_step_ms.items():
        print(f"{name:40s} {milliseconds:8.3f} ms per step")
    results = {"batch_size": args.batch_size, "input_len": args.input_len, "output_len": args.output_len,
               "temperature": args.temperature, "repetition_penalty": args.repetition_penalty,
               "elapsed_s": round(elapsed, 3), "steps": num_steps, "ms_per_step": per_step_ms, **environment()}
    out = Path(args.out or f"benchmarks/results/host-overhead-b{args.batch_size}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
