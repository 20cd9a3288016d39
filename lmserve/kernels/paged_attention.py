"""Attention over the paged KV cache for a flattened batch that mixes prefill chunks and decode tokens.

One kernel serves every request shape. A program owns one tile of a request's queries for one kv head:
`BLOCK_Q` consecutive query tokens times all query heads that share that kv head (GQA), flattened into
`BLOCK_M` rows. So each key/value tile is loaded once per kv head group and used for every query head of
the group, and a long prefill chunk is spread over many programs. It walks the request's keys through its
block table `BLOCK_N` at a time (a tile may span several cache blocks) with an online softmax in fp32.

Decode tokens (query length 1) get tiles of one token: the rows are the group's heads, padded to 16 rows
for the tensor-core MMA. A small decode batch would leave most of the GPU idle with one program per
(request, kv head), so its keys are split over several programs whose partial softmaxes a second
kernel merges (flash-decoding). The number of splits is fixed at launch (so a CUDA graph replays it);
each request divides its own context evenly among them on the device, so a short context gets short
splits rather than a few long ones and many empty ones.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lmserve.kernels.kv_cache import check_kv_cache_layout


@triton.jit
def _find_request(query_start_loc_ptr, num_requests, tile, BLOCK_Q: tl.constexpr):
    """The request that owns query tile `tile` of the flat batch.

    Request i owns tiles [tile_start(i), tile_start(i) + ceil(query_len_i / BLOCK_Q)), with
    tile_start(i) = query_start_loc[i] // BLOCK_Q + i: the "+ i" leaves room for each request's partial
    last tile, so requests never share a tile (one-token tiles need no room). Binary search for the last
    request whose first tile is at or before `tile` (tile_start(0) = 0).
    """
    low = 0
    high = num_requests - 1
    while low < high:
        mid = (low + high + 1) // 2
        mid_start = tl.load(query_start_loc_ptr + mid).to(tl.int32) // BLOCK_Q
        if BLOCK_Q > 1:
            mid_start += mid
        if mid_start <= tile:
            low = mid
        else:
            high = mid - 1
    return low


# Ints that change from step to step are not specialised on (== 1, divisible by 16): each new combination
# would otherwise compile the kernel again, for up to a second, in the middle of serving.
@triton.jit(do_not_specialize=["num_requests", "num_splits", "stride_block_tables"])
def _paged_attention_kernel(
    query_ptr,
    cache_ptr,
    out_ptr,
    partial_out_ptr,  # split-KV only: [num_tokens, num_heads, num_splits, head_dim] float32
    partial_lse_ptr,  # split-KV only: [num_tokens, num_heads, num_splits] float32, log2 of each split's sum
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    decode_order_ptr,  # decode only: [num_requests], the requests in the order their programs start
    num_requests,
    num_splits,
    qk_scale,  # softmax scale times log2(e): the kernel uses exp2
    sliding_window,
    stride_query_token,
    stride_query_head,
    stride_out_token,
    stride_out_head,
    stride_block_tables,
    stride_cache_kv,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    BLOCK_SIZE: tl.constexpr,  # cache slots per block: fixed per engine, so divisions compile to shifts
    GROUP: tl.constexpr,  # query heads per kv head
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # query tokens per tile
    BLOCK_M: tl.constexpr,  # rows per tile: BLOCK_Q * GROUP_PAD, at least 16 for the tensor-core MMA
    BLOCK_N: tl.constexpr,  # keys per iteration
    HEAD_DIM: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    FP32_DOT: tl.constexpr,  # float32 inputs: exact products ("ieee") instead of TF32
    DECODE_ONLY: tl.constexpr,  # every request has exactly one query token
    SPLIT: tl.constexpr,  # decode only: program_id(2) of num_splits takes one share of the visible keys
):
    split = tl.program_id(2)
    if DECODE_ONLY:
        # The grid is (kv head, request): the GPU starts programs in that order, so each request's heads
        # start together and the requests in `decode_order`, the longest context first.
        kv_head = tl.program_id(0)
        request = tl.load(decode_order_ptr + tl.program_id(1)).to(tl.int32)
        query_start = request  # one query token per request, one tile per token
        query_len = 1
        tile_in_request = 0
    else:
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
        request = _find_request(query_start_loc_ptr, num_requests, tile, BLOCK_Q)
        query_start = tl.load(query_start_loc_ptr + request).to(tl.int32)
        query_len = tl.load(query_start_loc_ptr + request + 1).to(tl.int32) - query_start
        tile_in_request = tile - query_start // BLOCK_Q
        if BLOCK_Q > 1:
            tile_in_request -= request
        if tile_in_request * BLOCK_Q >= query_len:
            return  # a spare tile past the request's last query
    seq_len = tl.load(seq_lens_ptr + request).to(tl.int32)
    context_len = seq_len - query_len  # tokens before this step's queries

    # Row r is query token r // GROUP_PAD of the tile, for query head r % GROUP_PAD of the group.
    rows = tl.arange(0, BLOCK_M)
    token_in_tile = rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    query_index = tile_in_request * BLOCK_Q + token_in_tile
    row_valid = (token_in_tile < BLOCK_Q) & (query_index < query_len) & (head_in_group < GROUP)
    query_pos = context_len + query_index
    token = (query_start + query_index).to(tl.int64)
    head = kv_head * GROUP + head_in_group
    dims = tl.arange(0, HEAD_DIM)

    query_offsets = token * stride_query_token + head * stride_query_head
    query = tl.load(query_ptr + query_offsets[:, None] + dims[None, :], mask=row_valid[:, None], other=0.0)

    # Keys this tile can see: up to its last query's position, and (with a window) from
    # `window - 1` before its first query's position, rounded down to a whole tile of keys.
    first_pos = context_len + tile_in_request * BLOCK_Q
    key_end = tl.minimum(first_pos + BLOCK_Q, seq_len)
    key_start = 0
    if HAS_WINDOW:
        key_start = tl.maximum(first_pos - sliding_window + 1, 0) // BLOCK_N * BLOCK_N
    if SPLIT:
        keys_per_split = tl.cdiv(tl.cdiv(key_end - key_start, num_splits), BLOCK_N) * BLOCK_N
        key_start += split * keys_per_split
        key_end = tl.minimum(key_end, key_start + keys_per_split)

    row_max = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile then adds zeros
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    block_table = block_tables_ptr + request.to(tl.int64) * stride_block_tables
    cache_head = cache_ptr + kv_head.to(tl.int64) * stride_cache_head
    for key_tile_start in range(key_start, key_end, BLOCK_N):
        key_pos = key_tile_start + tl.arange(0, BLOCK_N)
        key_valid = key_pos < key_end
        block = tl.load(block_table + key_pos // BLOCK_SIZE, mask=key_valid, other=0)
        slot_offsets = block * stride_cache_block + (key_pos % BLOCK_SIZE) * stride_cache_slot
        # Load [keys, head_dim] (contiguous rows, so vectorised) and transpose in registers.
        keys = tl.load(cache_head + slot_offsets[:, None] + dims[None, :], mask=key_valid[:, None], other=0.0)
        keys = keys.to(query.dtype)  # a float8 cache is widened to the queries' dtype
        if FP32_DOT:
            scores = tl.dot(query, tl.trans(keys), input_precision="ieee")
        else:
            scores = tl.dot(query, tl.trans(keys))
        scores *= qk_scale

        visible = key_pos[None, :] <= query_pos[:, None]  # causal; also keeps keys below key_end
        if HAS_WINDOW:
            visible &= key_pos[None, :] > query_pos[:, None] - sliding_window
        scores = tl.where(visible, scores, float("-inf"))

        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp2(scores - new_max[:, None])
        correction = tl.exp2(row_max - new_max)
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        row_max = new_max

        values = tl.load(
            cache_head + stride_cache_kv + slot_offsets[:, None] + dims[None, :], mask=key_valid[:, None], other=0.0
        )
        if values.dtype != query.dtype:
            # Widen a float8 cache's values before the dot stages them in shared memory, so the dot reads them
            # as 16-bit words (ldmatrix.trans). Left alone, Triton moves the widening after the staging, where
            # the transposed read has no 8-bit form: one shared-memory load per byte. A select is an op Triton
            # does not move the staging above.
            values = tl.where(key_valid[:, None], values.to(query.dtype), 0.0)
        acc *= correction[:, None]
        if FP32_DOT:
            acc += tl.dot(probs, values, input_precision="ieee")
        else:
            acc += tl.dot(probs.to(values.dtype), values)

    if SPLIT:
        # This split's softmax-weighted values and the log2 of its weights' sum; `_merge_splits` combines
        # them. A split past the end of a short context saw no key: its weight becomes 0 there.
        num_kv_heads = tl.num_programs(0)  # splits are decode only
        partial_row = (token * (num_kv_heads * GROUP) + head) * num_splits + split
        seen = row_sum > 0.0
        lse = tl.where(seen, row_max + tl.log2(tl.where(seen, row_sum, 1.0)), float("-inf"))
        tl.store(partial_lse_ptr + partial_row, lse, mask=row_valid)
        partial = acc / tl.where(seen, row_sum, 1.0)[:, None]
        tl.store(partial_out_ptr + partial_row[:, None] * HEAD_DIM + dims[None, :], partial, mask=row_valid[:, None])
        return
    row_sum = tl.where(row_sum == 0.0, 1.0, row_sum)  # only padding rows see no key
    out = acc / row_sum[:, None]
    out_offsets = token * stride_out_token + head * stride_out_head
    tl.store(out_ptr + out_offsets[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


@triton.jit
def _merge_splits_kernel(
    partial_out_ptr,
    partial_lse_ptr,
    out_ptr,
    num_heads,
    num_splits,
    stride_out_token,
    stride_out_head,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    split_valid = splits < num_splits
    first_row = (token * num_heads + head) * num_splits
    lse = tl.load(partial_lse_ptr + first_row + splits, mask=split_valid, other=float("-inf"))
    top = tl.max(lse, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)  # a padding row: every split is empty
    weights = tl.exp2(lse - top)
    total = tl.sum(weights, axis=0)
    dims = tl.arange(0, HEAD_DIM)
    partial = tl.load(
        partial_out_ptr + (first_row + splits)[:, None] * HEAD_DIM + dims[None, :], mask=split_valid[:, None], other=0.0
    )
    out = tl.sum(partial * weights[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + token * stride_out_token + head * stride_out_head + dims, out.to(out_ptr.dtype.element_ty))


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    *,
    max_seq_len: int | None = None,
    block_q: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    num_splits: int | None = None,
    decode_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new queries over its whole context in the paged cache.

    query: [num_tokens, num_heads, head_dim]; request i's queries are rows
    `query_start_loc[i]:query_start_loc[i + 1]`, the last tokens of its `seq_lens[i]`-long context, whose
    keys and values (this step's included) are already in `kv_cache`
    ([2, num_blocks, block_size, num_kv_heads, head_dim], the queries' dtype or float8 e4m3) at the blocks
    `block_tables[i]` lists.
    A query at position p sees keys at positions <= p, and > p - sliding_window when one is given.
    `max_query_len` is a host-side int (no device sync); 1 selects the decode tile shape.
    The launch depends only on shapes and `max_query_len`, and each program loops over its request's keys up
    to the seq_len it reads on the device: so a decode launch replays correctly from a CUDA graph.
    `block_q` (query tokens per tile) and `block_n` (keys per iteration, a power of two >= 16) override
    the tile shape; tests use them to reach several tiles with tiny inputs, and benchmarks (with
    `num_warps` and `num_stages`) to tune it. Returns `out` if given.

    Decode steps too small to fill the GPU (few requests, each a program per kv head) split each context
    into `num_splits` even shares, attended by separate programs and merged after (flash-decoding).
    `max_seq_len` (a host-side upper bound) caps the choice; `num_splits` overrides it (1: no split).

    A decode step's programs start in `decode_order` (a permutation of the requests; default: batch order).
    In a batch of ragged contexts, longest first lets the short ones fill the end of the launch rather than
    one long context running on alone: on an H200 that made Llama-3.1-8B's decode attention 9-16% faster
    at batch 64-256 (benchmarks/results/attention-kernel-B-h200-ragged.json).
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    check_kv_cache_layout(kv_cache, num_kv_heads, head_dim)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if query.stride(2) != 1:
        raise ValueError("query must be contiguous in head_dim")
    if kv_cache.dtype not in (query.dtype, torch.float8_e4m3fn):
        raise ValueError(f"a {query.dtype} query cannot read a {kv_cache.dtype} cache (its own dtype or float8)")
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.stride(2) != 1:
        raise ValueError("out must have the query's shape and be contiguous in head_dim")
    num_requests = seq_lens.shape[0]
    if num_tokens == 0 or num_requests == 0:
        return out

    decode_only = max_query_len == 1
    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    # Untuned starting points, chosen so ptxas reports no register spills on sm_90 at head_dim 128:
    # 64-row tiles for 16-bit inputs; float32 (no TF32) has no tensor-core path and needs smaller tiles.
    is_fp32 = query.dtype == torch.float32
    target_rows = 16 if is_fp32 else 64
    if block_q is None:
        block_q = 1 if decode_only else max(1, target_rows // group_pad)
    if block_n is None:
        block_n = 32 if is_fp32 else 64
        if kv_cache.dtype == torch.float8_e4m3fn and decode_only and not is_fp32:
            block_n = _float8_decode_block_n(num_requests * num_kv_heads, query.device)
    if block_q < 1 or block_q & (block_q - 1):
        raise ValueError(f"block_q must be a power of two, got {block_q}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    block_m = max(16, block_q * group_pad)
    # Each request has at most query_len // block_q + 1 tiles (see _find_request); the spare ones exit at once.
    num_tiles = num_tokens // block_q + (num_requests if block_q > 1 else 0)
    if num_splits is None:
        num_splits = 1
        if decode_only and max_seq_len is not None:
            num_splits = _decode_num_splits(num_requests * num_kv_heads, max_seq_len, block_n, query.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    if num_splits > 1 and not decode_only:
        raise ValueError("only decode steps (max_query_len 1) split their keys")
    partial_out = partial_lse = out  # unread without a split
    if num_splits > 1:
        partial_out = torch.empty(num_tokens, num_heads, num_splits, head_dim, dtype=torch.float32, device=out.device)
        partial_lse = torch.empty(num_tokens, num_heads, num_splits, dtype=torch.float32, device=out.device)

    if decode_only and decode_order is None:
        decode_order = torch.arange(num_requests, device=query.device)
    elif decode_only and (decode_order.shape != (num_requests,) or decode_order.device != query.device):
        raise ValueError(f"decode_order must be one index per request ({num_requests}) on {query.device}, "
                         f"got {tuple(decode_order.shape)} on {decode_order.device}")
    grid = (num_kv_heads, num_tiles, num_splits) if decode_only else (num_tiles, num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        query,
        kv_cache,
        out,
        partial_out,
        partial_lse,
        block_tables,
        seq_lens,
        query_start_loc,
        decode_order if decode_only else query_start_loc,  # unread outside decode
        num_requests,
        num_splits,
        scale * math.log2(math.e),
        sliding_window or 0,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        BLOCK_SIZE=kv_cache.shape[2],
        GROUP=group,
        GROUP_PAD=group_pad,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=head_dim,
        HAS_WINDOW=sliding_window is not None,
        FP32_DOT=is_fp32,
        DECODE_ONLY=decode_only,
        SPLIT=num_splits > 1,
        num_warps=num_warps or (8 if is_fp32 else 4),
        num_stages=num_stages or 2,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            partial_out,
            partial_lse,
            out,
            num_heads,
            num_splits,
            out.stride(0),
            out.stride(1),
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            HEAD_DIM=head_dim,
        )
    return out


_TARGET_PROGRAMS_PER_SM = 4  # a split decode step aims at this many programs per SM
_MAX_SPLITS = 32  # the merge reads every split; beyond this it costs more than the splitting saves


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _decode_num_splits(num_programs: int, max_seq_len: int, block_n: int, device: torch.device) -> int:
    """How many splits a decode step of `num_programs` (request, kv head) pairs takes; 1: no split.

    Enough to give every SM work, but no more than a context of `max_seq_len` keys has key tiles.
    """
    wanted = -(-_TARGET_PROGRAMS_PER_SM * _num_sms(device) // num_programs)
    return max(1, min(wanted, _MAX_SPLITS, -(-max_seq_len // block_n)))


def _float8_decode_block_n(num_programs: int, device: torch.device) -> int:
    """Keys per iteration of a 16-bit decode step over a float8 cache: 128 once its (request, kv head) pairs
    fill the SMs, else 32. On an H200 at Qwen3-0.6B's heads, 128 made batch 64-256 decode attention 18-22%
    faster than 64 (and 6-10% faster than over a bf16 cache); at batch 1, 32 was the fastest tile at 512
    keys of context and 3% behind 128 at 2048 (benchmarks/results/attention-kernel-A-h200-fp8.json). Batches
    2-63 were not measured; the switch at one pair per SM is a guess between the two."""
    return 128 if num_programs >= _num_sms(device) else 32


def reference_paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """The torch reference of `paged_attention`: one request at a time, in float32, easy to check by eye."""
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[3]
    block_size = kv_cache.shape[2]
    out = torch.empty_like(query)
    for request in range(seq_lens.shape[0]):
        start, end = int(query_start_loc[request]), int(query_start_loc[request + 1])
        seq_len = int(seq_lens[request])
        positions = torch.arange(seq_len, device=query.device)
        blocks = block_tables[request, positions // block_size]
        keys = kv_cache[0, blocks, positions % block_size].float()  # [seq_len, num_kv_heads, head_dim]
        values = kv_cache[1, blocks, positions % block_size].float()
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)

        query_pos = seq_len - (end - start) + torch.arange(end - start, device=query.device)
        visible = positions[None, :] <= query_pos[:, None]
        if sliding_window is not None:
            visible &= positions[None, :] > query_pos[:, None] - sliding_window
        scores = torch.einsum("qhd,khd->hqk", query[start:end].float(), keys) * scale
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, values).to(query.dtype)
    return out
