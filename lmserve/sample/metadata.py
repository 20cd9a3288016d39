"""One step's sampling state: every request's SamplingParams turned into per-row tensors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from lmserve.errors import InvalidRequestError
from lmserve.sample.gumbel import random_keys
from lmserve.sample.penalties import Penalties
from lmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from lmserve.worker.staging import HostToDevice


@dataclass
class LogitAdditions:
    """Values added to a few (row, token) logits: a logit_bias, or -inf to forbid a token.

    Sparse because a request touches a handful of tokens, where a dense [rows, vocab] tensor would
    cost megabytes every step.
    """

    HOST_FIELDS: ClassVar[tuple[str, ...]] = ("row_indices", "token_ids", "values")

    row_indices: torch.Tensor  # [n] int64
    token_ids: torch.Tensor  # [n] int64
    values: torch.Tensor  # [n] float32

    @classmethod
    def build(cls, per_row: list[dict[int, float]]) -> LogitAdditions | None:
        """On the host; None when no row adds anything, so the sampler skips the step."""
        entries = [(row, token, value) for row, additions in enumerate(per_row) for token, value in additions.items()]
        if not entries:
            return None
        rows, tokens, values = zip(*entries, strict=True)
        return cls(
            row_indices=torch.tensor(rows, dtype=torch.int64),
            token_ids=torch.tensor(tokens, dtype=torch.int64),
            values=torch.tensor(values, dtype=torch.float32),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with the values added, as a new tensor."""
        return logits.index_put((self.row_indices, self.token_ids), self.values, accumulate=True)


@dataclass
class SamplingMetadata:
    """Everything the Sampler needs for one step, one row per request; built once per step.

    Optional parts are None when no row needs them, so the sampler skips work nobody asked for. `build`
    makes the per-row tensors on the host; `to_device` moves them without making the host wait.
    """

    HOST_FIELDS: ClassVar[tuple[str, ...]] = ("temperature", "greedy", "top_k", "top_p", "min_p", "keys", "counters")

    temperature: torch.Tensor | None  # [rows] float32; 1.0 where off and on greedy rows
    greedy: torch.Tensor | None  # [rows] bool; None when every row is greedy or none is
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [rows] int64; vocab_size where off
    top_p: torch.Tensor | None  # [rows] float32; 1.0 where off
    num_candidates: int | None  # the largest top_k that cuts (below the vocabulary); None when none does
    min_p: torch.Tensor | None  # [rows] float32; 0.0 where off
    # The race's noise (lmserve.sample.gumbel): a seeded row's key is its seed and its counter the outputs
    # it sampled before; an unseeded row gets a fresh random key each step. None when every row is greedy.
    keys: torch.Tensor | None  # [rows] int64
    counters: torch.Tensor | None  # [rows] int64
    logit_bias: LogitAdditions | None
    min_tokens_mask: LogitAdditions | None  # -inf on the stop tokens of rows still short of min_tokens
    penalties: Penalties | None
    max_num_logprobs: int | None  # the most top logprobs any row asked for; None: no row wants logprobs

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        num_output_tokens: list[int],
        eos_token_ids: list[tuple[int, ...]],
        vocab_size: int,
        penalties: Penalties | None = None,
    ) -> SamplingMetadata:
        """Collect the batch's options; `penalties` come from the model runner, which keeps the seen tokens.

        `num_output_tokens[i]` counts the outputs before this step's token (for min_tokens and the noise's
        counter).
        """
        greedy = [p.greedy for p in params]
        all_greedy, all_random = all(greedy), not any(greedy)

        def random_rows_column(values: list[float], off: float, dtype: torch.dtype) -> torch.Tensor | None:
            """A [rows] tensor, or None when no row turns the option on; greedy rows never use it."""
            if all_greedy:
                return None
            values = [off if is_greedy else value for is_greedy, value in zip(greedy, values, strict=True)]
            if all(value == off for value in values):
                return None
            return torch.tensor(values, dtype=dtype)

        top_k = [vocab_size if p.top_k == -1 else min(p.top_k, vocab_size) for p in params]
        return cls(
            temperature=random_rows_column([p.temperature for p in params], off=1.0, dtype=torch.float32),
            greedy=None if all_greedy or all_random else torch.tensor(greedy, dtype=torch.bool),
            all_greedy=all_greedy,
            all_random=all_random,
            top_k=random_rows_column(top_k, off=vocab_size, dtype=torch.int64),
            top_p=random_rows_column([p.top_p for p in params], off=1.0, dtype=torch.float32),
            num_candidates=max((k for k, p in zip(top_k, params, strict=True) if not p.greedy and k < vocab_size),
                               default=None),
            min_p=random_rows_column([p.min_p for p in params], off=0.0, dtype=torch.float32),
            keys=None if all_greedy else _noise_keys(params),
            counters=None if all_greedy else torch.tensor(num_output_tokens, dtype=torch.int64),
            logit_bias=LogitAdditions.build([_checked_logit_bias(p, vocab_size) for p in params]),
            min_tokens_mask=LogitAdditions.build(
                [
                    _min_tokens_mask(p, num_outputs, eos, vocab_size)
                    for p, num_outputs, eos in zip(params, num_output_tokens, eos_token_ids, strict=True)
                ]
            ),
            penalties=penalties,
            max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
        )

    def to_device(self, move: HostToDevice) -> SamplingMetadata:
        """The same metadata with its host tensors on the device, moved in one asynchronous copy."""
        host = {name: getattr(self, name) for name in self.HOST_FIELDS if getattr(self, name) is not None}
        parts = {name: part for name in ("logit_bias", "min_tokens_mask", "penalties")
                 if (part := getattr(self, name)) is not None}
        for name, part in parts.items():
            host |= {(name, field): getattr(part, field) for field in part.HOST_FIELDS}
        if not host:  # all greedy, nothing to add: no copy at all
            return self
        moved = dict(zip(host, move.move([tensor.numpy() for tensor in host.values()]), strict=True))
        changes: dict[str, object] = {name: moved[name] for name in self.HOST_FIELDS if name in moved}
        for name, part in parts.items():
            changes[name] = dataclasses.replace(part, **{field: moved[name, field] for field in part.HOST_FIELDS})
        return dataclasses.replace(self, **changes)


def _noise_keys(params: list[SamplingParams]) -> torch.Tensor:
    """[rows] int64: each seeded row's seed, a fresh random key for the others."""
    keys = random_keys(len(params))
    seeded = [(row, p.seed) for row, p in enumerate(params) if p.seed is not None]
    if seeded:
        rows, seeds = zip(*seeded, strict=True)
        keys[list(rows)] = torch.tensor(seeds, dtype=torch.int64)
    return keys


def _checked_logit_bias(params: SamplingParams, vocab_size: int) -> dict[int, float]:
    # An out-of-range id would crash the whole batch's index_put (a device assert on GPU); fail clearly.
    for token_id in params.logit_bias:
        if token_id >= vocab_size:
            raise InvalidRequestError(f"logit_bias token id {token_id} is outside the vocabulary of {vocab_size}")
    return params.logit_bias


def _min_tokens_mask(
    params: SamplingParams, num_output_tokens: int, eos_token_ids: tuple[int, ...], vocab_size: int
) -> dict[int, float]:
    """-inf for each token that would stop the request while it has fewer than min_tokens outputs."""
    if num_output_tokens >= params.min_tokens:
        return {}
    stop_ids = list(params.stop_token_ids) + ([] if params.ignore_eos else list(eos_token_ids))
    # Ids beyond the model's vocabulary can never be sampled, so there is nothing to mask.
    return {token_id: -math.inf for token_id in stop_ids if token_id < vocab_size}
