"""CUDA graphs for decode-only steps: one graph per batch size of a ladder, replayed on padded inputs.

A decode step launches a dozen small kernels per layer; issued one by one from Python they cost more
than the GPU work itself at small batches. A graph captured once per batch size G replays them all at
once. Every graph reads the same static input buffers: a step of B <= G requests, each computing one
token, is padded on the host to G rows with dummy requests that write nothing (slot -1) and attend to
one key of block 0, and copied into the buffers on the device. Every layer treats rows independently, so the real
rows' results do not depend on the padding. Prefill and mixed steps stay eager.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from lmserve.attention import AttentionMetadata
from lmserve.worker.input_preparation import (
    PAD_POSITION,
    PAD_SEQ_LEN,
    PAD_SLOT,
    PAD_TOKEN_ID,
    StepInputs,
    StepLayout,
)

logger = logging.getLogger(__name__)

MAX_DEFAULT_CAPTURE_SIZE = 512
WARMUP_RUNS = 2  # the first compiles the Triton kernels and sets up cuBLAS; nothing may do that mid-capture



def capture_sizes(configured: list[int] | None, max_num_seqs: int) -> list[int]:
    """The batch sizes to capture, ascending; no step has more requests than `max_num_seqs`.

    Configured sizes are capped at `max_num_seqs`. The default ladder is 1, 2, 4, 8, 16, 24, 32, then
    every 16 up to min(max_num_seqs, 512), which is always included: a batch pads by at most 15 rows.
    """
    if configured is not None:
        return sorted({min(size, max_num_seqs) for size in configured})
    largest = min(max_num_seqs, MAX_DEFAULT_CAPTURE_SIZE)
    ladder = [1, 2, 4, 8, 16, 24, 32, *range(48, largest + 1, 16)]
    return sorted({size for size in ladder if size <= largest} | {largest})


def padded_size(sizes: list[int], batch_size: int) -> int | None:
    """The smallest of the ascending `sizes` that holds `batch_size` requests; None if none does."""
    index = bisect.bisect_left(sizes, batch_size)
    return sizes[index] if index < len(sizes) else None


class DecodeGraphs:
    """One captured decode step per batch size; `run` replays the graph of the step's (padded) size.

    Every graph reads the same static input buffers. Their block table columns past a step's width keep
    stale entries, which is harmless: a request reads only the columns its own seq_len reaches.
    """

    def __init__(
        self, model: nn.Module, sizes: list[int], max_blocks_per_seq: int, block_size: int, device: torch.device
    ) -> None:
        self.model = model
        self.sizes = sorted(sizes)
        self.device = device
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        largest = self.sizes[-1]
        vectors = torch.tensor([[PAD_TOKEN_ID], [PAD_POSITION], [PAD_SLOT], [PAD_SEQ_LEN]], device=device)
        self.input_ids, self.positions, self.slot_mapping, self.seq_lens = vectors.repeat(1, largest).unbind(0)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int64, device=device)
        # One query token per request, so the offsets never change.
        self.query_start_loc = torch.arange(largest + 1, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's static hidden states [size, hidden]

    def graph_size(self, layout: StepLayout) -> int | None:
        """The captured size to pad this step to; None unless it is decode-only and fits a graph."""
        if not layout.is_decode_only or layout.block_tables.shape[1] > self.max_blocks_per_seq:
            return None
        return padded_size(self.sizes, layout.num_requests)

    @torch.inference_mode()
    def capture(self) -> None:
        """Record a graph per size, largest first, all in one memory pool: intermediates freed at the end
        of a capture are reused by the next (smaller) one, which is safe as graphs never run concurrently.

        The buffers hold padding rows only, so the warm-up and captured runs write nothing to the cache.
        """
        start = time.perf_counter()
        torch.cuda.empty_cache()  # so that the free memory measured below changes only by what capture takes
        free_before = torch.cuda.mem_get_info(self.device)[0]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the cache and buffers are initialised
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):
                for _ in range(WARMUP_RUNS):
                    self._forward(size)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[size] = self._forward(size)
                self.graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        used = (free_before - torch.cuda.mem_get_info(self.device)[0]) / 2**20
        seconds = time.perf_counter() - start
        logger.info("captured %d decode CUDA graphs (batch sizes up to %d) in %.1f s using %.0f MiB", len(self.sizes),
                    self.sizes[-1], seconds, used)

    def run(self, inputs: StepInputs) -> torch.Tensor:
        """Replay the graph of the inputs' size (a captured one: see `graph_size`); its hidden states.

        The result is the graph's static output: read it before the next replay.
        """
        size = inputs.input_ids.shape[0]
        width = inputs.metadata.block_tables.shape[1]
        self.input_ids[:size].copy_(inputs.input_ids)
        self.positions[:size].copy_(inputs.positions)
        self.slot_mapping[:size].copy_(inputs.metadata.slot_mapping)
        self.seq_lens[:size].copy_(inputs.metadata.seq_lens)
        self.block_tables[:size, :width].copy_(inputs.metadata.block_tables)
        self.graphs[size].replay()
        return self.outputs[size]

    def _forward(self, size: int) -> torch.Tensor:
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1,
            # An upper bound (the Triton kernels read each request's seq_len on the device instead).
            max_seq_len=self.max_blocks_per_seq * self.block_size,
        )
        return self.model(self.input_ids[:size], self.positions[:size], metadata)
