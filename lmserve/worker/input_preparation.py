"""Builds one step's flat model inputs from the scheduled requests, vectorised over tokens.

`layout_step` does the work on the host (numpy); `to_device` moves the result to the device, where an
eager forward reads it directly and a CUDA graph (`cuda_graphs.py`) copies it into its static buffers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from lmserve.attention import AttentionMetadata
from lmserve.engine.scheduler import SchedulerOutput
from lmserve.worker.request_rows import RequestRows
from lmserve.worker.staging import HostToDevice

# A padding row: token 0 at position 0, no cache write (slot -1), a context of one key in block 0.
PAD_TOKEN_ID, PAD_POSITION, PAD_SLOT, PAD_SEQ_LEN = 0, 0, -1, 1


@dataclass
class StepLayout:
    """One step's inputs as host arrays; `sample_indices` are the flat rows whose logits get sampled.

    A token the previous step sampled but the host does not know yet is 0 in `token_ids`: the model
    runner writes it on the device at flat index `pending_indices[j]`, from row `pending_rows[j]` of the
    previous step's sampled tokens.
    """

    token_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slot_mapping: np.ndarray  # [num_tokens] int64
    block_tables: np.ndarray  # [num_requests, max_blocks_per_request] int64, padded with 0
    seq_lens: np.ndarray  # [num_requests] int64
    query_start_loc: np.ndarray  # [num_requests + 1] int64
    sample_indices: np.ndarray  # [len(sampling_rows)] int64
    sampling_rows: list[int]  # which scheduled requests sample this step, in `sample_indices` order
    pending_indices: np.ndarray  # [num_pending] int64
    pending_request_ids: list[str]  # whose pending token goes at each of `pending_indices`
    # Every request computes one token, so attention takes its decode path. Set from the step, not from the
    # arrays: padded for a mixed-step graph, a step's token count may equal its request count by chance.
    decode_only: bool

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

    def padded(self, num_requests: int) -> StepLayout:
        """A decode-only layout with padding requests appended up to `num_requests` (for a CUDA graph)."""
        pad = num_requests - self.num_requests
        if pad == 0:
            return self

        def extend(array: np.ndarray, value: int) -> np.ndarray:
            return np.concatenate([array, np.full((pad, *array.shape[1:]), value, dtype=array.dtype)])

        return dataclasses.replace(
            self,
            token_ids=extend(self.token_ids, PAD_TOKEN_ID),
            positions=extend(self.positions, PAD_POSITION),
            slot_mapping=extend(self.slot_mapping, PAD_SLOT),
            block_tables=extend(self.block_tables, 0),
            seq_lens=extend(self.seq_lens, PAD_SEQ_LEN),
            query_start_loc=np.arange(num_requests + 1, dtype=np.int64),
        )


    def padded_mixed(self, num_tokens: int, num_requests: int, max_context: int) -> StepLayout:
        """The layout padded to exactly `num_tokens` tokens and `num_requests` (> this step's) requests, for a
        CUDA graph of mixed steps. Padding requests come last and share the padding tokens as fresh contexts
        of at most `max_context` tokens (what a block table row reaches), which write nothing (slot -1)."""
        pad_tokens = num_tokens - self.num_tokens
        if pad_tokens < 0:
            raise ValueError(f"cannot pad {self.num_tokens} tokens to {num_tokens}")
        query_lens = padding_query_lens(pad_tokens, num_requests - self.num_requests, max_context)

        def extend(array: np.ndarray, pad: int, value: int) -> np.ndarray:
            return np.concatenate([array, np.full((pad, *array.shape[1:]), value, dtype=array.dtype)])

        return dataclasses.replace(
            self,
            token_ids=extend(self.token_ids, pad_tokens, PAD_TOKEN_ID),
            positions=extend(self.positions, pad_tokens, PAD_POSITION),
            slot_mapping=extend(self.slot_mapping, pad_tokens, PAD_SLOT),
            block_tables=extend(self.block_tables, len(query_lens), 0),
            seq_lens=np.concatenate([self.seq_lens, query_lens]),
            query_start_loc=np.concatenate([self.query_start_loc, self.num_tokens + np.cumsum(query_lens)]),
            decode_only=False,  # a mixed-step graph's kernels
        )


def padding_query_lens(pad_tokens: int, pad_requests: int, max_context: int) -> np.ndarray:
    """How `pad_requests` padding requests share `pad_tokens`: the last ones take `max_context` each (the
    very last the rest), the others none; each is a fresh context, so its seq_len is its query length."""
    full, rest = divmod(pad_tokens, max_context)
    lens = [max_context] * full + ([rest] if rest else [])
    if len(lens) > pad_requests or pad_requests < 1:
        raise ValueError(f"cannot pad {pad_tokens} tokens with {pad_requests} requests of at most {max_context}")
    return np.array([0] * (pad_requests - len(lens)) + lens, dtype=np.int64)


@dataclass
class StepInputs:
    """The device tensors of one forward pass."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata


class BlockTableRows:
    """Each request's block table row, kept from step to step: the persistent part of a step's inputs.

    The scheduler hands over every request's whole list of block ids each step, but a running request gains
    a block only every `block_size` tokens. So a row is written when its request first comes, rewritten when
    its list is a new one (the request was preempted and got new blocks), extended when the list grew, and
    left alone otherwise; a step's table is one gather of its requests' rows.
    """

    def __init__(self, num_rows: int = 64, num_columns: int = 64) -> None:
        self.rows = RequestRows(num_rows)
        self.table = np.zeros((num_rows, num_columns), dtype=np.int64)
        # Per row: the id list last written (the block manager only ever appends to it) and how much of it.
        self._written: list[tuple[list[int], int] | None] = [None] * num_rows

    def gather(self, batch: SchedulerOutput) -> np.ndarray:
        """The batch's block tables [num_requests, its longest list], padded with 0."""
        rows = np.empty(len(batch.requests), dtype=np.int64)
        for index, (request, ids) in enumerate(zip(batch.requests, batch.block_ids, strict=True)):
            row = self.rows.get(request.request_id)
            if row is None:
                row = self._add(request.request_id)
            written = self._written[row]
            first = written[1] if written is not None and written[0] is ids else 0
            if first < len(ids):
                self._write(row, ids, first)
            rows[index] = row
        width = max((len(ids) for ids in batch.block_ids), default=0)
        return self.table[rows, :width]

    def release(self, request_ids: Iterable[str]) -> None:
        """Free the rows of requests that left the engine."""
        for row in self.rows.release(request_ids):
            self._written[row] = None

    def _add(self, request_id: str) -> int:
        row = self.rows.add(request_id)
        if self.rows.capacity > self.table.shape[0]:
            self.table = np.pad(self.table, ((0, self.rows.capacity - self.table.shape[0]), (0, 0)))
            self._written += [None] * (self.rows.capacity - len(self._written))
        return row

    def _write(self, row: int, ids: list[int], first: int) -> None:
        num_columns = self.table.shape[1]
        if len(ids) > num_columns:
            self.table = np.pad(self.table, ((0, 0), (0, max(len(ids), 2 * num_columns) - num_columns)))
        if first == 0:
            self.table[row] = 0
        self.table[row, first : len(ids)] = ids[first:]
        self._written[row] = (ids, len(ids))


def layout_step(batch: SchedulerOutput, block_size: int, block_tables: BlockTableRows | None = None) -> StepLayout:
    """Lay the scheduled tokens out flat: request i's new tokens follow request i-1's.

    The only Python loop is over requests (to slice their token lists, and to find their block table
    rows in `block_tables`, the runner's persistent rows; a fresh set without); positions, slot mapping and
    offsets come from array arithmetic over all tokens at once.
    """
    num_requests = len(batch.requests)
    query_lens = np.asarray(batch.num_new_tokens, dtype=np.int64)
    starts = np.asarray(batch.num_computed_tokens, dtype=np.int64)
    seq_lens = starts + query_lens
    query_start_loc = np.zeros(num_requests + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])

    token_ids = np.zeros(num_tokens, dtype=np.int64)
    pending_indices = []
    pending_request_ids = []
    firsts = query_start_loc[:-1].tolist()
    for request, first, start, end in zip(batch.requests, firsts, starts.tolist(), seq_lens.tolist(), strict=True):
        known_end = min(end, request.num_tokens)
        if known_end > start:
            token_ids[first : first + known_end - start] = request.token_ids[start:known_end]
        if known_end < end:  # the last token is the pending one (there is at most one)
            pending_indices.append(first + end - start - 1)
            pending_request_ids.append(request.request_id)
    owner = np.repeat(np.arange(num_requests), query_lens)
    positions = np.arange(num_tokens, dtype=np.int64) - query_start_loc[owner] + starts[owner]

    block_tables = (block_tables or BlockTableRows()).gather(batch)
    slot_mapping = block_tables[owner, positions // block_size] * block_size + positions % block_size

    sampling_rows = [i for i, samples in enumerate(batch.samples) if samples]
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
        pending_indices=np.asarray(pending_indices, dtype=np.int64),
        pending_request_ids=pending_request_ids,
        decode_only=num_tokens == num_requests,
    )


def longest_first(seq_lens: np.ndarray) -> np.ndarray:
    """Request indices by decreasing context length, ties in batch order."""
    return np.argsort(-seq_lens, kind="stable")


def to_device(layout: StepLayout, move: HostToDevice) -> StepInputs:
    """Move a layout's arrays to the device in one asynchronous copy; a decode step also gets its order."""
    arrays = [layout.token_ids, layout.positions, layout.slot_mapping, layout.block_tables, layout.seq_lens,
              layout.query_start_loc]
    if layout.decode_only:
        arrays.append(longest_first(layout.seq_lens))
    input_ids, positions, slot_mapping, block_tables, seq_lens, query_start_loc, *decode_order = move.move(arrays)
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        seq_lens=seq_lens,
        query_start_loc=query_start_loc,
        max_query_len=layout.max_query_len,
        max_seq_len=layout.max_seq_len,
        decode_order=decode_order[0] if decode_order else None,
    )
    return StepInputs(input_ids=input_ids, positions=positions, metadata=metadata)
