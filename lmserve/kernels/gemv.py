"""Small-batch projections with the step before them fused in: y = prologue(x) @ W.T for a few rows.

At decode batch sizes a projection reads its whole weight to compute a few rows, and the small kernels
around it (the residual add and RMSNorm before q/k/v and gate/up, SwiGLU's activation before down, and
cuBLAS's own split-K reduction) each cost a launch that takes longer than its arithmetic. Here one program
streams `BLOCK_N` weight rows over the whole input width, and builds its input tile on the fly:

- `"add_rms_norm"`: x + residual, normalised by its root mean square and scaled by the norm weight. The
  sum of squares accumulates over the same pass as the product, and the product is scaled by the inverse
  root mean square at the end (the norm is linear in it). The first column block of programs also writes
  x + residual out, the next block's residual.
- `"rms_norm"`: the same without a residual (the first layer's input norm).
- `"silu_and_mul"`: silu(gate) * up of a fused gate/up projection, rounded as the unfused kernel rounds it.
- `"none"`: x as it is.

One epilogue, `RotaryStore`, serves a fused q/k/v projection at decode: each program takes its weight rows
in the rotary pairs (i, i + head_dim / 2) of one head, rotates the query and key heads by their tokens'
positions, and stores the keys and values in their cache slots; only the queries come back. The step then
needs no launch of its own for the rotation and the cache write.

The weight is [out, in] with contiguous rows, as checkpoints hold it. Products run on the CUDA cores and
accumulate elementwise in float32, summed once at the end: summing each column block as it arrives costs
a cross-warp reduction an iteration, and ran slower on an H200. On the tensor cores, with the rows padded
to 16, the prologue's layout follows the operand's and every thread computes it again (32 times the
exponentials at one row, in the compiled code), and the kernel ran 3-10 times slower than cuBLAS.

The column loop is software-pipelined (`num_stages` > 1: Triton copies the next tiles into shared memory
asynchronously while it works on this one), so each program keeps several tiles of its weight rows in
flight: at one row a projection is bound by how many bytes wait on memory at once, not by arithmetic.
Without it the kernel lost to cuBLAS on Llama-3.1-8B's weights; with it, its fused step included, it beat
cuBLAS and the unfused kernels on q/k/v, o and down and came within 3% on gate/up, on an H200
(benchmarks/results/linear-small-batch-*-h200-gemv-pipelined-sum-once.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lmserve.kernels.kv_cache import cast_for_cache, check_kv_cache_write

PROLOGUES = ("none", "rms_norm", "add_rms_norm", "silu_and_mul")
MAX_ROWS = 4  # every row adds a weight tile's worth of products and accumulators


@dataclass(frozen=True)
class GemvTile:
    """Weight rows per program, input columns per iteration at one row (halved for each doubling of the
    rows, so the product tile stays the same size in registers), the launch's warps, and the column tiles
    in flight (the software pipeline's stages)."""

    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class RotaryStore:
    """The q/k/v epilogue: rotate query and key heads ("rotate half" pairs, cos/sin rounded to the input
    dtype, as `lmserve.kernels.rotary` does), store keys and values at their tokens' slots (-1: nowhere)."""

    positions: torch.Tensor  # [rows]
    cos_cache: torch.Tensor  # [max_positions, head_dim / 2], float32
    sin_cache: torch.Tensor
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, kv_heads, head_dim]
    slot_mapping: torch.Tensor  # [rows]
    query_size: int  # the projection's first rows are the queries' (heads * head_dim); keys and values split the rest


@triton.jit
def _rotate_and_store(
    out, rows, row_valid, outs, block, dtype, out_ptr, stride_out, positions_ptr, cos_ptr, sin_ptr, stride_cos,
    kv_cache_ptr, slot_mapping_ptr, stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head,
    query_size, key_size, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr,
    CACHE_BLOCK_SIZE: tl.constexpr,
):
    # The program's rows are pairs of one head, interleaved: lane 2i holds pair i's first row, 2i + 1 its second.
    first_row = (block * (BLOCK_N // 2) // HALF) * (2 * HALF)
    pairs = (block * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF
    position = tl.load(positions_ptr + rows, mask=row_valid, other=0).to(tl.int64)
    cos_offsets = position[:, None] * stride_cos + pairs[None, :]
    cos = tl.load(cos_ptr + cos_offsets, mask=row_valid[:, None], other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(sin_ptr + cos_offsets, mask=row_valid[:, None], other=0.0).to(dtype).to(tl.float32)
    # Rounded as the projection's output is, then each product rounded as the rotary kernel rounds it.
    first, second = tl.split(tl.reshape(out.to(dtype).to(tl.float32), [BLOCK_M, BLOCK_N // 2, 2]))
    rotated_first = (first * cos).to(dtype).to(tl.float32) - (second * sin).to(dtype).to(tl.float32)
    rotated_second = (second * cos).to(dtype).to(tl.float32) + (first * sin).to(dtype).to(tl.float32)
    rotated = tl.reshape(tl.join(rotated_first, rotated_second), [BLOCK_M, BLOCK_N])
    is_value = first_row >= query_size + key_size
    out = tl.where(is_value, out.to(dtype), rotated.to(dtype))
    if first_row < query_size:
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_out + outs[None, :], out, mask=row_valid[:, None])
    else:
        slot = tl.load(slot_mapping_ptr + rows, mask=row_valid, other=-1).to(tl.int64)
        slot_offsets = (slot // CACHE_BLOCK_SIZE) * stride_cache_block + (slot % CACHE_BLOCK_SIZE) * stride_cache_slot
        columns = outs - query_size - is_value.to(tl.int32) * key_size
        head_offsets = (columns // (2 * HALF)) * stride_cache_head + columns % (2 * HALF)
        cache_ptrs = kv_cache_ptr + is_value.to(tl.int64) * stride_cache_kv
        cache_ptrs += slot_offsets[:, None] + head_offsets[None, :]
        # A slot of -1 marks a padding token (a CUDA graph replays a fixed batch size): nothing to store.
        tl.store(cache_ptrs, cast_for_cache(out, kv_cache_ptr.dtype.element_ty), mask=(slot >= 0)[:, None])


@triton.jit
def _gemv_kernel(
    x_ptr,  # [rows, in] (silu_and_mul: [rows, 2 * in], gate then up)
    residual_ptr,  # add_rms_norm: [rows, in]
    norm_weight_ptr,  # rms_norm, add_rms_norm: [in]
    weight_ptr,  # [out, in], rows contiguous
    bias_ptr,  # [out] when HAS_BIAS
    out_ptr,  # [rows, out]
    new_residual_ptr,  # add_rms_norm: [rows, in], x + residual
    positions_ptr,  # ROTARY_STORE, as RotaryStore's fields
    cos_ptr,
    sin_ptr,
    kv_cache_ptr,
    slot_mapping_ptr,
    num_rows,
    num_out,
    num_in,
    stride_x,
    stride_residual,
    stride_weight,
    stride_out,
    stride_cos,
    stride_cache_kv,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    query_size,
    key_size,
    eps,
    NORM: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    SILU_AND_MUL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    ROTARY_STORE: tl.constexpr,
    HALF: tl.constexpr,  # ROTARY_STORE: head_dim / 2
    CACHE_BLOCK_SIZE: tl.constexpr,  # ROTARY_STORE: slots per cache block, a shift
):
    block = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    if ROTARY_STORE:
        lanes = tl.arange(0, BLOCK_N)
        pairs = block * (BLOCK_N // 2) + lanes // 2
        outs = (pairs // HALF) * (2 * HALF) + pairs % HALF + (lanes % 2) * HALF
    else:
        outs = block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < num_rows
    out_valid = outs < num_out
    dtype = out_ptr.dtype.element_ty
    # Products accumulate elementwise and are summed over the columns once, after the loop.
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    sum_squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in tl.range(0, num_in, BLOCK_K, num_stages=NUM_STAGES):
        columns = start + tl.arange(0, BLOCK_K)
        column_valid = columns < num_in
        mask = row_valid[:, None] & column_valid[None, :]
        x_offsets = rows[:, None].to(tl.int64) * stride_x + columns[None, :]
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0)
        if SILU_AND_MUL:
            gate = x.to(tl.float32)
            up = tl.load(x_ptr + x_offsets + num_in, mask=mask, other=0.0).to(tl.float32)
            activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
            x = (activated * up).to(dtype)
        if ADD_RESIDUAL:
            residual_offsets = rows[:, None].to(tl.int64) * stride_residual + columns[None, :]
            residual = tl.load(residual_ptr + residual_offsets, mask=mask, other=0.0)
            # Rounded to the input dtype, as the unfused add is.
            x = (x.to(tl.float32) + residual.to(tl.float32)).to(dtype)
            tl.store(new_residual_ptr + residual_offsets, x, mask=mask & (block == 0))
        x32 = x.to(tl.float32)
        if NORM:
            sum_squares += tl.sum(x32 * x32, axis=1)
            norm_weight = tl.load(norm_weight_ptr + columns, mask=column_valid, other=0.0).to(tl.float32)
            x32 = (x32 * norm_weight[None, :]).to(dtype).to(tl.float32)
        weight = tl.load(
            weight_ptr + outs[:, None].to(tl.int64) * stride_weight + columns[None, :],
            mask=out_valid[:, None] & column_valid[None, :],
            other=0.0,
        ).to(tl.float32)
        # A few rows: products on the CUDA cores, each row's input laid out once beside the weight tile.
        acc += x32[:, None, :] * weight[None, :, :]
    out = tl.sum(acc, axis=2)
    if NORM:
        out *= tl.rsqrt(sum_squares / num_in + eps)[:, None]
    if HAS_BIAS:
        out += tl.load(bias_ptr + outs, mask=out_valid, other=0.0).to(tl.float32)[None, :]
    if ROTARY_STORE:
        _rotate_and_store(
            out, rows, row_valid, outs, block, dtype, out_ptr, stride_out, positions_ptr, cos_ptr, sin_ptr,
            stride_cos, kv_cache_ptr, slot_mapping_ptr, stride_cache_kv, stride_cache_block, stride_cache_slot,
            stride_cache_head, query_size, key_size, BLOCK_M, BLOCK_N, HALF, CACHE_BLOCK_SIZE,
        )
    else:
        out_offsets = rows[:, None].to(tl.int64) * stride_out + outs[None, :]
        tl.store(out_ptr + out_offsets, out.to(dtype), mask=row_valid[:, None] & out_valid[None, :])


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `gemv` serves this input and weight: at most MAX_ROWS rows, 16-bit, rows of W contiguous."""
    return (
        x.shape[0] <= MAX_ROWS
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.stride(1) == 1
    )


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    prologue: str = "none",
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    tile: GemvTile = GemvTile(),
    store: RotaryStore | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reference_gemv` in one launch for at most MAX_ROWS rows; returns (out, x + residual) for
    `"add_rms_norm"`, else out. x and residual are [rows, in] with contiguous rows (silu_and_mul: [rows,
    2 * in]); weight is [out, in] with contiguous rows. With a `store`, out is the rotated queries only,
    [rows, store.query_size]."""
    if prologue not in PROLOGUES:
        raise ValueError(f"prologue must be one of {PROLOGUES}, got {prologue!r}")
    num_out, num_in = weight.shape
    width = 2 * num_in if prologue == "silu_and_mul" else num_in
    if x.dim() != 2 or x.shape[1] != width or x.stride(1) != 1:
        raise ValueError(f"x must be [rows, {width}] with contiguous rows, got {tuple(x.shape)}")
    if not supports(x, weight):
        raise ValueError(f"gemv takes at most {MAX_ROWS} 16-bit rows and a weight with contiguous rows")
    norm = prologue in ("rms_norm", "add_rms_norm")
    if norm and (norm_weight is None or norm_weight.shape != (num_in,)):
        raise ValueError(f"prologue {prologue!r} needs a norm weight of shape ({num_in},)")
    add_residual = prologue == "add_rms_norm"
    if add_residual and (residual is None or residual.shape != x.shape or residual.stride(1) != 1):
        raise ValueError("prologue 'add_rms_norm' needs a residual of x's shape with contiguous rows")
    num_rows = x.shape[0]
    if store is not None:
        _check_store(store, num_rows, num_out, tile.block_n, x.dtype)
    out = torch.empty(num_rows, num_out if store is None else store.query_size, dtype=x.dtype, device=x.device)
    new_residual = torch.empty_like(x) if add_residual else out
    if num_rows:
        block_m = triton.next_power_of_2(num_rows)
        cos_cache, kv_cache = (store.cos_cache, store.kv_cache) if store is not None else (weight, weight)
        _gemv_kernel[(triton.cdiv(num_out, tile.block_n),)](
            x,
            residual if add_residual else x,
            norm_weight if norm else weight,
            weight,
            bias if bias is not None else weight,
            out,
            new_residual,
            store.positions if store is not None else weight,
            cos_cache,
            store.sin_cache if store is not None else weight,
            kv_cache,
            store.slot_mapping if store is not None else weight,
            num_rows,
            num_out,
            num_in,
            x.stride(0),
            residual.stride(0) if add_residual else 0,
            weight.stride(0),
            out.stride(0),
            cos_cache.stride(0),
            *(kv_cache.stride()[:4] if store is not None else (0, 0, 0, 0)),
            store.query_size if store is not None else 0,
            (num_out - store.query_size) // 2 if store is not None else 0,
            eps,
            NORM=norm,
            ADD_RESIDUAL=add_residual,
            SILU_AND_MUL=prologue == "silu_and_mul",
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=tile.block_n,
            BLOCK_K=max(16, tile.block_k // block_m),
            NUM_STAGES=tile.num_stages,
            ROTARY_STORE=store is not None,
            HALF=cos_cache.shape[1] if store is not None else 1,
            CACHE_BLOCK_SIZE=kv_cache.shape[2] if store is not None else 1,
            num_warps=tile.num_warps,
        )
    return (out, new_residual) if add_residual else out


def _check_store(store: RotaryStore, num_rows: int, num_out: int, block_n: int, dtype: torch.dtype) -> None:
    head_dim = 2 * store.cos_cache.shape[1]
    key_size = (num_out - store.query_size) // 2
    splits = 0 < store.query_size < num_out and store.query_size + 2 * key_size == num_out
    if not splits or store.query_size % head_dim or key_size % head_dim:
        raise ValueError(f"{num_out} projection rows do not split into {store.query_size} query rows and "
                         f"two equal parts of whole {head_dim}-wide heads")
    if (head_dim // 2) % (block_n // 2):
        raise ValueError(f"a program's {block_n // 2} rotary pairs must lie in one head of {head_dim}")
    if any(index.shape != (num_rows,) or index.stride(0) != 1 for index in (store.positions, store.slot_mapping)):
        raise ValueError(f"positions and slot_mapping must be contiguous [{num_rows}]")
    if store.sin_cache.shape != store.cos_cache.shape or not (store.cos_cache.is_contiguous()
                                                               and store.sin_cache.is_contiguous()):
        raise ValueError("the cos/sin caches must be contiguous and of one shape")
    kv_heads = torch.empty(0, key_size // head_dim, head_dim, dtype=dtype)  # only its shape and dtype are checked
    check_kv_cache_write(kv_heads, kv_heads, store.kv_cache)


def reference_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    prologue: str = "none",
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    store: RotaryStore | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The unfused torch ops that `gemv` replaces."""
    from lmserve.kernels.activation import reference_silu_and_mul
    from lmserve.kernels.kv_cache import reference_write_kv_cache
    from lmserve.kernels.rms_norm import reference_rms_norm
    from lmserve.kernels.rotary import reference_rotary_embedding

    new_residual = None
    if prologue == "silu_and_mul":
        x = reference_silu_and_mul(x)
    elif prologue == "rms_norm":
        x = reference_rms_norm(x, norm_weight, eps)
    elif prologue == "add_rms_norm":
        x, new_residual = reference_rms_norm(x, norm_weight, eps, residual)
    out = torch.nn.functional.linear(x, weight, bias)
    if store is not None:
        key_size = (out.shape[1] - store.query_size) // 2
        query, key, value = out.split([store.query_size, key_size, key_size], dim=1)
        out, key = reference_rotary_embedding(store.positions, query, key, store.cos_cache, store.sin_cache)
        head_dim = 2 * store.cos_cache.shape[1]
        reference_write_kv_cache(key.unflatten(1, (-1, head_dim)), value.unflatten(1, (-1, head_dim)),
                                 store.kv_cache, store.slot_mapping)
    return out if new_residual is None else (out, new_residual)
