"""Log probabilities of chosen tokens and their top alternatives, for sampled and prompt tokens alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.outputs import Logprob, PositionLogprobs
from lmserve.worker.staging import start_copy_to_host


@dataclass
class LogprobsTensors:
    """One position per row: a chosen (or target) token and the row's top-k tokens.

    Kept as tensors so the device-to-host copy happens once per step, in `to_position_logprobs`.
    """

    token_ids: torch.Tensor  # [rows, 1 + k] int64: column 0 the chosen token, then the top k
    logprobs: torch.Tensor  # [rows, 1 + k] float32
    ranks: torch.Tensor  # [rows] int64: rank of column 0's token, 1 = most likely

    def to_host(self) -> LogprobsTensors:
        """Start copying to the host without waiting (see `start_copy_to_host`)."""
        return LogprobsTensors(*map(start_copy_to_host, (self.token_ids, self.logprobs, self.ranks)))


def compute_logprobs(logprobs: torch.Tensor, target_ids: torch.Tensor, num_top: int) -> LogprobsTensors:
    """Gather each row's target token and its `num_top` most likely tokens from [rows, vocab] logprobs.

    A token's rank is 1 plus the number of strictly more likely tokens, so tied tokens share a rank.
    """
    target_ids = target_ids.to(torch.int64)
    target_logprobs = logprobs.gather(-1, target_ids[:, None])
    ranks = (logprobs > target_logprobs).sum(dim=-1) + 1
    top = logprobs.topk(num_top, dim=-1)
    return LogprobsTensors(
        token_ids=torch.cat([target_ids[:, None], top.indices], dim=1),
        logprobs=torch.cat([target_logprobs, top.values], dim=1),
        ranks=ranks,
    )


def to_position_logprobs(tensors: LogprobsTensors, num_top_per_row: list[int]) -> list[PositionLogprobs]:
    """The public per-position dicts: the chosen token, then the row's own top-N (the top j-th has rank j).

    `num_top_per_row[i]` may be below the k the tensors were computed with, since a batch computes the
    largest k any of its rows asked for.
    """
    token_ids = tensors.token_ids.tolist()
    logprobs = tensors.logprobs.tolist()
    ranks = tensors.ranks.tolist()
    positions: list[PositionLogprobs] = []
    for row_tokens, row_logprobs, rank, num_top in zip(token_ids, logprobs, ranks, num_top_per_row, strict=True):
        position = {row_tokens[0]: Logprob(row_logprobs[0], rank)}
        for j in range(1, num_top + 1):
            # The chosen token keeps its own entry, which differs from the top-j one only on ties.
            position.setdefault(row_tokens[j], Logprob(row_logprobs[j], j))
        positions.append(position)
    return positions
