"""The layer-side projection functions give the same results through gemv as through the unfused kernels.

On a GPU they take gemv at one row of a 16-bit weight; here `fuses` is forced so that gemv runs (on the CPU,
in Triton's interpreter) where the unfused path would.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from lmserve.attention import TorchAttentionBackend
from lmserve.models import llama as llama_module
from lmserve.models.layers import RMSNorm, RotaryEmbedding
from lmserve.models.layers import projection as projection_module
from lmserve.models.layers.projection import gated_projection, normed_projection, projection
from tests.kernels.paged_batch import DECODES, DEVICE, make_batch
from tests.kernels.triton_setup import record_launches

DTYPE = torch.bfloat16


def run_both(monkeypatch: pytest.MonkeyPatch, compute):
    """compute() unfused, then with every projection fused."""
    unfused = compute()
    for module in (projection_module, llama_module):
        monkeypatch.setattr(module, "fuses", lambda x, linear: x.shape[0] == 1)
    return unfused, compute()


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert (actual.float() - expected.float()).abs().max() <= 2e-2 * expected.float().abs().max()


def layers(num_in: int, num_out: int, bias: bool) -> tuple[RMSNorm, nn.Linear]:
    torch.manual_seed(0)
    norm = RMSNorm(num_in, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm.to(DEVICE, DTYPE), nn.Linear(num_in, num_out, bias=bias).to(DEVICE, DTYPE)


@pytest.mark.parametrize("with_residual", [False, True])
def test_normed_projection(monkeypatch: pytest.MonkeyPatch, with_residual: bool) -> None:
    norm, linear = layers(96, 40, bias=True)
    hidden = torch.randn(1, 96).to(DEVICE, DTYPE)
    residual = torch.randn(1, 96).to(DEVICE, DTYPE) if with_residual else None

    (expected, expected_residual), (actual, actual_residual) = run_both(
        monkeypatch, lambda: normed_projection(norm, linear, hidden, residual)
    )

    assert_close(actual, expected)
    assert_close(actual_residual, expected_residual)


def test_projections_run_the_stream_k_gemm_where_the_tiles_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Projections of the row counts `use_stream_k` names take the stream-K GEMM (forced here, where the CPU
    would not: it runs in Triton's interpreter) when their shapes fit its tiles, F.linear otherwise."""
    from lmserve.kernels import matmul as matmul_module
    from lmserve.kernels.matmul import supports

    norm, gate_up = layers(64, 256, bias=False)
    _, down = layers(128, 64, bias=False)  # 64 outputs: not a whole tile, so F.linear
    _, with_bias = layers(64, 128, bias=True)  # the GEMM adds no bias, so F.linear
    torch.manual_seed(2)
    hidden, residual = torch.randn(130, 64).to(DEVICE, DTYPE), torch.randn(130, 64).to(DEVICE, DTYPE)
    gate_up_out = torch.randn(130, 256).to(DEVICE, DTYPE)

    def compute():
        return (*normed_projection(norm, gate_up, hidden, residual), gated_projection(down, gate_up_out),
                projection(with_bias, hidden), projection(gate_up, hidden[:2]))

    expected = compute()
    launches = record_launches(monkeypatch, matmul_module, ("_stream_k_kernel",))
    monkeypatch.setattr(projection_module, "streams_k",
                        lambda x, layer: x.shape[0] >= 128 and layer.bias is None and supports(x, layer.weight))
    actual = compute()

    assert len(launches) == 1, "only gate/up at 130 rows fits; 2 rows are below the stream-K rows"
    for got, want in zip(actual, expected, strict=True):
        assert_close(got, want)


def test_projection_and_gated_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    _, linear = layers(64, 24, bias=False)
    x, gate_up = torch.randn(1, 64).to(DEVICE, DTYPE), torch.randn(1, 128).to(DEVICE, DTYPE)

    unfused, fused = run_both(monkeypatch, lambda: (projection(linear, x), gated_projection(linear, gate_up)))

    for actual, expected in zip(fused, unfused, strict=True):
        assert_close(actual, expected)


# A decode; a one-token prompt's prefill (one row too); heads only the torch backend takes (not a power of
# two), where the projection leaves the cache to the backend.
@pytest.mark.parametrize(("lengths", "head_dim"), [(DECODES[1:2], 32), (DECODES[0:1], 32), (DECODES[1:2], 48)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_attention_block_with_the_projection_storing_keys_and_values(
    monkeypatch: pytest.MonkeyPatch, with_residual: bool, lengths: list[tuple[int, int]], head_dim: int
) -> None:
    """At one row the q/k/v projection rotates and stores, and attention only attends: the block's output,
    residual and cache are those of the unfused path."""
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                         max_position_embeddings=256)
    torch.manual_seed(1)
    block = llama_module.LlamaAttention(config, 0, RotaryEmbedding(config, head_dim), llama_module.AttentionOptions(
        qkv_bias=False, output_bias=False)).to(DEVICE, DTYPE)
    norm, _ = layers(64, 1, bias=False)
    batch = make_batch(lengths, 4, 2, head_dim, block_size=16, dtype=DTYPE)
    positions = batch.metadata.seq_lens - 1
    hidden = torch.randn(1, 64).to(DEVICE, DTYPE)
    residual = torch.randn(1, 64).to(DEVICE, DTYPE) if with_residual else None

    def run() -> tuple[torch.Tensor, ...]:
        kv_cache = batch.kv_cache.clone()
        block.attn.bind(kv_cache, TorchAttentionBackend())
        return (*block(positions, norm, hidden, residual, batch.metadata), kv_cache)

    (expected, expected_residual, expected_cache), (actual, actual_residual, cache) = run_both(monkeypatch, run)

    assert_close(actual, expected)
    assert_close(actual_residual, expected_residual)
    assert_close(cache, expected_cache)
    assert not torch.equal(cache, batch.kv_cache)  # this step's key and value went in


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_only_one_row_of_a_16_bit_weight_fuses() -> None:
    small = nn.Linear(1024, 2048, bias=False).to("cuda", DTYPE)
    large = nn.Linear(4096, 4096, bias=False).to("cuda", DTYPE)
    one_row = torch.randn(1, 1024, device="cuda", dtype=DTYPE)
    assert projection_module.fuses(one_row, small)
    assert projection_module.fuses(torch.randn(1, 4096, device="cuda", dtype=DTYPE), large)
    assert not projection_module.fuses(one_row.repeat(2, 1), small)
    assert not projection_module.fuses(one_row.float(), small.float())
    assert not projection_module.fuses(one_row.cpu(), small.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_stream_k_rows_of_a_16_bit_weight_without_bias_take_the_gemm(monkeypatch) -> None:
    monkeypatch.setattr(projection_module, "_stream_k_rows", range(128, 257))
    layer = nn.Linear(1024, 2048, bias=False).to("cuda", DTYPE)
    rows = torch.randn(256, 1024, device="cuda", dtype=DTYPE)
    assert projection_module.streams_k(rows, layer) and projection_module.streams_k(rows[:128], layer)
    assert not projection_module.streams_k(rows[:127], layer)
    assert not projection_module.streams_k(torch.cat([rows, rows[:1]]), layer)
    assert not projection_module.streams_k(rows.float(), nn.Linear(1024, 2048, bias=False).to("cuda"))
    assert not projection_module.streams_k(rows, nn.Linear(1024, 2048).to("cuda", DTYPE))
    assert not projection_module.streams_k(rows.cpu(), nn.Linear(1024, 2048, bias=False).to(dtype=DTYPE))
    assert_close(projection(layer, rows), layer(rows))
