"""The Triton paged attention equals the torch reference on ragged mixed batches.

Every case writes into a NaN-poisoned output buffer, so a row the kernel forgets fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.kv_cache import reference_write_kv_cache  # noqa: E402
from lmserve.kernels.paged_attention import paged_attention, reference_paged_attention  # noqa: E402
from lmserve.worker.input_preparation import longest_first  # noqa: E402
from tests.kernels.paged_batch import DECODES, DEVICE, MIXED, PagedBatch, make_batch  # noqa: E402

FP32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
# The kernel rounds the softmax weights to the input dtype before multiplying by V; bfloat16 keeps 8 bits.
HALF_TOLERANCE = {torch.float16: {"rtol": 1e-2, "atol": 1e-2}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}


def attend(batch: PagedBatch, sliding_window: int | None, **tile_shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Store the step's keys and values, then return (kernel output, reference output)."""
    metadata = batch.metadata
    reference_write_kv_cache(batch.key, batch.value, batch.kv_cache, metadata.slot_mapping)
    scale = batch.query.shape[2] ** -0.5
    tables = (batch.kv_cache, metadata.block_tables, metadata.seq_lens, metadata.query_start_loc)
    out = torch.full_like(batch.query, float("nan"))
    paged_attention(batch.query, *tables, metadata.max_query_len, scale, sliding_window, out,
                    max_seq_len=metadata.max_seq_len, **tile_shape)
    return out, reference_paged_attention(batch.query, *tables, scale, sliding_window)


@pytest.mark.parametrize("sliding_window", [None, 7])
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "block_size"), [(2, 2, 16), (4, 2, 32), (8, 2, 16)], ids=["mha", "gqa2", "gqa4"]
)
def test_mixed_batch(num_heads: int, num_kv_heads: int, block_size: int, sliding_window: int | None) -> None:
    batch = make_batch(MIXED, num_heads, num_kv_heads, 16, block_size)
    out, expected = attend(batch, sliding_window)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype: torch.dtype) -> None:
    batch = make_batch(MIXED, 4, 2, 32, 16, dtype)
    out, expected = attend(batch, sliding_window=9)
    torch.testing.assert_close(out, expected, **HALF_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("lengths", "sliding_window"), [(MIXED, None), (DECODES, None), (DECODES, 20)],
                         ids=["mixed", "decode", "decode-window"])
def test_float8_cache(lengths: list[tuple[int, int]], sliding_window: int | None, dtype: torch.dtype) -> None:
    # Queries of each dtype over float8 keys and values, which the kernel widens exactly; the decodes take
    # the launcher's own tile and splits.
    batch = make_batch(lengths, 4, 2, 32, 16, dtype, cache_dtype=torch.float8_e4m3fn)
    out, expected = attend(batch, sliding_window)
    torch.testing.assert_close(out, expected, **HALF_TOLERANCE.get(dtype, FP32_TOLERANCE))


def test_float8_decode_that_fills_the_gpu_takes_long_key_tiles() -> None:
    # 66 requests x 2 kv heads fill the 132 SMs assumed on a CPU: 128 keys per tile, contexts of 1-200 keys.
    from lmserve.kernels.paged_attention import _float8_decode_block_n

    assert _float8_decode_block_n(132, torch.device("cpu")) == 128
    assert _float8_decode_block_n(8, torch.device("cpu")) == 32
    lengths = [((37 * i) % 200, 1) for i in range(66)]
    batch = make_batch(lengths, 4, 2, 32, 16, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    out, expected = attend(batch, sliding_window=None)
    torch.testing.assert_close(out, expected, **HALF_TOLERANCE[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device: compiled code, not the interpreter")
@pytest.mark.parametrize("batch_size", [6, 160], ids=["split-32-key-tiles", "128-key-tiles"])
def test_on_a_gpu_float8_decode_at_llama_heads(batch_size: int) -> None:
    # Head size 128 and 4 query heads a kv head, as Llama-3.1-8B; the compiled values path (widened before
    # the staging) is what the interpreter does not run. Contexts of 1-2,000 keys.
    lengths = [((997 * i) % 2000, 1) for i in range(batch_size)]
    batch = make_batch(lengths, 32, 8, 128, 16, torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    out, expected = attend(batch, sliding_window=None)
    torch.testing.assert_close(out, expected, **HALF_TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(2, 2), (4, 1)])
def test_decode_batch(num_heads: int, num_kv_heads: int) -> None:
    # max_query_len 1 selects one-token tiles; the 70-token context takes several key tiles.
    batch = make_batch(DECODES, num_heads, num_kv_heads, 16, 32)
    out, expected = attend(batch, sliding_window=None, num_splits=1)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("sliding_window", [None, 20])
@pytest.mark.parametrize(("num_splits", "block_n"), [(2, 16), (3, 16), (5, 32)])
def test_decode_keys_split_over_programs(num_splits: int, block_n: int, sliding_window: int | None) -> None:
    # Contexts of 1 to 71 keys, each divided among the splits: some splits hold a part of a context, some
    # nothing (a context shorter than one tile per split); the merge must weight each by its softmax mass.
    batch = make_batch(DECODES, 4, 2, 16, 16)
    out, expected = attend(batch, sliding_window, num_splits=num_splits, block_n=block_n)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("order", ["longest-first", "reversed"])
def test_decode_programs_take_requests_in_any_order(order: str, num_splits: int) -> None:
    # The order only says which programs start first: every request's row is still written, with its own result.
    batch = make_batch(DECODES, 4, 2, 16, 16)
    seq_lens = batch.metadata.seq_lens.cpu()
    decode_order = longest_first(seq_lens.numpy()) if order == "longest-first" else range(len(seq_lens) - 1, -1, -1)
    decode_order = torch.tensor(list(decode_order), device=batch.query.device)
    out, expected = attend(batch, None, num_splits=num_splits, decode_order=decode_order)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_split_decode_in_half_precision(dtype: torch.dtype) -> None:
    batch = make_batch(DECODES, 8, 2, 32, 16, dtype)
    out, expected = attend(batch, sliding_window=None, num_splits=3, block_n=16)
    torch.testing.assert_close(out, expected, **HALF_TOLERANCE[dtype])


def test_small_decode_batches_split_and_large_ones_do_not() -> None:
    from lmserve.kernels.paged_attention import _decode_num_splits

    cpu = torch.device("cpu")  # taken as 132 SMs
    assert _decode_num_splits(num_programs=8, max_seq_len=4096, block_n=64, device=cpu) == 32  # at most 32
    assert _decode_num_splits(num_programs=8, max_seq_len=200, block_n=64, device=cpu) == 4  # one tile each
    assert _decode_num_splits(num_programs=32 * 8, max_seq_len=4096, block_n=64, device=cpu) == 3
    assert _decode_num_splits(num_programs=128 * 8, max_seq_len=4096, block_n=64, device=cpu) == 1  # full GPU
    assert _decode_num_splits(num_programs=8, max_seq_len=50, block_n=64, device=cpu) == 1  # one tile


def test_rejects_a_decode_order_that_is_not_on_the_device_or_not_one_per_request() -> None:
    batch = make_batch(DECODES, 4, 2, 16, 16)
    num_requests = batch.metadata.seq_lens.shape[0]
    with pytest.raises(ValueError, match="decode_order"):
        attend(batch, None, decode_order=torch.arange(num_requests - 1, device=batch.query.device))
    with pytest.raises(ValueError, match="decode_order"):
        attend(batch, None, decode_order=torch.arange(num_requests, device="meta"))


def test_split_only_decode_steps() -> None:
    batch = make_batch(MIXED, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="only decode steps"):
        attend(batch, sliding_window=None, num_splits=2)


@pytest.mark.parametrize(("block_size", "block_q", "block_n"), [(32, 2, 16), (8, 1, 32)])
def test_small_tiles(block_size: int, block_q: int, block_n: int) -> None:
    # One or two query tokens per tile spread each prefill over many programs; a key tile smaller than a
    # cache block, or spanning four of them, exercises the gather through the block table.
    batch = make_batch(MIXED, 4, 2, 16, block_size)
    out, expected = attend(batch, sliding_window=11, block_q=block_q, block_n=block_n)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("lengths", [[(0, 23)], [(40, 1)]], ids=["prefill", "decode"])
def test_single_request(lengths: list[tuple[int, int]]) -> None:
    batch = make_batch(lengths, 4, 2, 16, 16)
    out, expected = attend(batch, sliding_window=None)
    torch.testing.assert_close(out, expected, **FP32_TOLERANCE)


def test_rejects_heads_that_do_not_group() -> None:
    batch = make_batch(MIXED, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        attend(batch, sliding_window=None)
