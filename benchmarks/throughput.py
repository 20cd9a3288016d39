"""Offline throughput on a workload of ../shared/WORKLOADS.md, optionally beside a Hugging Face peer.

    python benchmarks/throughput.py --config A                       # lmserve alone
    python benchmarks/throughput.py --config A --peer hf-cb          # and HF continuous batching, same run
    python benchmarks/throughput.py --config my.json --num-prompts 64 --input-len 32 128 --output-len 32 64
    python benchmarks/throughput.py --config A --sampling '{"temperature": 0.6, "top_p": 0.95, "top_k": 20}'

Weights are random (dummy) and EOS is ignored, so every engine does the same work. Prints a table and
writes JSON (output tok/s, total tok/s, elapsed, fraction of the physical floor, device, commit, command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.workloads import (
    Request,
    environment,
    floor_seconds,
    kv_element_size,
    load_config,
    make_requests,
    measure_copy_bandwidth,
    triton_compiles,
    write_model_dir,
)


def run_lmserve(
    model_dir: str, requests: list[Request], engine_options: dict, trace: dict | None = None,
    sampling: dict | None = None,
) -> tuple[float, list[dict]]:
    """Elapsed seconds and the Triton kernels compiled during the timed run; with `trace`, also fills it
    with where the engine steps' time went. `sampling` holds SamplingParams fields (greedy without)."""
    from lmserve import LLM, SamplingParams

    llm = LLM(model_dir, load_format="dummy", skip_tokenizer_init=True, **engine_options)
    warmup = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)] * 8
    llm.generate([r.prompt_token_ids for r in requests[:8]], warmup, use_tqdm=False)
    params = [SamplingParams(**{"temperature": 0.0, **(sampling or {})}, max_tokens=r.output_len, ignore_eos=True)
              for r in requests]
    steps = _trace_steps(llm.engine) if trace is not None else None
    _synchronize()
    with triton_compiles() as compiles:
        start = time.perf_counter()
        llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
        _synchronize()
        elapsed = time.perf_counter() - start
    if steps is not None:
        stats = llm.engine.stats()
        trace.update(_summarise_steps(steps), num_kv_blocks=stats.num_total_blocks, preemptions=stats.num_preemptions,
                     first_steps=[(n, tokens, round(t * 1000, 2)) for n, tokens, t in steps[:80]])
    return elapsed, compiles


def _trace_steps(engine) -> list[tuple[int, int, float]]:
    """Record (requests, tokens, seconds) of every engine step: the step's own batch and its wall time."""
    steps: list[tuple[int, int, float]] = []
    scheduler, step = engine.core.scheduler, engine.step
    schedule = scheduler.schedule
    batches = []

    def traced_schedule():
        batch = schedule()
        batches.append((len(batch.requests), batch.total_num_tokens))
        return batch

    def traced_step():
        begin = time.perf_counter()
        outputs = step()
        steps.append((*batches[-1], time.perf_counter() - begin))
        return outputs

    scheduler.schedule, engine.step = traced_schedule, traced_step
    return steps


def _summarise_steps(steps: list[tuple[int, int, float]]) -> dict:
    """Time in steps that prefill vs decode-only ones, and decode-only steps' median time by batch size."""
    decode = [(n, t) for n, tokens, t in steps if n == tokens and n > 0]
    prefill = [t for n, tokens, t in steps if tokens > n]
    buckets: dict[str, list[float]] = {}
    for n, t in decode:
        low = 2 ** (n.bit_length() - 1)
        buckets.setdefault(f"{low}-{2 * low - 1}", []).append(t)
    return {
        "steps": len(steps),
        "prefill_steps": len(prefill),
        "prefill_seconds": sum(prefill),
        "prefill_median_ms": statistics.median(prefill) * 1000 if prefill else None,
        "prefill_max_ms": max(prefill, default=0.0) * 1000,
        "decode_steps": len(decode),
        "decode_seconds": sum(t for _, t in decode),
        "decode_by_batch_size": {
            name: {"steps": len(times), "seconds": sum(times), "median_ms": statistics.median(times) * 1000}
            for name, times in sorted(buckets.items(), key=lambda item: int(item[0].split("-")[0]))
        },
    }


def run_hf(model_dir: str, requests: list[Request], mode: str, batch_size: int) -> float:
    """Hugging Face transformers: continuous batching (one manager, paged|sdpa) or static `generate`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    attention = "paged|sdpa" if mode == "hf-cb" else "sdpa"
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attention)
    model = model.to(device).eval()
    _synchronize()
    start = time.perf_counter()
    if mode == "hf-cb":
        _run_hf_continuous_batching(model, requests)
    else:
        for index in range(0, len(requests), batch_size):
            batch = requests[index : index + batch_size]
            width = max(len(r.prompt_token_ids) for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, r in enumerate(batch):  # left padding
                ids[row, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
                mask[row, width - len(r.prompt_token_ids) :] = 1
            model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                max_new_tokens=max(r.output_len for r in batch), min_new_tokens=max(r.output_len for r in batch),
                pad_token_id=0,
            )
    _synchronize()
    return time.perf_counter() - start


def _run_hf_continuous_batching(model, requests: list[Request]) -> None:
    """Every request in one continuous-batching manager, each with its own output length (EOS never stops
    one: the generation config has none)."""
    from transformers import GenerationConfig

    generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0,
                                  max_new_tokens=max(r.output_len for r in requests))
    manager = model.init_continuous_batching(generation_config=generation)
    manager.start()
    try:
        for index, request in enumerate(requests):
            manager.add_request(request.prompt_token_ids, request_id=str(index), max_new_tokens=request.output_len)
        finished = 0
        while finished < len(requests):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                if result.error is not None:
                    raise RuntimeError(f"HF continuous batching failed request {result.request_id}: {result.error}")
                if len(result.generated_tokens) != requests[int(result.request_id)].output_len:
                    raise RuntimeError(f"HF generated {len(result.generated_tokens)} tokens for request "
                                       f"{result.request_id}, not {requests[int(result.request_id)].output_len}")
                finished += 1
            elif result is None and not manager.is_running():
                raise RuntimeError("the HF continuous batching thread stopped")
    finally:
        manager.stop(block=True)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="A", help="preset A or B, or a JSON file with a Hugging Face config")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=(100, 1024), metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=(100, 1024), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer", choices=["hf-cb", "hf-static"], action="append", default=[])
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--trace", action="store_true", help="record where the engine steps' time goes")
    parser.add_argument("--engine-options", type=json.loads, default={}, help='JSON, e.g. {"max_num_seqs": 256}')
    parser.add_argument("--sampling", type=json.loads, default={},
                        help='SamplingParams fields as JSON (default greedy), e.g. {"temperature": 0.6, "top_p": 0.95}')
    parser.add_argument("--out", help="JSON results path (default: benchmarks/results/throughput-<config>.json)")
    args = parser.parse_args()
    if args.sampling and args.peer:
        parser.error("the Hugging Face peers decode greedily: --sampling applies to lmserve (and vllm_bench) only")

    config = load_config(args.config)
    model_dir = write_model_dir(config)
    requests = make_requests(args.num_prompts, tuple(args.input_len), tuple(args.output_len), args.seed)
    num_output = sum(r.output_len for r in requests)
    num_total = num_output + sum(len(r.prompt_token_ids) for r in requests)
    bandwidth = measure_copy_bandwidth()
    engine_options = {"dtype": "bfloat16", "max_model_len": 4096, **args.engine_options}
    floor = floor_seconds(config, requests, bandwidth, kv_element_size(engine_options))

    trace = {} if args.trace else None
    elapsed, compiles = run_lmserve(model_dir, requests, engine_options, trace, args.sampling)
    results = {"lmserve": elapsed}
    floors = {"lmserve": floor}
    for peer in args.peer:
        results[peer] = run_hf(model_dir, requests, peer, args.hf_batch_size)
        floors[peer] = floor_seconds(config, requests, bandwidth)  # Hugging Face caches in bf16

    report = {
        **environment(),
        "workload": {"config": args.config, "num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "seed": args.seed, "output_tokens": num_output,
                     "sampling": args.sampling},
        "engine_options": engine_options,
        "bandwidth_bytes_per_s": bandwidth,
        "floor_seconds": floor,
        "floor_output_tokens_per_s": num_output / floor,
        "lmserve_steps": trace,
        "lmserve_triton_compiles_in_timed_run": compiles,
        "engines": {
            name: {"elapsed_s": elapsed, "output_tokens_per_s": num_output / elapsed,
                   "total_tokens_per_s": num_total / elapsed, "fraction_of_floor": floors[name] / elapsed}
            for name, elapsed in results.items()
        },
    }
    for peer in args.peer:
        report["engines"][peer]["lmserve_speedup"] = results[peer] / results["lmserve"]
    out = Path(args.out or f"benchmarks/results/throughput-{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'engine':<10} {'elapsed s':>10} {'out tok/s':>10} {'total tok/s':>12} {'of floor':>9}")
    for name, figures in report["engines"].items():
        print(f"{name:<10} {figures['elapsed_s']:>10.2f} {figures['output_tokens_per_s']:>10.0f} "
              f"{figures['total_tokens_per_s']:>12.0f} {figures['fraction_of_floor']:>9.1%}")
    if trace:
        print(json.dumps(trace, indent=1))
    if compiles:
        compiled = [event for event in compiles if not event["cache_hit"]]
        print(f"Triton kernel variants new to the timed run: {len(compiles)} ({len(compiled)} compiled, "
              f"{sum(event['compile_ms'] for event in compiled) / 1000:.2f} s): "
              f"{sorted({event['kernel'] for event in compiles})}")
    print(f"floor: {floor:.2f} s ({num_output / floor:.0f} output tok/s at {bandwidth / 1e12:.2f} TB/s); wrote {out}")


if __name__ == "__main__":
    main()
