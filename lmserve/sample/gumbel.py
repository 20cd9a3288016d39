"""Random sampling as a race: each row's token is the argmax of its logits plus Gumbel noise.

argmax(logits / T + g), with g = -log(-log u) and u uniform, picks token i with probability
softmax(logits / T)_i (the Gumbel-max trick): no cumulative sum, no host sync, one pass over the row.

The noise is counter-based: token i's u comes from Philox4x32-10 of the counter (i, counter) under the
row's 64-bit key. A seeded request's key is its seed and its counter the number of tokens it sampled
before, so its draws depend on nothing else in the batch, and a batch of seeded rows is drawn as one
vectorised computation, with no generator to keep per request. Unseeded rows get a fresh random key
each step. This module is the torch path (the CPU's); `lmserve.kernels.argmax` draws the same bits
inside its argmax on the GPU.
"""

from __future__ import annotations

import torch

NUM_ROUNDS = 10
ROUND_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
UNIFORM_BITS = 23  # of the 32 drawn: (bits + 0.5) / 2**23 is exact in float32 and strictly inside (0, 1)
_WORD = 0xFFFFFFFF


def random_keys(rows: int) -> torch.Tensor:
    """[rows] int64 keys for unseeded rows, from torch's default generator (so `torch.manual_seed` fixes them)."""
    return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64)


def philox_bits(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] int64 holding the first 32-bit word of Philox4x32-10 of the counter words (token,
    counter low, counter high, 0) under key words (key low, key high), for keys and counters [rows] int64."""
    columns = torch.arange(vocab_size, dtype=torch.int64, device=keys.device)[None, :]
    keys, counters = keys[:, None], counters[:, None]
    c0, c1, c2, c3 = columns, counters & _WORD, (counters >> 32) & _WORD, torch.zeros_like(columns)
    k0, k1 = keys & _WORD, (keys >> 32) & _WORD
    for _ in range(NUM_ROUNDS):
        high_a, low_a = _multiply_words(c0, ROUND_MULTIPLIERS[0])
        high_b, low_b = _multiply_words(c2, ROUND_MULTIPLIERS[1])
        c0, c1, c2, c3 = high_b ^ c1 ^ k0, low_b, high_a ^ c3 ^ k1, low_a
        k0, k1 = (k0 + KEY_INCREMENTS[0]) & _WORD, (k1 + KEY_INCREMENTS[1]) & _WORD
    return c0


def gumbel_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] float32 standard Gumbel noise: -log(-log u), u from `philox_bits`."""
    bits = philox_bits(keys, counters, vocab_size) >> (32 - UNIFORM_BITS)
    uniform = (bits.float() + 0.5) * 2.0**-UNIFORM_BITS
    return -torch.log(-torch.log(uniform))


def gumbel_race(
    logits: torch.Tensor, temperature: torch.Tensor | None, keys: torch.Tensor, counters: torch.Tensor
) -> torch.Tensor:
    """[rows] int64: each row's argmax of logits / temperature (when given) plus its Gumbel noise."""
    scores = logits.float()
    if temperature is not None:
        scores = scores / temperature[:, None]
    return (scores + gumbel_noise(keys, counters, logits.shape[-1])).argmax(dim=-1)


def _multiply_words(words: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of words * multiplier, words < 2**32 in int64. The 16-bit halves of the
    multiplier keep every partial product below 2**49, so nothing relies on int64 overflow."""
    low_product = words * (multiplier & 0xFFFF)
    middle = words * (multiplier >> 16) + (low_product >> 16)
    return middle >> 16, ((middle & 0xFFFF) << 16) | (low_product & 0xFFFF)
