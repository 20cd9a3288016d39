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
_ROUND_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))
_WORD, _SHIFT = np.uint64(0xFFFFFFFF), np.uint64(32)


def random_keys(rows: int) -> torch.Tensor:
    """[rows] int64 keys for unseeded rows, from torch's default generator (so `torch.manual_seed` fixes them)."""
    return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64)


def philox_bits(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] int64 of 32-bit words: Philox4x32-10 of the counter words (token // 4, counter low,
    counter high, 0) under the key words (key low, key high), for keys and counters [rows] int64; token t
    takes word t % 4 of its call, so one call serves four tokens.

    Computed on the host in numpy's uint64, where a 32 x 32-bit product is exact and wrapping is defined:
    a few times faster than torch's int64 there, whose products would overflow.
    """
    quads = np.arange(-(-vocab_size // 4), dtype=np.uint64)[None, :]
    keys_bits = keys.cpu().numpy().view(np.uint64)[:, None]
    counters_bits = counters.cpu().numpy().view(np.uint64)[:, None]
    c0, c1, c2, c3 = quads, counters_bits & _WORD, counters_bits >> _SHIFT, np.zeros_like(quads)
    k0, k1 = keys_bits & _WORD, keys_bits >> _SHIFT
    for _ in range(NUM_ROUNDS):
        product_a, product_b = c0 * _ROUND_MULTIPLIERS[0], c2 * _ROUND_MULTIPLIERS[1]
        c0, c1 = (product_b >> _SHIFT) ^ c1 ^ k0, product_b & _WORD
        c2, c3 = (product_a >> _SHIFT) ^ c3 ^ k1, product_a & _WORD
        k0, k1 = (k0 + _KEY_INCREMENTS[0]) & _WORD, (k1 + _KEY_INCREMENTS[1]) & _WORD
    words = np.stack(np.broadcast_arrays(c0, c1, c2, c3), axis=-1).reshape(len(keys_bits), -1)[:, :vocab_size]
    return torch.from_numpy(words.astype(np.int64)).to(keys.device)


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
