"""Turn a step's logits into one token per request, following each request's SamplingParams."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from lmserve.sample.gumbel import gumbel_race, top_p_race
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

    Stateless: the per-request state it needs (token counts, the noise's keys and counters) comes in the
    metadata.
    """

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """Sample from [rows, vocab] logits of any float dtype; the input tensor is left unchanged.

        Logits are upcast to float32 only where a step needs it (logprobs, logit changes, truncation):
        float32 holds every 16-bit value exactly, so the tokens are those of the float32 logits.
        """
        if _takes_argmax_only(metadata):
            return SamplerOutput(sampled_token_ids=_greedy_tokens(logits), logprobs=None)
        # Logprobs describe the model's own distribution, before any processing: that is what users
        # compare with other implementations.
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)
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
    adjustments = [a for a in (metadata.logit_bias, metadata.min_tokens_mask, metadata.penalties) if a is not None]
    if adjustments:
        logits = logits.float()
    for adjustment in adjustments:
        logits = adjustment.apply(logits)
    return logits


def _sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Argmax for greedy rows, a random draw for the others."""
    if metadata.all_greedy:
        return _greedy_tokens(logits)
    random_tokens = _sample_random(logits, metadata)
    if metadata.all_random:
        return random_tokens
    return torch.where(metadata.greedy, _greedy_tokens(logits), random_tokens)


def _on_gpu(logits: torch.Tensor) -> bool:
    return logits.is_cuda and _HAS_TRITON


def _greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax. On CUDA, lmserve's two-stage kernel: torch reduces a row in few programs, which
    took 27 us at one row of a 128k vocabulary on an H200, against 3.4 us (benchmarks/results/argmax-*)."""
    if _on_gpu(logits):
        from lmserve.kernels.argmax import argmax  # needs triton: import on demand

        return argmax(logits)
    return logits.argmax(dim=-1)


def _sample_random(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Apply temperature, min_p and top_k, then race the tokens (lmserve.sample.gumbel), in the nucleus with top_p.

    With nothing to cut, the race divides by the temperature itself, so the logits are read once.
    """
    if metadata.min_p is None and metadata.top_k is None and metadata.top_p is None:
        return _race(logits, metadata.temperature, metadata)
    logits = logits.float()
    if metadata.temperature is not None:
        logits = logits / metadata.temperature[:, None]
    if metadata.min_p is not None:
        logits = _apply_min_p(logits, metadata.min_p)
    if metadata.top_k is not None:
        logits = _apply_top_k(logits, metadata.top_k, metadata.num_candidates)
    if metadata.top_p is not None:
        return _top_p_race(logits, metadata)
    return _race(logits, None, metadata)


def _race(logits: torch.Tensor, temperature: torch.Tensor | None, metadata: SamplingMetadata) -> torch.Tensor:
    """One pass: on CUDA in the argmax kernel, which draws the noise as it reads the logits."""
    if _on_gpu(logits):
        from lmserve.kernels import argmax as kernels  # needs triton: import on demand

        return kernels.gumbel_race(logits, temperature, metadata.keys, metadata.counters)
    return gumbel_race(logits, temperature, metadata.keys, metadata.counters)


def _top_p_race(scores: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Draws in each row's nucleus by rejection, no sort: on CUDA one program per row."""
    if _on_gpu(scores):
        from lmserve.kernels import top_p as kernels  # needs triton: import on demand

        return kernels.top_p_race(scores, metadata.top_p, metadata.keys, metadata.counters)
    return top_p_race(scores, metadata.top_p, metadata.keys, metadata.counters)


def _apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely token's probability: in logits, those more than
    log(1 / min_p) below the largest. No softmax, so no sum, whose rounding would follow the batch's shape."""
    threshold = logits.amax(dim=-1, keepdim=True) + torch.log(min_p)[:, None]
    return logits.masked_fill(logits < threshold, -torch.inf)


def _apply_top_k(logits: torch.Tensor, top_k: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Keep each row's top_k tokens (a token tied with the last one stays too).

    The cut is found among the batch's `num_candidates` largest logits (its largest top_k): selecting 20 of a
    150k vocabulary instead of sorting it. Rows without top-k keep every token. Tokens tied with the cut also
    count towards a top-p after it.
    """
    candidates = logits.topk(num_candidates, dim=-1).values
    cut = candidates.gather(-1, top_k.clamp(max=num_candidates)[:, None] - 1)
    cuts = top_k[:, None] < logits.shape[-1]
    return logits.masked_fill((logits < cut) & cuts, -torch.inf)
