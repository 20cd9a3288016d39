"""A snapshot of the scheduler and KV cache for metrics; sent from the engine core to the frontend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SchedulerStats:
    """A snapshot for metrics."""

    num_running: int
    num_waiting: int
    num_used_blocks: int
    num_total_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int

    @property
    def kv_cache_usage(self) -> float:
        return self.num_used_blocks / self.num_total_blocks
