"""Builds one step's flat model inputs from the scheduled requests, vectorised over tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmserve.attention import AttentionMetadata
from lmserve.engine.scheduler import SchedulerOutput


@dataclass
class StepInputs:
    """The tensors of one forward pass; `sample_indices` are the flat rows whose logits get sampled."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    sample_indices: torch.Tensor
    sampling_rows: list[int]  # which scheduled requests sample this step, in `sample_indices` order
    query_start_loc: np.ndarray


def prepare_inputs(batch: SchedulerOutput, block_size: int, device: torch.device) -> StepInputs:
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

    def to_device(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device, non_blocking=True)

    metadata = AttentionMetadata(
        slot_mapping=to_device(slot_mapping),
        block_tables=to_device(block_tables),
        seq_lens=to_device(seq_lens),
        query_start_loc=to_device(query_start_loc),
        max_query_len=int(query_lens.max()),
        max_seq_len=int(seq_lens.max()),
    )
    return StepInputs(
        input_ids=to_device(token_ids),
        positions=to_device(positions),
        metadata=metadata,
        sample_indices=to_device(sample_indices),
        sampling_rows=sampling_rows,
        query_start_loc=query_start_loc,
    )
