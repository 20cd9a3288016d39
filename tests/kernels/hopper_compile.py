"""Compile every kernel variant for an H100 (sm_90) without a GPU: `python -m tests.kernels.hopper_compile`.

Must run in a process where TRITON_INTERPRET is unset: under the interpreter even Triton's own library
functions (tl.zeros, tl.maximum) are decorated for it and cannot be compiled.
"""

from __future__ import annotations

import itertools
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lmserve.kernels.activation import _silu_and_mul_kernel
from lmserve.kernels.argmax import _chunk_argmax_kernel, _row_argmax_kernel
from lmserve.kernels.gemv import _gemv_kernel
from lmserve.kernels.kv_cache import _write_kv_cache_kernel
from lmserve.kernels.matmul import _stream_k_kernel, tiles_for
from lmserve.kernels.paged_attention import _merge_splits_kernel, _paged_attention_kernel
from lmserve.kernels.rms_norm import _rms_norm_kernel
from lmserve.kernels.rotary import _rotary_kernel
from lmserve.kernels.top_p import _chunk_kernel as _top_p_chunk_kernel
from lmserve.kernels.top_p import _row_kernel as _top_p_row_kernel

HOPPER = GPUTarget("cuda", 90, 32)
INDEX_POINTERS = {"block_tables_ptr", "seq_lens_ptr", "query_start_loc_ptr", "decode_order_ptr", "slot_mapping_ptr",
                  "positions_ptr"}
FLOAT32_POINTERS = {"partial_out_ptr", "partial_lse_ptr", "cos_ptr", "sin_ptr"}
FLOAT_SCALARS = {"qk_scale", "eps"}

# (dtype, query heads per kv head, BLOCK_Q, BLOCK_N, sliding window, num_warps, decode only, cache dtype):
# what the launcher picks for a bf16 prefill with GQA 4, a fp16 decode with GQA 8 and a window, a float32 MHA
# prefill, a bf16 prefill and decode over a float8 cache, and fp16 and float32 decodes over a float8 cache.
ATTENTION_VARIANTS = [
    ("bf16", 4, 16, 64, False, 4, False, None),
    ("fp16", 8, 1, 64, True, 4, True, None),
    ("fp32", 1, 16, 32, True, 8, False, None),
    ("bf16", 4, 16, 64, False, 4, False, "fp8e4nv"),
    ("bf16", 4, 1, 128, False, 4, True, "fp8e4nv"),
    ("fp16", 2, 1, 32, True, 4, True, "fp8e4nv"),
    ("fp32", 1, 1, 32, False, 8, True, "fp8e4nv"),
]
# A float8 cache's values read from shared memory a byte at a time: Triton has moved their widening after the
# staging (see the attention kernel). Decode attention over float8 then ran only 6-10% faster than over bf16.
BYTE_LOADS_FROM_SHARED = re.compile(r"ld\.shared(\.v\d)?\.[bsu]8\b")
# A launch turns int arguments equal to 1 into constants: one request (or one kv head), one block each.
SINGLE_REQUEST = {"num_requests": 1, "stride_block_tables": 1}


def compile_for_hopper(
    kernel, dtype: str, constants: dict, num_warps: int, cache_dtype: str | None = None, pointers: dict | None = None
) -> str:
    """Compile as a launch would: pointers and strides specialised as 16-byte aligned / multiples of 16.
    The KV cache holds `dtype` unless `cache_dtype` (fp8e4nv: float8 e4m3) says otherwise; `pointers`
    names the element type of pointers that hold neither. Returns the PTX."""
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif pointers and name in pointers:
            signature[name] = pointers[name]
        elif name == "cache_ptr" and cache_dtype is not None:
            signature[name] = f"*{cache_dtype}"
        elif name in INDEX_POINTERS:
            signature[name] = "*i64"
        elif name in FLOAT32_POINTERS:
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
        if name.endswith("_ptr") or name.startswith("stride_"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constants, attrs)
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": 2})
    assert compiled.asm["cubin"], f"{kernel.__name__}: no cubin"
    return compiled.asm["ptx"]


def compile_all_variants() -> None:
    for dtype, group, block_q, block_n, has_window, num_warps, decode_only, cache_dtype in ATTENTION_VARIANTS:
        group_pad = triton.next_power_of_2(group)
        constants = {
            "BLOCK_SIZE": 16,
            "GROUP": group,
            "GROUP_PAD": group_pad,
            "BLOCK_Q": block_q,
            "BLOCK_M": max(16, block_q * group_pad),
            "BLOCK_N": block_n,
            "HEAD_DIM": 128,
            "HAS_WINDOW": has_window,
            "FP32_DOT": dtype == "fp32",
            "DECODE_ONLY": decode_only,
            "SPLIT": False,
        }
        # Prefill again for one request (its search is then a loop over constants); decode again split over
        # programs, as a small batch runs it, then the merge of the splits.
        extra = {"SPLIT": True} if decode_only else SINGLE_REQUEST
        for variant in (constants, constants | extra):
            ptx = compile_for_hopper(_paged_attention_kernel, dtype, variant, num_warps, cache_dtype)
            assert not BYTE_LOADS_FROM_SHARED.search(ptx), f"{dtype} over a {cache_dtype} cache: byte loads from shared"
        if decode_only:
            compile_for_hopper(_merge_splits_kernel, dtype, {"SPLITS_PAD": 16, "HEAD_DIM": 128}, 4)
    for cache_dtype in (None, "fp8e4nv"):
        constants = {"BLOCK_SIZE": 16, "HEADS_PAD": 1, "HEAD_DIM": 128, "num_kv_heads": 1}
        compile_for_hopper(_write_kv_cache_kernel, "bf16", constants, 4, cache_dtype)
    for has_residual in (False, True):
        compile_for_hopper(_rms_norm_kernel, "bf16", {"HAS_RESIDUAL": has_residual, "BLOCK": 1024}, 4)
    # Qwen3 normalises each head inside the rotary launch; the attention backend has it store keys and values.
    for has_norm, store, cache in itertools.product((False, True), (False, True), ("bf16", "fp8e4nv")):
        if not store and cache != "bf16":
            continue
        constants = {"HALF": 64, "HALF_PAD": 64, "HEADS_PAD": 16, "HAS_NORM": has_norm, "STORE_KV": store,
                     "BLOCK_SIZE": 16}
        compile_for_hopper(_rotary_kernel, "bf16", constants, 4, pointers={"kv_cache_ptr": f"*{cache}"})
    compile_for_hopper(_silu_and_mul_kernel, "bf16", {"BLOCK": 1024}, 4)
    for prologue in ({}, {"NORM": True}, {"NORM": True, "ADD_RESIDUAL": True}, {"SILU_AND_MUL": True}):
        flags = {"NORM": False, "ADD_RESIDUAL": False, "SILU_AND_MUL": False, "HAS_BIAS": False} | prologue
        for block_m in (1, 4):  # one decode row, and the most gemv takes
            constants = flags | {"BLOCK_M": block_m, "BLOCK_N": 8, "BLOCK_K": 512 // block_m, "NUM_STAGES": 3,
                                 "ROTARY_STORE": False, "HALF": 1, "CACHE_BLOCK_SIZE": 1}
            compile_for_hopper(_gemv_kernel, "bf16", constants, 4)
    # The q/k/v projection at decode rotates and stores keys and values, after either norm prologue.
    for residual, cache in itertools.product((False, True), ("bf16", "fp8e4nv")):
        constants = {"NORM": True, "ADD_RESIDUAL": residual, "SILU_AND_MUL": False, "HAS_BIAS": False, "BLOCK_M": 1,
                     "BLOCK_N": 8, "BLOCK_K": 512, "NUM_STAGES": 3, "ROTARY_STORE": True, "HALF": 64,
                     "CACHE_BLOCK_SIZE": 16}
        compile_for_hopper(_gemv_kernel, "bf16", constants, 4, pointers={"kv_cache_ptr": f"*{cache}"})
    argmax_buffers = {"chunk_max_ptr": "*fp32", "chunk_index_ptr": "*i32", "temperature_ptr": "*fp32",
                      "keys_ptr": "*i64", "counters_ptr": "*i64"}
    # Greedy or random sampling, the temperature divided in the kernel or not, on the model's dtype or float32.
    for dtype, (scale, race) in itertools.product(("bf16", "fp32"), ((False, False), (True, True), (False, True))):
        constants = {"TILE": 1024, "SCALE": scale, "RACE": race}
        compile_for_hopper(_chunk_argmax_kernel, dtype, constants, 4, pointers=argmax_buffers)
    compile_for_hopper(_row_argmax_kernel, "bf16", {"CHUNKS": 256}, 4, pointers=argmax_buffers | {"out_ptr": "*i64"})
    top_p_buffers = {"keys_ptr": "*i64", "counters_ptr": "*i64", "chunk_floats_ptr": "*fp32",
                     "chunk_indices_ptr": "*i32", "out_ptr": "*i64"}
    compile_for_hopper(_top_p_chunk_kernel, "fp32", {"TILE": 1024}, 4, pointers=top_p_buffers)
    compile_for_hopper(_top_p_row_kernel, "fp32", {"CHUNKS": 256, "TILE": 1024, "MAX_ROUNDS": 64}, 4,
                       pointers=top_p_buffers)
    # The stream-K GEMM at each tile tiles_for picks; x, weight and out come as tensor (TMA) descriptors.
    for rows in (64, 128, 256):
        tiles = tiles_for(rows)
        m, n, k = tiles.block_m, tiles.block_n, tiles.block_k
        constants = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "NUM_STAGES": tiles.num_stages}
        descriptors = {"x_desc": f"tensordesc<bf16[{m},{k}]>", "weight_desc": f"tensordesc<bf16[{n},{k}]>",
                       "out_desc": f"tensordesc<bf16[{m},{n}]>"}
        compile_for_hopper(_stream_k_kernel, "bf16", constants, tiles.num_warps,
                           pointers=descriptors | {"partials_ptr": "*fp32", "flags_ptr": "*i32", "ticket_ptr": "*i32"})

if __name__ == "__main__":
    compile_all_variants()
