"""Repetition, frequency and presence penalties: lower the logits of tokens a request has already seen."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.sampling_params import SamplingParams


@dataclass
class Penalties:
    """One step's penalties, one row per request, with the token counts they act on.

    Semantics follow vLLM and OpenAI: repetition_penalty looks at prompt and output tokens (positive
    logits are divided by it, negative ones multiplied); frequency_penalty is subtracted once per
    occurrence in the output, presence_penalty once if the token occurs in the output at all.
    """

    repetition: torch.Tensor  # [rows] float32
    frequency: torch.Tensor  # [rows] float32
    presence: torch.Tensor  # [rows] float32
    prompt_mask: torch.Tensor  # [rows, vocab] bool: the token occurs in the prompt
    output_counts: torch.Tensor  # [rows, vocab] float32: occurrences in the output so far

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        vocab_size: int,
        device: torch.device | str,
    ) -> Penalties | None:
        """None when no row has a penalty, so the sampler skips counting tokens altogether."""
        if not any(p.has_penalties for p in params):
            return None
        # Only repetition_penalty reads the prompt; leaving other rows' prompts out keeps the scatter small.
        prompts = [ids if p.repetition_penalty != 1.0 else [] for p, ids in zip(params, prompt_token_ids, strict=True)]

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        return cls(
            repetition=column([p.repetition_penalty for p in params]),
            frequency=column([p.frequency_penalty for p in params]),
            presence=column([p.presence_penalty for p in params]),
            prompt_mask=_token_counts(prompts, vocab_size, device) > 0,
            output_counts=_token_counts(output_token_ids, vocab_size, device),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The penalised logits, as a new tensor."""
        in_output = self.output_counts > 0
        repetition = self.repetition[:, None]
        repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(self.prompt_mask | in_output, repeated, logits)
        return logits - self.frequency[:, None] * self.output_counts - self.presence[:, None] * in_output


def _token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """[rows, vocab] float32 occurrence counts, by one scatter_add over the rows padded to equal length."""
    width = max((len(ids) for ids in token_ids), default=0)
    # Padding points at an extra column that is cut off afterwards.
    padded = torch.tensor(
        [ids + [vocab_size] * (width - len(ids)) for ids in token_ids], dtype=torch.int64, device=device
    ).reshape(len(token_ids), width)
    counts = torch.zeros(len(token_ids), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, padded, torch.ones(padded.shape, dtype=torch.float32, device=device))
    return counts[:, :vocab_size]
