"""The argmax over [rows, vocab] logits that picks each row's token, split across the GPU in two launches.

`argmax` is greedy sampling; `gumbel_race` is random sampling, the argmax of logits / temperature plus
Gumbel noise drawn inside the same pass (`lmserve.sample.gumbel` explains the race and holds its torch
path, which draws the same Philox bits), so a row's logits are read once, however many rows are seeded.

torch reduces a row in few programs, so at decode batch sizes a 128k-wide row leaves most SMs idle
(27 us at one row on an H200, against this kernel's 3.4 us; 47 against 25 us at 256 rows). Here each
row is cut into chunks reduced in parallel (stage 1), then one program per row picks the best chunk
(stage 2). Ties go to the first index and NaN counts as the maximum, as in torch.argmax.

Sampling runs outside the CUDA graphs, at every batch size the engine meets, so neither launch may
compile a new variant per row count: the chunk counts that depend on it are left unspecialised, and
stage 2's block holds the most chunks any row count makes. Otherwise a batch size not met before would
stall its step on a compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lmserve.sample.gumbel import UNIFORM_BITS

TILE = 1024  # columns a stage-1 program loads at once
TARGET_PROGRAMS = 1024  # stage-1 programs wanted per launch: several waves over the H200's 132 SMs
_NO_INDEX = tl.constexpr(2**31 - 1)  # larger than any column, so min() over candidate columns skips padding
# A uniform draw keeps the top UNIFORM_BITS of Philox's 32: (bits + 0.5) * 2**-UNIFORM_BITS.
_UNIFORM_SHIFT = tl.constexpr(32 - UNIFORM_BITS)
_UNIFORM_SCALE = tl.constexpr(2.0**-UNIFORM_BITS)


@triton.jit
def first_max(values, indices):
    """(max, first index holding it) of a 1-D block, with NaN above everything, as torch.argmax ranks."""
    is_nan = values != values
    has_nan = tl.max(is_nan.to(tl.int32), axis=0) > 0
    largest = tl.max(tl.where(is_nan, float("-inf"), values), axis=0)
    winners = tl.where(has_nan, is_nan, values == largest)
    index = tl.min(tl.where(winners, indices, _NO_INDEX), axis=0)
    return tl.where(has_nan, float("nan"), largest), index


@triton.jit
def gumbel_noise(key, counter, stream, first_column, TILE: tl.constexpr):
    """Standard Gumbel noise for the TILE columns from `first_column` (a multiple of 4) of a row: the bits
    and formula of lmserve.sample.gumbel.gumbel_noise, one Philox call for four columns."""
    quads = first_column // 4 + tl.arange(0, TILE // 4)
    zeros = tl.zeros_like(quads).to(tl.uint32)
    counter_low, counter_high = (counter & 0xFFFFFFFF).to(tl.uint32), (counter >> 32).to(tl.uint32)
    words = tl.philox(key, quads, zeros + counter_low, zeros + counter_high, zeros + stream)
    word0, word1, word2, word3 = words
    # Column 4q + j takes word j of quad q: join adds a minor axis, so the outer join's picks vary fastest.
    bits = tl.reshape(tl.join(tl.join(word0, word2), tl.join(word1, word3)), [TILE])
    uniform = ((bits >> _UNIFORM_SHIFT).to(tl.float32) + 0.5) * _UNIFORM_SCALE
    return -tl.log(-tl.log(uniform))


@triton.jit
def _load_scores(row_logits, first_column, vocab_size, temperature, key, counter, TILE: tl.constexpr,
                 SCALE: tl.constexpr, RACE: tl.constexpr):
    """A tile of the row's scores: its logits, divided by the temperature and raced with noise if asked."""
    columns = first_column + tl.arange(0, TILE)
    values = tl.load(row_logits + columns, mask=columns < vocab_size, other=float("-inf")).to(tl.float32)
    if SCALE:  # rounded as torch divides, so a row's scores do not depend on which path divided them
        values = tl.math.div_rn(values, temperature)
    if RACE:
        values += gumbel_noise(key, counter, 0, first_column, TILE)
    return values


@triton.jit(do_not_specialize=["tiles_per_chunk"])
def _chunk_argmax_kernel(
    logits_ptr, temperature_ptr, keys_ptr, counters_ptr, chunk_max_ptr, chunk_index_ptr, vocab_size, stride_row,
    tiles_per_chunk, TILE: tl.constexpr, SCALE: tl.constexpr, RACE: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    row_logits = logits_ptr + row * stride_row
    temperature = tl.load(temperature_ptr + row) if SCALE else 1.0
    key = tl.load(keys_ptr + row) if RACE else 0
    counter = tl.load(counters_ptr + row) if RACE else 0
    # Each lane keeps the first maximum of its own column stream; a later column replaces it only when
    # strictly larger (or the first NaN), so ties keep the earlier index.
    first_column = chunk * tiles_per_chunk * TILE
    best = _load_scores(row_logits, first_column, vocab_size, temperature, key, counter, TILE, SCALE, RACE)
    best_index = first_column + tl.arange(0, TILE)
    for tile in range(1, tiles_per_chunk):
        tile_start = first_column + tile * TILE
        values = _load_scores(row_logits, tile_start, vocab_size, temperature, key, counter, TILE, SCALE, RACE)
        better = (values > best) | ((values != values) & (best == best))
        best = tl.where(better, values, best)
        best_index = tl.where(better, tile_start + tl.arange(0, TILE), best_index)
    # Padding lanes hold -inf at columns past the row, so a real column always wins their ties.
    value, index = first_max(best, best_index)
    tl.store(chunk_max_ptr + row * num_chunks + chunk, value)
    tl.store(chunk_index_ptr + row * num_chunks + chunk, index)


@triton.jit(do_not_specialize=["num_chunks"])
def _row_argmax_kernel(chunk_max_ptr, chunk_index_ptr, out_ptr, num_chunks, CHUNKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunks = tl.arange(0, CHUNKS)
    mask = chunks < num_chunks
    values = tl.load(chunk_max_ptr + row * num_chunks + chunks, mask=mask, other=float("-inf"))
    indices = tl.load(chunk_index_ptr + row * num_chunks + chunks, mask=mask, other=_NO_INDEX)
    _, index = first_max(values, indices)
    tl.store(out_ptr + row, index.to(tl.int64))


def argmax(logits: torch.Tensor, tile: int = TILE, target_programs: int = TARGET_PROGRAMS) -> torch.Tensor:
    """[rows, vocab] float logits (rows contiguous) -> int64 [rows], equal to `reference_argmax`.

    `tile` and `target_programs` exist for tests, which keep them small under the interpreter.
    """
    return _two_stage_argmax(logits, None, None, None, tile, target_programs)


def gumbel_race(
    logits: torch.Tensor,
    temperature: torch.Tensor | None,
    keys: torch.Tensor,
    counters: torch.Tensor,
    tile: int = TILE,
    target_programs: int = TARGET_PROGRAMS,
) -> torch.Tensor:
    """Random tokens: lmserve.sample.gumbel.gumbel_race (the same noise bits, the logarithms within an ulp) in
    one pass over the logits.

    `temperature` ([rows] float32, or None for 1), `keys` and `counters` ([rows] int64) are on the logits'
    device.
    """
    return _two_stage_argmax(logits, temperature, keys, counters, tile, target_programs)


@dataclass(frozen=True)
class RowChunks:
    """How a two-stage row reduction cuts [rows, vocab] scores into chunks of whole tiles. Few rows: one tile a
    chunk, so a single row still covers the SMs. Many rows: longer chunks, so the launch stays near
    `target_programs` and stage 2 has little left to do. No constant follows the row count, so no batch size
    compiles a new variant."""

    scores: torch.Tensor  # contiguous along each row
    tiles_per_chunk: int
    num_chunks: int  # a row's
    max_chunks: int  # the most any launch makes (one tile a chunk), as a power of two: stage 2's block

    @classmethod
    def of(cls, scores: torch.Tensor, tile: int, target_programs: int) -> RowChunks:
        if scores.dim() != 2 or scores.shape[1] == 0:
            raise ValueError(f"scores must be [rows, vocab] with vocab > 0, got {tuple(scores.shape)}")
        if scores.stride(1) != 1:
            scores = scores.contiguous()
        num_rows, num_tiles = scores.shape[0], triton.cdiv(scores.shape[1], tile)
        tiles_per_chunk = triton.cdiv(num_tiles, max(1, min(num_tiles, target_programs // max(num_rows, 1))))
        return cls(scores, tiles_per_chunk, triton.cdiv(num_tiles, tiles_per_chunk), triton.next_power_of_2(num_tiles))

    @property
    def num_rows(self) -> int:
        return self.scores.shape[0]

    def empty_tokens(self) -> torch.Tensor:
        """The launch's output: a token per row."""
        return torch.empty(self.num_rows, dtype=torch.int64, device=self.scores.device)


def _two_stage_argmax(
    logits: torch.Tensor,
    temperature: torch.Tensor | None,
    keys: torch.Tensor | None,
    counters: torch.Tensor | None,
    tile: int,
    target_programs: int,
) -> torch.Tensor:
    chunks = RowChunks.of(logits, tile, target_programs)
    out = chunks.empty_tokens()
    if chunks.num_rows == 0:
        return out
    logits = chunks.scores
    chunk_max = torch.empty(chunks.num_rows, chunks.num_chunks, dtype=torch.float32, device=logits.device)
    chunk_index = torch.empty(chunks.num_rows, chunks.num_chunks, dtype=torch.int32, device=logits.device)
    race = keys is not None
    # A pointer the variant never reads gets the logits' as a stand-in.
    _chunk_argmax_kernel[(chunks.num_rows, chunks.num_chunks)](
        logits, logits if temperature is None else temperature, keys if race else logits,
        counters if race else logits, chunk_max, chunk_index, logits.shape[1], logits.stride(0),
        chunks.tiles_per_chunk, TILE=tile, SCALE=temperature is not None, RACE=race,
    )
    _row_argmax_kernel[(chunks.num_rows,)](chunk_max, chunk_index, out, chunks.num_chunks, CHUNKS=chunks.max_chunks)
    return out


def reference_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The torch path: each row's first maximum, NaN above everything."""
    return logits.argmax(dim=-1)
