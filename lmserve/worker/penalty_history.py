"""The tokens each request with a penalty has seen, kept on the device from step to step."""

from __future__ import annotations

import numpy as np
import torch

from lmserve.sample.penalties import Penalties
from lmserve.sampling_params import SamplingParams
from lmserve.worker.request_rows import RequestRows
from lmserve.worker.staging import HostToDevice


class PenaltyHistory:
    """Per request with a penalty: which tokens its prompt holds and how often each occurs in its output, as
    [rows, vocab] tables on the device (row 0 stays all zeros, for requests without penalties).

    A step's penalties are then a gather of its requests' rows, not tables rebuilt from token lists (a copy of
    every prompt and output token, each step); and the step's sampled tokens are counted on the device, so
    the host need not know them first: steps with penalties overlap like the others. A request gets its row
    at its first sampled token, when it has no output yet, and keeps it, through preemption too, until it
    leaves the engine.
    """

    def __init__(self, vocab_size: int, num_rows: int, device: torch.device, staging: HostToDevice) -> None:
        self.rows = RequestRows(num_rows)
        self.staging = staging
        self._true = torch.ones((), dtype=torch.bool, device=device)  # on the device: writing it needs no copy
        self.prompt_mask = torch.zeros(num_rows + 1, vocab_size, dtype=torch.bool, device=device)
        self.output_counts = torch.zeros(num_rows + 1, vocab_size, dtype=torch.float32, device=device)

    def penalties(
        self, request_ids: list[str], params: list[SamplingParams], prompt_token_ids: list[list[int]]
    ) -> Penalties | None:
        """The penalties of a step's sampling requests, with host columns; None when none has a penalty."""
        if not any(p.has_penalties for p in params):
            return None
        table_rows = np.zeros(len(params), dtype=np.int64)
        new_rows, prompts = [], []
        for index, (request_id, p, prompt) in enumerate(zip(request_ids, params, prompt_token_ids, strict=True)):
            if not p.has_penalties:
                continue
            row = self.rows.get(request_id)
            if row is None:
                row = self.rows.add(request_id)
                new_rows.append(row + 1)
                # Only repetition_penalty reads the prompt.
                prompts.append(prompt if p.repetition_penalty != 1.0 else [])
            table_rows[index] = row + 1
        if new_rows:
            self._start_rows(new_rows, prompts)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32)

        return Penalties(
            repetition=column([p.repetition_penalty for p in params]),
            frequency=column([p.frequency_penalty for p in params]),
            presence=column([p.presence_penalty for p in params]),
            rows=torch.from_numpy(table_rows),
            prompt_mask=self.prompt_mask,
            output_counts=self.output_counts,
        )

    def record(self, penalties: Penalties, sampled_token_ids: torch.Tensor) -> None:
        """Count each request's sampled token in its output row, on the device (`penalties` on the device)."""
        counted = (penalties.rows != 0).to(self.output_counts.dtype)  # nothing lands in the zero row
        self.output_counts.index_put_((penalties.rows, sampled_token_ids), counted, accumulate=True)

    def release(self, request_ids: set[str]) -> None:
        """Free the rows of requests that left the engine."""
        self.rows.release(request_ids)

    def _start_rows(self, table_rows: list[int], prompts: list[list[int]]) -> None:
        """Clear the new requests' rows and mark their prompts' tokens: one copy to the device, and no write
        of a host value (that would make the host wait for the GPU)."""
        if self.rows.capacity + 1 > self.output_counts.shape[0]:
            self.prompt_mask = _grown(self.prompt_mask, self.rows.capacity + 1)
            self.output_counts = _grown(self.output_counts, self.rows.capacity + 1)
        prompt_rows = np.repeat(np.asarray(table_rows, dtype=np.int64), [len(prompt) for prompt in prompts])
        prompt_ids = np.fromiter((token for prompt in prompts for token in prompt), dtype=np.int64,
                                 count=len(prompt_rows))
        rows, prompt_rows, prompt_ids = self.staging.move([np.asarray(table_rows, dtype=np.int64), prompt_rows,
                                                           prompt_ids])
        self.output_counts.index_fill_(0, rows, 0)
        self.prompt_mask.index_fill_(0, rows, False)
        self.prompt_mask.index_put_((prompt_rows, prompt_ids), self._true)


def _grown(table: torch.Tensor, num_rows: int) -> torch.Tensor:
    grown = torch.zeros(num_rows, *table.shape[1:], dtype=table.dtype, device=table.device)
    grown[: table.shape[0]] = table
    return grown
