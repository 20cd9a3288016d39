"""Repetition, frequency and presence penalties: lower the logits of tokens a request has already seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class Penalties:
    """One step's penalties, one row per request, and the tables of seen tokens they act on.

    Semantics follow vLLM and OpenAI: repetition_penalty looks at prompt and output tokens (positive
    logits are divided by it, negative ones multiplied); frequency_penalty is subtracted once per
    occurrence in the output, presence_penalty once if the token occurs in the output at all.

    The tables persist across steps (`lmserve.worker.penalty_history`): request i's seen tokens are in
    their row `rows[i]`, and table row 0 is all zeros, the row of requests without penalties.
    """

    HOST_FIELDS: ClassVar[tuple[str, ...]] = ("repetition", "frequency", "presence", "rows")

    repetition: torch.Tensor  # [rows] float32
    frequency: torch.Tensor  # [rows] float32
    presence: torch.Tensor  # [rows] float32
    rows: torch.Tensor  # [rows] int64: each request's row of the tables
    prompt_mask: torch.Tensor  # [table rows, vocab] bool: the token occurs in the prompt
    output_counts: torch.Tensor  # [table rows, vocab] float32: occurrences in the output so far

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The penalised logits, as a new tensor."""
        output_counts = self.output_counts[self.rows]
        in_output = output_counts > 0
        repetition = self.repetition[:, None]
        repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(self.prompt_mask[self.rows] | in_output, repeated, logits)
        return logits - self.frequency[:, None] * output_counts - self.presence[:, None] * in_output
