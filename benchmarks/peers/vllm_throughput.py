"""The throughput workload through vLLM, as a peer measured on the same GPU in the same call.

    PYTHONPATH=/root/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 python -m benchmarks.peers.vllm_throughput --config A

vLLM is installed only on the GPU machine (../shared/PEERS.md); lmserve never imports it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.workloads import (
    environment,
    floor_seconds,
    load_config,
    make_requests,
    measure_copy_bandwidth,
    write_model_dir,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    config = load_config(args.config)
    requests = make_requests(args.num_prompts, (100, 1024), (100, 1024), args.seed)
    llm = LLM(model=write_model_dir(config), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=4096, gpu_memory_utilization=0.85)
    prompts = [TokensPrompt(prompt_token_ids=r.prompt_token_ids) for r in requests]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True, detokenize=False)
              for r in requests]
    llm.generate(prompts[:8], [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, detokenize=False)] * 8,
                 use_tqdm=False)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_output = sum(r.output_len for r in requests)
    floor = floor_seconds(config, requests, measure_copy_bandwidth())
    report = {**environment(), "engine": "vllm 0.26.0", "workload": {"config": args.config, "num_prompts":
              args.num_prompts, "seed": args.seed, "output_tokens": num_output}, "elapsed_s": elapsed,
              "output_tokens_per_s": num_output / elapsed, "fraction_of_floor": floor / elapsed}
    out = Path(args.out or f"benchmarks/results/throughput-{args.config}-vllm.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"vllm: {elapsed:.2f} s, {num_output / elapsed:.0f} output tok/s, {floor / elapsed:.1%} of floor")


if __name__ == "__main__":
    main()
