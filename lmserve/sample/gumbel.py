"""Random sampling as a race: each row's token is the argmax of its logits plus Gumbel noise.

argmax(logits / T + g), with g = -log(-log u) and u uniform, picks token i with probability
softmax(logits / T)_i (the Gumbel-max trick): no cumulative sum, no host sync, one pass over the row.

The noise is counter-based: token i's u comes from Philox4x32-10 of the counter (i // 4, counter) under
the row's 64-bit key. A seeded request's key is its seed and its counter the number of tokens it sampled
before, so its draws depend on nothing else in the batch, and a batch of seeded rows is drawn as one
vectorised computation, with no generator to keep per request. Unseeded rows get a fresh random key
each step. This module is the host path (the CPU's); `lmserve.kernels.argmax` draws the same bits
inside its argmax on the GPU.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_ROUNDS = 10
# Of the 32 bits drawn: (bits + 0.5) / 2**23 is exact in float32 and strictly inside (0, 1). The noise then
# lies in [-2.8, 16.6], so a token more than 19.4 below its row's best score is never drawn: one whose
# probability is below e**-19.4 = 4e-9 of the best's.
UNIFORM_BITS = 23
MAX_ROUNDS = 64  # of top-p's rejection: past them, the top token (see top_p_race)
_ROUND_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))
_WORD, _SHIFT = np.uint64(0xFFFFFFFF), np.uint64(32)


def random_keys(rows: int) -> torch.Tensor:
    """[rows] int64 keys for unseeded rows, from torch's default generator (so `torch.manual_seed` fixes them)."""
    return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64)


def philox_bits(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int, stream: int = 0) -> torch.Tensor:
    """[rows, vocab] int64 of 32-bit words: Philox4x32-10 of the counter words (token // 4, counter low,
    counter high, stream) under the key words (key low, key high), for keys and counters [rows] int64; token
    t takes word t % 4 of its call, so one call serves four tokens. A draw that needs several independent
    rounds of noise (top-p's) takes stream 0, 1, ...

    Computed on the host in numpy's uint64, where a 32 x 32-bit product is exact and wrapping is defined:
    a few times faster than torch's int64 there, whose products would overflow.
    """
    quads = np.arange(-(-vocab_size // 4), dtype=np.uint64)[None, :]
    keys_bits = keys.cpu().numpy().view(np.uint64)[:, None]
    counters_bits = counters.cpu().numpy().view(np.uint64)[:, None]
    c0, c1, c2, c3 = quads, counters_bits & _WORD, counters_bits >> _SHIFT, np.full_like(quads, stream)
    k0, k1 = keys_bits & _WORD, keys_bits >> _SHIFT
    for _ in range(NUM_ROUNDS):
        product_a, product_b = c0 * _ROUND_MULTIPLIERS[0], c2 * _ROUND_MULTIPLIERS[1]
        c0, c1 = (product_b >> _SHIFT) ^ c1 ^ k0, product_b & _WORD
        c2, c3 = (product_a >> _SHIFT) ^ c3 ^ k1, product_a & _WORD
        k0, k1 = (k0 + _KEY_INCREMENTS[0]) & _WORD, (k1 + _KEY_INCREMENTS[1]) & _WORD
    words = np.stack(np.broadcast_arrays(c0, c1, c2, c3), axis=-1).reshape(len(keys_bits), -1)[:, :vocab_size]
    return torch.from_numpy(words.astype(np.int64)).to(keys.device)


def gumbel_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int, stream: int = 0) -> torch.Tensor:
    """[rows, vocab] float32 standard Gumbel noise: -log(-log u), u from `philox_bits`."""
    bits = philox_bits(keys, counters, vocab_size, stream) >> (32 - UNIFORM_BITS)
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


def top_p_race(scores: torch.Tensor, top_p: torch.Tensor, keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """[rows] int64: a draw from softmax(scores) restricted to each row's nucleus, the fewest top tokens whose
    probability reaches top_p (a token is in it when the tokens above it hold less than top_p), with no sort.

    Rejection from the race: draw among the tokens above a pivot (at first, all); keep the draw if it is in
    the nucleus; else no token at or below it is, so it becomes the pivot, and the next round draws again
    (noise stream r + 1). Each round draws from a superset of the nucleus in proportion to the probabilities,
    so the kept token follows the nucleus' distribution. A round's cost is two passes over the row; few
    rounds are needed (a draw lands in the nucleus with probability about top_p, and a rejection cuts every
    token below it). After MAX_ROUNDS rejections (a negligible chance) the row takes its top token. Rows with
    top_p >= 1 keep their first draw, the plain race's.
    """
    # Probabilities times the row's total, summed in float64: torch orders a row's sum by the batch's shape (a
    # lone row is split over threads), and float32's rounding would let the batch flip a draw at the nucleus'
    # edge; float64's is a billion times finer than top_p's float32 steps.
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).double()
    total = weights.sum(dim=-1)
    tokens = scores.argmax(dim=-1)
    pivot = torch.full_like(total, -torch.inf)
    searching = torch.ones_like(tokens, dtype=torch.bool)
    for stream in range(MAX_ROUNDS):
        raced = scores + gumbel_noise(keys, counters, scores.shape[-1], stream)
        drawn = raced.masked_fill(scores <= pivot[:, None], -torch.inf).argmax(dim=-1)
        drawn_score = scores.gather(-1, drawn[:, None])
        mass_above = (weights * (scores > drawn_score)).sum(dim=-1) / total
        # Nothing above: a top token, in every nucleus (also when top_p rounded to 0 in float32).
        kept = searching & ((mass_above < top_p) | (top_p >= 1.0) | (mass_above == 0))
        tokens = torch.where(kept, drawn, tokens)
        searching &= ~kept
        pivot = drawn_score[:, 0]
        if not searching.any():
            break
    return tokens
