"""Builds one step's flat model inputs from the scheduled requests, vectorised over tokens.

`layout_step` does the work on the host (numpy); `to_device` moves the result for an eager forward, and
the CUDA graph path (`cuda_graphs.py`) copies the same arrays into its static buffers instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmserve.attention import AttentionMetadata
from lmserve.engine.scheduler import SchedulerOutput


@dataclass
class StepLayout:
    """One step's inputs as host arrays; `sample_indices` are the flat rows whose logits get sampled."""

    token_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slot_mapping: np.ndarray  # [num_tokens] int64
    block_tables: np.ndarray  # [num_requests, max_blocks_per_request] int64, padded with 0
    seq_lens: np.ndarray  # [num_requests] int64
    query_start_loc: np.ndarray  # [num_requests + 1] int64
    sample_indices: np.ndarray  # [len(sampling_rows)] int64
    sampling_rows: list[int]  # which scheduled requests sample this step, in `sample_indices` order

    @property
    def num_requests(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.token_ids.shape[0]

    @property
    def max_query_len(self) -> int:
        return int(np.diff(self.query_start_loc).max())

    @property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max())

    @property
    def every_token_samples(self) -> bool:
        """True when each request computes one token and samples it, so `sample_indices` is 0, 1, ..."""
        return len(self.sampling_rows) == self.num_tokens


@dataclass
class StepInputs:
    """The device tensors of one eager forward pass."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata


def layout_step(batch: SchedulerOutput, block_size: int) -> StepLayout:
    """Lay the scheduled tokens out flat: request i's new tokens follow request i-1's.

    The only Python loop is over requests (to slice their token lists and block tables); positions,
    slot mapping and offsets come from array arithmetic over all tokens at once.
    """
    num_requests = len(batch.requests)
    query_lens = np.asarray(batch.num_new_tokens, dtype=np.int64)
    starts = np.fromiter((r.num_computed_tokens for r in batch.requests), dtype=np.int64, count=num_requests)
    seq_lens = starts + query_lens
    query_start_loc = np.zeros(num_requests + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])

    token_ids = np.concatenate(
        [np.asarray(r.token_ids[s:e], dtype=np.int64) for r, s, e in zip(batch.requests, starts, seq_lens, strict=True)]
    )
    owner = np.repeat(np.arange(num_requests), query_lens)
    positions = np.arange(num_tokens, dtype=np.int64) - query_start_loc[owner] + starts[owner]

    max_blocks = max(len(ids) for ids in batch.block_ids)
    block_tables = np.zeros((num_requests, max_blocks), dtype=np.int64)
    for row, ids in enumerate(batch.block_ids):
        block_tables[row, : len(ids)] = ids
    slot_mapping = block_tables[owner, positions // block_size] * block_size + positions % block_size

    sampling_rows = [i for i in range(num_requests) if batch.samples(i)]
    sample_indices = query_start_loc[1:][sampling_rows] - 1
    return StepLayout(
        token_ids=token_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        seq_lens=seq_lens,
        query_start_loc=query_start_loc,
        sample_indices=sample_indices,
        sampling_rows=sampling_rows,
    )


def to_device(layout: StepLayout, device: torch.device) -> StepInputs:
    """Copy a layout's arrays to `device` for an eager forward (no host synchronisation)."""

    def move(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device, non_blocking=True)

    metadata = AttentionMetadata(
        slot_mapping=move(layout.slot_mapping),
        block_tables=move(layout.block_tables),
        seq_lens=move(layout.seq_lens),
        query_start_loc=move(layout.query_start_loc),
        max_query_len=layout.max_query_len,
        max_seq_len=layout.max_seq_len,
    )
    return StepInputs(input_ids=move(layout.token_ids), positions=move(layout.positions), metadata=metadata)


def prepare_inputs(batch: SchedulerOutput, block_size: int, device: torch.device) -> StepInputs:
    """`layout_step` then `to_device`: the eager path's inputs in one call."""
    return to_device(layout_step(batch, block_size), device)
