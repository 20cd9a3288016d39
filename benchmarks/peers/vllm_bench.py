"""The throughput and latency workloads through vLLM, a peer measured on the same GPU in the same call.

    PYTHONPATH=/root/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 python -m benchmarks.peers.vllm_bench --config A

One vLLM engine serves both measurements, as its start-up (torch.compile, CUDA graph capture) costs more
than either: first the offline throughput workload (as `benchmarks/throughput.py` runs it), then decode
latency per token at each batch size (as `benchmarks/latency.py` measures it: the batch's end-to-end time
over its output length, with the same prompts). vLLM is installed only on the GPU machine
(../shared/PEERS.md); lmserve never imports it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.workloads import (
    environment,
    floor_seconds,
    kv_element_size,
    latency_floor_seconds,
    latency_prompts,
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
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8, 32, 128], help="none: no latency")
    parser.add_argument("--input-len", type=int, default=128, help="of the latency prompts")
    parser.add_argument("--output-len", type=int, default=512, help="of the latency requests")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto or fp8, as vLLM's option")
    parser.add_argument("--sampling", type=json.loads, action="append",
                        help="SamplingParams fields as JSON for the throughput workload (default greedy); "
                             "each --sampling runs the workload once more, on the same engine")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    def generate(prompts: list[list[int]], output_lens: list[int], sampling: dict | None = None) -> float:
        fields = {"temperature": 0, **(sampling or {})}
        params = [SamplingParams(**fields, max_tokens=n, ignore_eos=True, detokenize=False) for n in output_lens]
        start = time.perf_counter()
        llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return time.perf_counter() - start

    config = load_config(args.config)
    llm = LLM(model=write_model_dir(config), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=4096, gpu_memory_utilization=0.85, kv_cache_dtype=args.kv_cache_dtype)
    kv_bytes = kv_element_size({"kv_cache_dtype": args.kv_cache_dtype})
    bandwidth = measure_copy_bandwidth()
    requests = make_requests(args.num_prompts, (100, 1024), (100, 1024), args.seed)
    num_output = sum(r.output_len for r in requests)
    floor = floor_seconds(config, requests, bandwidth, kv_bytes)
    throughput = []
    for sampling in args.sampling or [{}]:
        # Each run starts as throughput.py's fresh engine does: only the warm-up's prompts in the prefix cache.
        llm.reset_prefix_cache()
        generate([r.prompt_token_ids for r in requests[:8]], [16] * 8)  # warm-up
        elapsed = generate([r.prompt_token_ids for r in requests], [r.output_len for r in requests], sampling)
        throughput.append({"workload": {"config": args.config, "num_prompts": args.num_prompts, "seed": args.seed,
                                        "output_tokens": num_output, "sampling": sampling},
                           "elapsed_s": elapsed, "output_tokens_per_s": num_output / elapsed,
                           "fraction_of_floor": floor / elapsed})

    latency = []
    for batch_size in args.batch_sizes:
        seconds = generate(latency_prompts(batch_size, args.input_len, args.seed), [args.output_len] * batch_size)
        step = seconds / args.output_len
        step_floor = latency_floor_seconds(config, batch_size, args.input_len, args.output_len, bandwidth, kv_bytes)
        latency.append({"batch_size": batch_size, "ms_per_step": step * 1000, "floor_ms": step_floor * 1000,
                        "fraction_of_floor": step_floor / step})

    report = {
        **environment(), "engine": "vllm 0.26.0", "kv_cache_dtype": args.kv_cache_dtype,
        "bandwidth_bytes_per_s": bandwidth,
        "throughput": throughput,  # one run per --sampling
        "latency": {"input_len": args.input_len, "output_len": args.output_len, "results": latency},
    }
    out = Path(args.out or f"benchmarks/results/vllm-{args.config}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    for run in throughput:
        print(f"vllm throughput {json.dumps(run['workload']['sampling'])}: {run['elapsed_s']:.2f} s, "
              f"{run['output_tokens_per_s']:.0f} output tok/s, {run['fraction_of_floor']:.1%} of floor")
    for row in latency:
        print(f"vllm latency b{row['batch_size']}: {row['ms_per_step']:.2f} ms/step, {row['fraction_of_floor']:.1%}")


if __name__ == "__main__":
    main()
