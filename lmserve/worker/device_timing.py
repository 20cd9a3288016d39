"""Device time of small GPU calls, replayed from a CUDA graph so that the host's launch cost does not count."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def device_time_ms(fn: Callable[[], object], iterations: int = 20, calls_per_graph: int = 10) -> float:
    """Median device milliseconds per call of `fn`, over `iterations` replays of `calls_per_graph` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_graph)
    return statistics.median(times)
