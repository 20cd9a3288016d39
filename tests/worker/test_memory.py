"""KV cache sizing from a memory profile: the budget arithmetic, its error, and the profiling pass.

Everything but the tests marked `gpu` runs on the CPU, where nothing can be measured but the profiling
pass still runs through the model; the `gpu` tests measure real peaks and need a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmserve.attention import Attention, AttentionBackend, TorchAttentionBackend
from lmserve.config import EngineConfig
from lmserve.errors import ConfigError
from lmserve.models import load_model
from lmserve.worker.memory import (
    MemoryProfile,
    kv_cache_budget,
    profile_forward_memory,
    profile_kv_cache_memory,
    profiling_inputs,
    profiling_pass,
    scratch_kv_cache,
)

GIB = 1 << 30
CPU = torch.device("cpu")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def load_tiny(model_dir, device: str = "cpu", **options) -> tuple[nn.Module, EngineConfig]:
    """A tiny model loaded as the model runner loads it, with its engine config."""
    config = EngineConfig.from_options(str(model_dir), dtype="float32", device=device, **options)
    m = config.model
    return load_model(m.model, m.hf_config, m.torch_dtype, torch.device(device), m.load_format, m.load_seed), config


def attention_layers(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def backend_named(name: str) -> AttentionBackend:
    if name == "triton":
        from lmserve.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    return TorchAttentionBackend()


def test_the_cache_gets_the_allowed_fraction_less_what_is_used_and_the_activation_peak():
    budget = kv_cache_budget(
        total_bytes=80 * GIB,
        used_bytes=20 * GIB,
        activation_peak_bytes=4 * GIB,
        gpu_memory_utilization=0.5,
        block_bytes=1 << 20,
    )
    assert budget == 40 * GIB - 20 * GIB - 4 * GIB


def test_exactly_one_block_is_enough():
    assert kv_cache_budget(1000, 400, 50, 0.5, block_bytes=50) == 50
    with pytest.raises(ConfigError):
        kv_cache_budget(1000, 400, 51, 0.5, block_bytes=50)


def test_a_model_that_does_not_fit_names_the_numbers_and_what_to_change():
    with pytest.raises(ConfigError) as error:
        kv_cache_budget(80 * GIB, 70 * GIB, 3 * GIB, 0.9, block_bytes=1 << 20)
    message = str(error.value)
    for number in ("80.00 GiB", "72.00 GiB", "70.00 GiB", "3.00 GiB", "-1.00 GiB", "gpu_memory_utilization=0.90"):
        assert number in message
    for flag in ("--gpu-memory-utilization", "--max-num-batched-tokens", "--max-model-len", "smaller model"):
        assert flag in message


def test_describe_gives_each_share_in_gib():
    profile = MemoryProfile(80 * GIB, 16 * GIB, 2 * GIB, 0.9, 54 * GIB)
    line = profile.describe()
    for part in (
        "80.00 GiB total",
        "gpu_memory_utilization=0.90",
        "weights and other 16.00 GiB",
        "activation peak 2.00 GiB",
        "KV cache 54.00 GiB",
    ):
        assert part in line


def test_on_the_cpu_the_forward_runs_once_and_measures_nothing(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU profile must not call CUDA")

    for name in ("synchronize", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    calls = []
    assert profile_forward_memory(lambda: calls.append(torch.is_inference_mode_enabled()), torch.device("cpu")) == 0
    assert calls == [True]  # inference mode, as in a real step: no autograd state kept


def test_sizing_the_cache_from_a_profile_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        profile_kv_cache_memory(lambda: None, torch.device("cpu"), 0.9, block_bytes=1)


def test_the_profiling_inputs_fill_max_model_len_contexts_with_the_token_budget():
    inputs = profiling_inputs(num_tokens=100, max_num_seqs=8, max_model_len=40, block_size=16, device=CPU)
    metadata = inputs.metadata
    assert inputs.input_ids.shape == (100,)
    assert metadata.query_start_loc.tolist() == [0, 34, 67, 100]  # three requests: as few as 40 tokens allow
    assert metadata.seq_lens.tolist() == [40, 40, 40]
    assert (metadata.max_query_len, metadata.max_seq_len) == (34, 40)
    assert inputs.positions[:34].tolist() == list(range(6, 40))  # each chunk ends its context
    assert inputs.positions[67:].tolist() == list(range(7, 40))
    assert int(metadata.slot_mapping.max()) < 16  # every token writes into block 0 of a one-block cache
    assert metadata.block_tables.shape == (3, 3) and not metadata.block_tables.any()


def test_the_profiling_inputs_hold_no_more_than_max_num_seqs_full_requests():
    inputs = profiling_inputs(num_tokens=2048, max_num_seqs=2, max_model_len=64, block_size=16, device=CPU)
    assert inputs.input_ids.shape == (128,)
    assert inputs.metadata.seq_lens.tolist() == [64, 64]


def test_the_scratch_cache_is_bound_only_during_the_block(tiny_models):
    model, _ = load_tiny(tiny_models.get("llama"))
    backend = TorchAttentionBackend()
    layers = attention_layers(model)
    with scratch_kv_cache(model, backend, 16, torch.float32, CPU):
        assert all(layer.kv_cache.shape == (2, 1, 16, 2, 16) and layer.backend is backend for layer in layers)
    assert all(layer.kv_cache is None and layer.backend is None for layer in layers)


@pytest.mark.parametrize("attention_backend", ["torch", "triton"])
def test_the_profiling_pass_runs_the_model_then_samples_from_max_num_seqs_rows(tiny_models, attention_backend):
    # Without a GPU the triton case runs the kernels in the interpreter; keep the step small.
    model, config = load_tiny(
        tiny_models.get("qwen3"), device=DEVICE, max_model_len=48, max_num_batched_tokens=64, max_num_seqs=5
    )
    device = torch.device(DEVICE)
    sampled = []
    peak = profile_forward_memory(
        profiling_pass(model, backend_named(attention_backend), config, device, sampled.append), device
    )
    assert (peak == 0) if DEVICE == "cpu" else (peak > 0)
    assert len(sampled) == 1 and sampled[0].shape == (5, config.model.vocab_size)
    assert torch.isfinite(sampled[0]).all()
    assert all(layer.kv_cache is None and layer.backend is None for layer in attention_layers(model))


@pytest.mark.gpu
@needs_cuda
def test_the_peak_counts_what_the_forward_allocates_beyond_what_was_there():
    device = torch.device("cuda")
    resident = torch.empty(256 << 20, dtype=torch.uint8, device=device)  # allocated before: not activation
    size = 64 << 20

    def forward() -> None:
        scratch = torch.ones(size, dtype=torch.uint8, device=device)
        assert int(scratch[0]) == 1

    peak = profile_forward_memory(forward, device)
    assert size <= peak < size + (8 << 20)
    del resident


@pytest.mark.gpu
@needs_cuda
def test_a_tiny_model_on_the_gpu_gets_a_cache_budget_below_the_allowed_fraction(tiny_models):
    model, config = load_tiny(tiny_models.get("qwen3"), device="cuda", max_num_batched_tokens=512, max_num_seqs=64)
    device = torch.device("cuda")
    run = profiling_pass(model, backend_named("triton"), config, device)
    profile = profile_kv_cache_memory(run, device, 0.5, block_bytes=1 << 20)
    free, total = torch.cuda.mem_get_info()
    assert profile.total_bytes == total
    assert profile.activation_peak_bytes > 0
    assert profile.kv_cache_bytes == int(total * 0.5) - profile.used_bytes - profile.activation_peak_bytes
    assert abs(profile.used_bytes - (total - free)) < 64 << 20  # the pass's freed memory went back to the driver
    assert all(layer.kv_cache is None for layer in attention_layers(model))
