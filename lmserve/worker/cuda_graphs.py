"""CUDA graphs for whole steps, replayed on padded inputs: decode-only steps by batch size, mixed steps by
token count.

A step launches a dozen kernels per layer; issued one by one from Python they cost more than the GPU
work itself at small batches, and a prefill chunk of thousands of tokens still waits on the host's
launches of its small kernels. A graph captured once per shape replays them all at once. Every graph
reads the same static input buffers:
- a decode step of B <= G requests (one token each) is padded to G rows with dummy requests that write
  nothing (slot -1) and attend to one key of block 0;
- any other step of at most T tokens is padded to T tokens and to a few requests more than a step can
  have: spare requests that compute the padding tokens as fresh contexts that write nothing, each no
  longer than a block table row reaches (see `StepLayout.padded_mixed`).
Every layer treats tokens independently and attention reads only each request's own keys, so the real
rows' results do not depend on the padding.
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
    padding_query_lens,
)

logger = logging.getLogger(__name__)

MAX_DEFAULT_CAPTURE_SIZE = 512
WARMUP_RUNS = 2  # the first compiles the Triton kernels and sets up cuBLAS; nothing may do that mid-capture


def capture_sizes(configured: list[int] | None, max_num_seqs: int) -> list[int]:
    """The decode batch sizes to capture, ascending; no step has more requests than `max_num_seqs`.

    Configured sizes are capped at `max_num_seqs`. The default ladder is 1, 2, 4, 8, 16, 24, 32, then
    every 16 up to min(max_num_seqs, 512), which is always included: a batch pads by at most 15 rows.
    """
    if configured is not None:
        return sorted({min(size, max_num_seqs) for size in configured})
    largest = min(max_num_seqs, MAX_DEFAULT_CAPTURE_SIZE)
    ladder = [1, 2, 4, 8, 16, 24, 32, *range(48, largest + 1, 16)]
    return sorted({size for size in ladder if size <= largest} | {largest})


def token_capture_sizes(configured: list[int] | None, max_num_batched_tokens: int) -> list[int]:
    """The mixed-step token counts to capture, ascending, capped at `max_num_batched_tokens`.

    The default ladder is 256, 512, then every 1024 up to `max_num_batched_tokens`, which is always included:
    a step pads by at most 1023 tokens past 1024 (a quarter of a 4096-token step's work at worst), and an
    8192-token budget takes 11 graphs.
    """
    if configured is None:
        configured = [256, 512, *range(1024, max_num_batched_tokens, 1024), max_num_batched_tokens]
    return sorted({min(size, max_num_batched_tokens) for size in configured})


def padded_size(sizes: list[int], batch_size: int) -> int | None:
    """The smallest of the ascending `sizes` that holds `batch_size` requests; None if none does."""
    index = bisect.bisect_left(sizes, batch_size)
    return sizes[index] if index < len(sizes) else None


class StepGraphs:
    """Captured steps keyed by their padded shape (tokens, requests); `pad` picks the shape for a step and
    `run` replays its graph.

    Every graph reads the same static input buffers. Their block table columns past a step's width keep
    stale entries, which is harmless: a request reads only the columns its own seq_len reaches.
    """

    def __init__(
        self,
        model: nn.Module,
        batch_sizes: list[int],
        token_sizes: list[int],
        max_num_seqs: int,
        max_blocks_per_seq: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.batch_sizes = sorted(batch_sizes)
        self.token_sizes = sorted(token_sizes)
        self.device = device
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        self.max_context = max_blocks_per_seq * block_size
        # A step's requests and the spare ones that take its padding tokens, max_context at most each.
        self.spare_requests = -(-max(self.token_sizes, default=1) // self.max_context)
        self.mixed_requests = max_num_seqs + self.spare_requests
        max_tokens = max([self.batch_sizes[-1], *self.token_sizes])
        max_requests = max(self.batch_sizes[-1], self.mixed_requests if self.token_sizes else 0)
        vectors = torch.tensor([[PAD_TOKEN_ID], [PAD_POSITION], [PAD_SLOT]], device=device)
        self.input_ids, self.positions, self.slot_mapping = vectors.repeat(1, max_tokens).unbind(0)
        self.seq_lens = torch.zeros(max_requests, dtype=torch.int64, device=device)
        self.decode_order = torch.arange(self.batch_sizes[-1], dtype=torch.int64, device=device)
        self.query_start_loc = torch.zeros(max_requests + 1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(max_requests, max_blocks_per_seq, dtype=torch.int64, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}  # each graph's static hidden states [tokens, hidden]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every captured (tokens, requests): decode graphs, then mixed ones."""
        return [(size, size) for size in self.batch_sizes] + [(t, self.mixed_requests) for t in self.token_sizes]

    def pad(self, layout: StepLayout) -> StepLayout | None:
        """The layout padded to a captured shape; None if none holds it."""
        if layout.block_tables.shape[1] > self.max_blocks_per_seq:
            return None
        if layout.decode_only and (size := padded_size(self.batch_sizes, layout.num_requests)) is not None:
            return layout.padded(size)
        if layout.num_requests + self.spare_requests <= self.mixed_requests and (
            size := padded_size(self.token_sizes, layout.num_tokens)
        ) is not None:
            return layout.padded_mixed(size, self.mixed_requests, self.max_context)
        return None

    @torch.inference_mode()
    def capture(self) -> None:
        """Record a graph per shape, largest first, all in one memory pool: intermediates freed at the end
        of a capture are reused by the next (smaller) one, which is safe as graphs never run concurrently.

        The buffers hold padding only, so the warm-up and captured runs write nothing to the cache.
        """
        start = time.perf_counter()
        torch.cuda.empty_cache()  # so that the free memory measured below changes only by what capture takes
        free_before = torch.cuda.mem_get_info(self.device)[0]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the cache and buffers are initialised
        with torch.cuda.stream(stream):
            for shape in sorted(self.shapes, reverse=True):
                self._fill_with_padding(*shape)
                for _ in range(WARMUP_RUNS):
                    self._forward(*shape)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[shape] = self._forward(*shape)
                self.graphs[shape] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        used = (free_before - torch.cuda.mem_get_info(self.device)[0]) / 2**20
        seconds = time.perf_counter() - start
        logger.info("captured %d decode CUDA graphs (batch sizes up to %d) and %d mixed-step ones (%s tokens) "
                    "in %.1f s using %.0f MiB", len(self.batch_sizes), self.batch_sizes[-1], len(self.token_sizes),
                    self.token_sizes, seconds, used)

    def run(self, inputs: StepInputs) -> torch.Tensor:
        """Replay the graph of the inputs' shape (a padded layout's: see `pad`); its hidden states.

        The result is the graph's static output: read it before the next replay.
        """
        metadata = inputs.metadata
        tokens, requests = inputs.input_ids.shape[0], metadata.seq_lens.shape[0]
        self.input_ids[:tokens].copy_(inputs.input_ids)
        self.positions[:tokens].copy_(inputs.positions)
        self.slot_mapping[:tokens].copy_(metadata.slot_mapping)
        self.seq_lens[:requests].copy_(metadata.seq_lens)
        if metadata.decode_order is not None:
            self.decode_order[:requests].copy_(metadata.decode_order)
        self.query_start_loc[: requests + 1].copy_(metadata.query_start_loc)
        self.block_tables[:requests, : metadata.block_tables.shape[1]].copy_(metadata.block_tables)
        self.graphs[tokens, requests].replay()
        return self.outputs[tokens, requests]

    def _fill_with_padding(self, tokens: int, requests: int) -> None:
        """Buffers of a step that is all padding: one-token dummy requests, or dummy contexts of `tokens` in all."""
        self.slot_mapping.fill_(PAD_SLOT)
        if requests != self.mixed_requests:  # decode sizes never reach a mixed step's request count
            self.seq_lens[:requests].fill_(PAD_SEQ_LEN)
            self.query_start_loc[: requests + 1].copy_(torch.arange(requests + 1, device=self.device))
        else:
            query_lens = torch.from_numpy(padding_query_lens(tokens, requests, self.max_context)).to(self.device)
            self.seq_lens[:requests].copy_(query_lens)
            self.query_start_loc[0] = 0
            torch.cumsum(query_lens, dim=0, out=self.query_start_loc[1 : requests + 1])

    def _forward(self, tokens: int, requests: int) -> torch.Tensor:
        is_mixed = requests == self.mixed_requests
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:tokens],
            block_tables=self.block_tables[:requests],
            seq_lens=self.seq_lens[:requests],
            query_start_loc=self.query_start_loc[: requests + 1],
            # Decode graphs take the one-token tiles; mixed ones the prefill tiles, which hold any query length.
            max_query_len=tokens if is_mixed else 1,
            # An upper bound (the Triton kernels read each request's seq_len on the device instead).
            max_seq_len=self.max_blocks_per_seq * self.block_size,
            decode_order=None if is_mixed else self.decode_order[:requests],
        )
        return self.model(self.input_ids[:tokens], self.positions[:tokens], metadata)
