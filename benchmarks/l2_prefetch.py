"""Does warming L2 with a projection's weight, beside the small kernels before it, shorten the projection?

    python -m benchmarks.l2_prefetch --config B --window-us 10

At decode batch 1 the kernels between q/k/v and o (rotary, the cache write, attention) read almost
nothing for about 10 us, on a few SMs. This times, for each projection of the workload's layer at one row:
- `linear` / `gemv`: the projection alone, its weight cold (8 copies rotated, far more than L2);
- `window+linear`: a spin kernel of `--window-us` on one SM (standing in for those kernels), then the
  projection;
- `window+linear, prefetch(c)`: the same, with `prefetch_to_l2` of the weight in chunks of c bytes on a
  side stream that forks before the window and joins before the projection;
- `prefetch(c)+linear`: the prefetch, then the projection, in one stream.
Figures are median device times per call replayed from a CUDA graph.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.linear_small_batch import layer_shapes
from benchmarks.workloads import device_time_ms, environment, load_config

_COPIES = 8
CHUNKS = (4096, 16384, 65536)


def spin_cycles(window_us: float) -> int:
    return int(window_us * torch.cuda.get_device_properties(0).clock_rate / 1000)  # clock_rate is in kHz


def timed(weights: list[torch.Tensor], step: Callable[[torch.Tensor], object]) -> float:
    """Microseconds per call of `step(weight)`, rotating over `weights`."""
    cycle = itertools.cycle(weights)
    return 1000 * device_time_ms(lambda: step(next(cycle)), calls_per_graph=len(weights))


def measure_layer(num_in: int, weights: list[torch.Tensor], window_us: float) -> dict[str, float]:
    from lmserve.kernels.gemv import GemvTile, gemv
    from lmserve.kernels.prefetch import prefetch_to_l2

    x = torch.randn(1, num_in, dtype=torch.bfloat16, device="cuda")
    cycles = spin_cycles(window_us)
    side = torch.cuda.Stream()
    projections = {"linear": lambda weight: F.linear(x, weight),
                   "gemv": lambda weight: gemv(x, weight, tile=GemvTile(8, 1024, 4, 3))}

    def with_prefetch(project: Callable, chunk: int) -> Callable[[torch.Tensor], object]:
        def step(weight: torch.Tensor) -> object:
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                prefetch_to_l2(weight, chunk)
            torch.cuda._sleep(cycles)
            main.wait_stream(side)
            return project(weight)
        return step

    results = {}
    for name, project in projections.items():
        results[name] = timed(weights, project)
        results[f"window+{name}"] = timed(weights, lambda weight, project=project: (torch.cuda._sleep(cycles),
                                                                                    project(weight)))
        for chunk in CHUNKS:
            results[f"window+{name}, prefetch({chunk})"] = timed(weights, with_prefetch(project, chunk))
            results[f"prefetch({chunk})+{name}"] = timed(
                weights, lambda weight, project=project, chunk=chunk: (prefetch_to_l2(weight, chunk), project(weight)))
    results["window"] = timed(weights, lambda weight: torch.cuda._sleep(cycles))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="B")
    parser.add_argument("--window-us", type=float, default=10.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    results = []
    for name, (num_in, num_out, _) in layer_shapes(config).items():
        if name == "lm_head":
            continue
        weights = [torch.randn(num_out, num_in, dtype=torch.bfloat16, device="cuda") for _ in range(_COPIES)]
        for variant, us in measure_layer(num_in, weights, args.window_us).items():
            results.append({"layer": name, "in": num_in, "out": num_out, "variant": variant, "us": us})
            print(f"{name:<13} {num_in:>6} {num_out:>6} {variant:>36} {us:>8.2f} us", flush=True)
        del weights
    out = Path(args.out or f"benchmarks/results/l2-prefetch-{args.config}.json")
    out.write_text(json.dumps({**environment(), "config": args.config, "window_us": args.window_us,
                               "l2_bytes": torch.cuda.get_device_properties(0).L2_cache_size,
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
