"""Turn a step's logits into one token per request, following each request's SamplingParams."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from lmserve.sample.logprobs import LogprobsTensors, compute_logprobs
from lmserve.sample.metadata import SamplingMetadata

_HAS_TRITON = importlib.util.find_spec("triton") is not None


@dataclass
class SamplerOutput:
    """One step's tokens, and their logprobs under the model's raw distribution if any row asked."""

    sampled_token_ids: torch.Tensor  # [rows] int64
    logprobs: LogprobsTensors | None


class Sampler:
    """Batched over rows with tensor ops only, so the same code runs on CPU and GPU.

    Stateless: the per-request state it needs (token counts, seeded generators) comes in the metadata.
    """

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """Sample from [rows, vocab] logits of any float dtype; the input tensor is left unchanged."""
        if _takes_argmax_only(metadata):
            # Float32 holds every 16-bit value exactly, so upcasting first would give the same tokens.
            return SamplerOutput(sampled_token_ids=_greedy_tokens(logits), logprobs=None)
        logits = logits.float()
        # Logprobs describe the model's own distribution, before any processing: that is what users
        # compare with other implementations.
        raw_logprobs = None if metadata.max_num_logprobs is None else torch.log_softmax(logits, dim=-1)
        logits = _adjust_logits(logits, metadata)
        sampled = _sample(logits, metadata)
        if raw_logprobs is None:
            return SamplerOutput(sampled_token_ids=sampled, logprobs=None)
        return SamplerOutput(
            sampled_token_ids=sampled,
            logprobs=compute_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs),
        )


def _takes_argmax_only(metadata: SamplingMetadata) -> bool:
    """Every row is greedy, with no logit changes and no logprobs: the tokens are the raw argmax."""
    adjustments = (metadata.logit_bias, metadata.min_tokens_mask, metadata.penalties)
    return metadata.all_greedy and metadata.max_num_logprobs is None and all(a is None for a in adjustments)


def _adjust_logits(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Apply logit_bias, then forbid stop tokens before min_tokens, then penalties; greedy rows too."""
    for additions in (metadata.logit_bias, metadata.min_tokens_mask):
        if additions is not None:
            logits = additions.apply(logits)
    if metadata.penalties is not None:
        logits = metadata.penalties.apply(logits)
    return logits


def _sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Argmax for greedy rows, a random draw for the others."""
    if metadata.all_greedy:
        return _greedy_tokens(logits)
    random_tokens = _sample_random(logits, metadata)
    if metadata.all_random:
        return random_tokens
    return torch.where(metadata.greedy, _greedy_tokens(logits), random_tokens)


def _greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax. On CUDA, lmserve's two-stage kernel: torch reduces a row in few programs, which
    took 27 us at one row of a 128k vocabulary on an H200, against 3.4 us (benchmarks/results/argmax-*)."""
    if logits.is_cuda and _HAS_TRITON:
        from lmserve.kernels.argmax import argmax  # needs triton: import on demand

        return argmax(logits)
    return logits.argmax(dim=-1)


def _sample_random(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Apply temperature, min_p, top_k and top_p, then draw from what is left."""
    if metadata.temperature is not None:
        logits = logits / metadata.temperature[:, None]
    if metadata.min_p is not None:
        logits = _apply_min_p(logits, metadata.min_p)
    if metadata.top_k is not None or metadata.top_p is not None:
        logits = _apply_top_k_top_p(logits, metadata.top_k, metadata.top_p)
    return _exponential_race(torch.softmax(logits, dim=-1), metadata.generators)


def _apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely token's probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, -torch.inf)


def _apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Keep each row's top_k tokens, then the fewest of those whose probability sums to at least top_p.

    Both work on one descending sort, so top_p sees the distribution already cut by top_k.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if top_k is not None:
        positions = torch.arange(logits.shape[-1], device=logits.device)
        sorted_logits = sorted_logits.masked_fill(positions >= top_k[:, None], -torch.inf)
    if top_p is not None:
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # A token stays if the tokens above it hold less than top_p; the top token (0 above it) always
        # stays. Rows with top_p == 1 are left whole, as a float32 cumsum may reach 1 before the tail.
        mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = (mass_above >= top_p[:, None]) & (top_p[:, None] < 1.0)
        sorted_logits = sorted_logits.masked_fill(drop, -torch.inf)
    return logits.scatter(-1, order, sorted_logits)


def _exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Pick token i with probability probs[i] as argmax(probs / q), q ~ Exp(1) (the Gumbel-max trick).

    Needs no cumulative sum nor host sync. Unseeded rows share one batched draw; each seeded row
    redraws its whole row from its own generator, so its token depends only on its seed and on how many
    tokens it sampled before, never on the rest of the batch.
    """
    q = torch.empty_like(probs).exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return probs.div(q).argmax(dim=-1)
