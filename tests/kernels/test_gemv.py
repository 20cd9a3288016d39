"""The small-batch projection kernel equals the unfused torch ops it replaces, for each fused prologue."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from lmserve.kernels.gemv import MAX_ROWS, GemvTile, RotaryStore, gemv, reference_gemv, supports
from lmserve.kernels.rotary import rotary_embedding
from lmserve.models.layers import RotaryEmbedding
from tests.kernels.paged_batch import DEVICE

# Relative to the output's size: the kernel and torch sum the products in other orders and round
# the normalised input at other points.
TOLERANCES = {torch.float16: 4e-3, torch.bfloat16: 2e-2}
FLOAT8_TOLERANCE = 0.13  # a cache entry an input ulp apart may round to the next float8 step, an eighth away
SMALL_TILE = GemvTile(block_n=16, block_k=64, num_stages=3)  # several column blocks and iterations


def random_tensor(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(device=DEVICE, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, exact: bool = False, scale: float = 1.0) -> None:
    """Within `scale` times the dtype's tolerance, or bit for bit when `exact`."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if exact:
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8))
        return
    error = (actual.float() - expected.float()).abs().max()
    assert error <= scale * TOLERANCES.get(expected.dtype, FLOAT8_TOLERANCE) * expected.float().abs().max(), error


def inputs(prologue: str, rows: int, num_in: int, num_out: int, dtype: torch.dtype, bias: bool) -> dict:
    width = 2 * num_in if prologue == "silu_and_mul" else num_in
    # A wider buffer's first columns: rows of x need not be packed.
    x = random_tensor(rows, width + 8, dtype=dtype, seed=rows * num_in, scale=2.0)[:, :width]
    arguments = {"x": x, "weight": random_tensor(num_out, num_in, dtype=dtype, seed=1, scale=num_in**-0.5)}
    if bias:
        arguments["bias"] = random_tensor(num_out, dtype=dtype, seed=2)
    if prologue != "none":
        arguments["prologue"] = prologue
    if prologue in ("rms_norm", "add_rms_norm"):
        arguments.update(norm_weight=random_tensor(num_in, dtype=dtype, seed=3) + 1, eps=1e-6)
    if prologue == "add_rms_norm":
        arguments["residual"] = random_tensor(rows, num_in, dtype=dtype, seed=4, scale=3.0)
    return arguments


SHAPES = [(1, 200, 40, False), (3, 64, 70, True), (4, 130, 17, False), (2, 40, 33, False)]  # rows, in, out, bias


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("prologue", ["none", "rms_norm", "add_rms_norm", "silu_and_mul"])
@pytest.mark.parametrize(("rows", "num_in", "num_out", "bias"), SHAPES)
def test_matches_reference(dtype: torch.dtype, prologue: str, rows: int, num_in: int, num_out: int, bias: bool) -> None:
    arguments = inputs(prologue, rows, num_in, num_out, dtype, bias)

    actual = gemv(**arguments, tile=SMALL_TILE)
    expected = reference_gemv(**arguments)

    if prologue == "add_rms_norm":
        assert_close(actual[0], expected[0])
        # Every column of the sum is written once, by the first column block of programs.
        assert_close(actual[1], expected[1])
    else:
        assert_close(actual, expected)


def test_default_tile_matches_reference() -> None:
    arguments = inputs("add_rms_norm", 2, 600, 50, torch.bfloat16, bias=False)
    actual, new_residual = gemv(**arguments)
    expected, expected_residual = reference_gemv(**arguments)
    assert_close(actual, expected)
    assert_close(new_residual, expected_residual)


def test_leaves_inputs_alone() -> None:
    arguments = inputs("add_rms_norm", 4, 96, 48, torch.float16, bias=False)
    before = {name: value.clone() for name, value in arguments.items() if isinstance(value, torch.Tensor)}
    gemv(**arguments, tile=SMALL_TILE)
    for name, value in before.items():
        assert torch.equal(arguments[name], value), name


def test_empty_batch_and_bad_inputs() -> None:
    weight = random_tensor(8, 32, dtype=torch.bfloat16, seed=0)
    assert gemv(torch.empty(0, 32, dtype=torch.bfloat16, device=DEVICE), weight).shape == (0, 8)
    too_many = random_tensor(MAX_ROWS + 1, 32, dtype=torch.bfloat16, seed=1)
    assert not supports(too_many, weight)
    with pytest.raises(ValueError, match="at most"):
        gemv(too_many, weight)
    with pytest.raises(ValueError, match="16-bit"):
        gemv(random_tensor(1, 32, dtype=torch.float32, seed=2), weight.float())
    with pytest.raises(ValueError, match=r"x must be \[rows, 64\]"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=3), weight, prologue="silu_and_mul")
    with pytest.raises(ValueError, match="norm weight"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=4), weight, prologue="rms_norm")
    with pytest.raises(ValueError, match="residual"):
        x, norm_weight = (random_tensor(*shape, dtype=torch.bfloat16, seed=5) for shape in ((1, 32), (32,)))
        gemv(x, weight, prologue="add_rms_norm", norm_weight=norm_weight)
    with pytest.raises(ValueError, match="prologue must be"):
        gemv(random_tensor(1, 32, dtype=torch.bfloat16, seed=7), weight, prologue="gelu")


def rotary_store(rows: int, heads: int, kv_heads: int, head_dim: int, cache_dtype: torch.dtype) -> RotaryStore:
    """Rows at scattered positions; the second row is padding (slot -1) when there are several."""
    config = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, max_position_embeddings=300)
    rotary = RotaryEmbedding(config, head_dim).to(DEVICE)
    block_size, num_blocks = 16, 6
    generator = torch.Generator().manual_seed(rows)
    kv_cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=generator).to(DEVICE, cache_dtype)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:rows]
    if rows > 1:
        slots[1] = -1
    positions = torch.tensor([37, 299, 0, 64][:rows])
    return RotaryStore(positions.to(DEVICE), rotary.cos_cache, rotary.sin_cache, kv_cache, slots.to(DEVICE),
                       heads * head_dim)


def with_cache(store: RotaryStore, kv_cache: torch.Tensor) -> RotaryStore:
    return RotaryStore(store.positions, store.cos_cache, store.sin_cache, kv_cache, store.slot_mapping,
                       store.query_size)


@pytest.mark.parametrize(
    ("prologue", "dtype", "cache_dtype", "rows", "heads", "kv_heads", "head_dim", "bias", "tile"),
    [
        ("add_rms_norm", torch.bfloat16, torch.bfloat16, 1, 4, 2, 32, False, GemvTile()),
        ("add_rms_norm", torch.float16, torch.float16, 3, 2, 2, 16, True, SMALL_TILE),
        ("add_rms_norm", torch.bfloat16, torch.float8_e4m3fn, 2, 4, 1, 32, False, SMALL_TILE),
        ("rms_norm", torch.bfloat16, torch.bfloat16, 4, 8, 1, 16, False, SMALL_TILE),  # the first layer's
    ],
)
def test_rotary_store_equals_the_projection_then_the_rotary_kernel(
    prologue: str, dtype: torch.dtype, cache_dtype: torch.dtype, rows: int, heads: int, kv_heads: int,
    head_dim: int, bias: bool, tile: GemvTile,
) -> None:
    """The epilogue rounds as the unfused kernels do: under the interpreter queries and the cache come out bit
    for bit the same; compiled, the product sums may add up in another order (an ulp apart on an H200).
    Only the slots of real rows change."""
    num_out = (heads + 2 * kv_heads) * head_dim
    arguments = inputs(prologue, rows, 96, num_out, dtype, bias)
    store = rotary_store(rows, heads, kv_heads, head_dim, cache_dtype)
    expected_cache = store.kv_cache.clone()
    slots = store.kv_cache.flatten(1, 2).view(torch.uint8)  # [2, slots, kv_heads, head_dim]
    unwritten = torch.ones(slots.shape[1], dtype=torch.bool, device=DEVICE)
    unwritten[store.slot_mapping[store.slot_mapping >= 0]] = False
    before = slots[:, unwritten].clone()

    queries = gemv(**arguments, tile=tile, store=store)

    qkv = gemv(**arguments, tile=tile)
    if prologue == "add_rms_norm":  # (out, x + residual): the sum is the same either way
        (queries, new_residual), (qkv, expected_residual) = queries, qkv
        assert_close(new_residual, expected_residual, DEVICE == "cpu")
    query, key, value = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=1)
    rotary_embedding(store.positions, query, key, store.cos_cache, store.sin_cache,
                     store=(value, expected_cache, store.slot_mapping))
    exact = DEVICE == "cpu"
    assert_close(queries, query, exact)
    assert_close(store.kv_cache, expected_cache, exact)
    assert torch.equal(slots[:, unwritten], before)
    # And both are the torch ops, within the projection's rounding and the rotation's on top of it.
    reference_cache = expected_cache.clone()
    reference_queries = reference_gemv(**arguments, store=with_cache(store, reference_cache))
    reference_queries = reference_queries[0] if prologue == "add_rms_norm" else reference_queries
    assert_close(queries, reference_queries, scale=2)
    assert_close(store.kv_cache, reference_cache, scale=2)


def test_rotary_store_rejects_shapes_it_cannot_split() -> None:
    store = rotary_store(1, 4, 2, 32, torch.bfloat16)
    x = random_tensor(1, 64, dtype=torch.bfloat16, seed=0)
    for num_out in (9 * 32, 4 * 32, 2 * 32):  # uneven keys and values; no room for them; fewer than the queries
        with pytest.raises(ValueError, match="do not split"):
            gemv(x, random_tensor(num_out, 64, dtype=torch.bfloat16, seed=1), store=store)
    with pytest.raises(ValueError, match="kv_cache must be"):
        gemv(x, random_tensor(4 * 32 + 2 * 3 * 32, 64, dtype=torch.bfloat16, seed=2), store=store)
    with pytest.raises(ValueError, match="rotary pairs"):
        gemv(x, random_tensor(8 * 32, 64, dtype=torch.bfloat16, seed=3), store=store, tile=GemvTile(block_n=128))
