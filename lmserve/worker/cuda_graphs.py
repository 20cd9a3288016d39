"""CUDA graphs for decode-only steps: one graph per batch size of a ladder, replayed on padded inputs.

A decode step launches a dozen small kernels per layer; issued one by one from Python they cost more
than the GPU work itself at small batches. A graph captured once per batch size G replays them all at
once. Every graph reads the same static input buffers: a step of B <= G requests, each computing one
token, copies its inputs into the first B rows and pads rows B..G-1 with dummy requests that write
nothing (slot -1) and attend to one key of block 0. Every layer treats rows independently, so the real
rows' results do not depend on the padding. Prefill and mixed steps stay eager.
"""

from __future__ import annotations

import bisect
import logging
import time

import numpy as np
import torch
from torch import nn

from lmserve.attention import AttentionMetadata
from lmserve.worker.input_preparation import StepLayout

logger = logging.getLogger(__name__)

MAX_DEFAULT_CAPTURE_SIZE = 512
WARMUP_RUNS = 2  # the first compiles the Triton kernels and sets up cuBLAS; nothing may do that mid-capture

# A padding row: token 0 at position 0, no cache write (slot -1), a context of one key.
_PAD_TOKEN_ID, _PAD_POSITION, _PAD_SLOT, _PAD_SEQ_LEN = 0, 0, -1, 1


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


class DecodeInputBuffers:
    """The static device inputs every decode graph reads, and the host staging they are filled from.

    The per-request vectors (token ids, positions, slots, seq lens) and a step's [G, width] block table
    share one flat staging buffer, so a step costs one host-to-device copy; the table part is then spread
    into the static [max_batch_size, max_blocks_per_seq] table. Its columns past `width` keep stale
    entries, which is harmless: a request reads only the columns its own seq_len reaches.
    """

    def __init__(self, max_batch_size: int, max_blocks_per_seq: int, block_size: int, device: torch.device) -> None:
        self.max_batch_size = max_batch_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        self.device = device
        size = 4 * max_batch_size + max_batch_size * max_blocks_per_seq
        self._staging = torch.zeros(size, dtype=torch.int64, device=device)
        # Pinned host memory makes the copy truly asynchronous; only CUDA has it.
        self._host = torch.zeros(size, dtype=torch.int64, pin_memory=device.type == "cuda")
        self._host_vectors = self._host.numpy()[: 4 * max_batch_size].reshape(4, max_batch_size)
        self._host_vectors[:] = np.array([[_PAD_TOKEN_ID], [_PAD_POSITION], [_PAD_SLOT], [_PAD_SEQ_LEN]])
        self._staging[: 4 * max_batch_size].copy_(self._host[: 4 * max_batch_size])
        self._copied = torch.cuda.Event() if device.type == "cuda" else None

        # The graphs read the vectors straight from the staging's device side, so they need no extra copy.
        vectors = self._staging[: 4 * max_batch_size].view(4, max_batch_size)
        self.input_ids, self.positions, self.slot_mapping, self.seq_lens = vectors.unbind(0)
        self.block_tables = torch.zeros(max_batch_size, max_blocks_per_seq, dtype=torch.int64, device=device)
        # One query token per request, so the offsets never change.
        self.query_start_loc = torch.arange(max_batch_size + 1, dtype=torch.int64, device=device)

    def fits(self, layout: StepLayout) -> bool:
        """Whether the step is decode-only (one token per request) and small enough for these buffers."""
        return (
            layout.num_tokens == layout.num_requests
            and layout.num_requests <= self.max_batch_size
            and layout.block_tables.shape[1] <= self.max_blocks_per_seq
        )

    def metadata(self, graph_size: int) -> AttentionMetadata:
        """Attention metadata over the first `graph_size` rows of the static buffers."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:graph_size],
            block_tables=self.block_tables[:graph_size],
            seq_lens=self.seq_lens[:graph_size],
            query_start_loc=self.query_start_loc[: graph_size + 1],
            max_query_len=1,
            # An upper bound (the Triton kernels read each request's seq_len on the device instead).
            max_seq_len=self.max_blocks_per_seq * self.block_size,
        )

    def load(self, layout: StepLayout, graph_size: int) -> None:
        """Copy a decode step's inputs into rows 0..B-1 and padding into rows B..graph_size-1."""
        num_requests, width = layout.num_requests, layout.block_tables.shape[1]
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy may still be reading the staging
        vectors = self._host_vectors
        vectors[0, :num_requests] = layout.token_ids
        vectors[1, :num_requests] = layout.positions
        vectors[2, :num_requests] = layout.slot_mapping
        vectors[3, :num_requests] = layout.seq_lens
        vectors[:, num_requests:graph_size] = np.array([[_PAD_TOKEN_ID], [_PAD_POSITION], [_PAD_SLOT], [_PAD_SEQ_LEN]])
        table_start = 4 * self.max_batch_size
        table_end = table_start + graph_size * width
        table = self._host.numpy()[table_start:table_end].reshape(graph_size, width)
        table[:num_requests] = layout.block_tables
        table[num_requests:] = 0  # padding rows read block 0

        self._staging[:table_end].copy_(self._host[:table_end], non_blocking=True)
        self.block_tables[:graph_size, :width].copy_(self._staging[table_start:table_end].view(graph_size, width))
        if self._copied is not None:
            self._copied.record()


class DecodeGraphs:
    """One captured decode step per batch size; `run` replays the smallest that holds the step."""

    def __init__(
        self, model: nn.Module, sizes: list[int], max_blocks_per_seq: int, block_size: int, device: torch.device
    ) -> None:
        self.model = model
        self.sizes = sorted(sizes)
        self.device = device
        self.inputs = DecodeInputBuffers(self.sizes[-1], max_blocks_per_seq, block_size, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's static hidden states [size, hidden]

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

    def can_run(self, layout: StepLayout) -> bool:
        """Whether a captured graph can run this step: decode-only and no larger than the largest graph."""
        return self.inputs.fits(layout)

    def run(self, layout: StepLayout) -> torch.Tensor:
        """Replay the step on the smallest graph that holds it; the hidden states [B, hidden] of its rows.

        The result is a view of the graph's static output: read it before the next replay.
        """
        size = padded_size(self.sizes, layout.num_requests)
        self.inputs.load(layout, size)
        self.graphs[size].replay()
        return self.outputs[size][: layout.num_requests]

    def _forward(self, size: int) -> torch.Tensor:
        inputs = self.inputs
        return self.model(inputs.input_ids[:size], inputs.positions[:size], inputs.metadata(size))
