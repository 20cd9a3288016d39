"""How much GPU memory the KV cache may take: profile one step at the scheduler's limits, give the cache the rest.

`gpu_memory_utilization` is the fraction of the whole device this engine may use (vLLM's meaning). Out of
it come, first, what is already used once the weights are loaded (weights, the CUDA context, other
processes), then the activation peak of the largest step; the KV cache gets what is left.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lmserve.attention import Attention, AttentionBackend, AttentionMetadata
from lmserve.config import EngineConfig
from lmserve.errors import ConfigError
from lmserve.worker.input_preparation import StepInputs

_GIB = 1 << 30


@dataclass
class MemoryProfile:
    """The device memory split measured at start-up, for the KV cache size and a log line."""

    total_bytes: int
    used_bytes: int  # weights, CUDA context, other processes: total - free once the profiling pass is freed
    activation_peak_bytes: int  # the largest step's peak above the memory allocated before it
    gpu_memory_utilization: float
    kv_cache_bytes: int

    def describe(self) -> str:
        """One line: where the device's memory goes."""
        return (
            f"GPU memory: {_gib(self.total_bytes)} total; gpu_memory_utilization={self.gpu_memory_utilization:.2f} "
            f"allows {_gib(self.total_bytes * self.gpu_memory_utilization)}: weights and other "
            f"{_gib(self.used_bytes)}, activation peak {_gib(self.activation_peak_bytes)}, "
            f"KV cache {_gib(self.kv_cache_bytes)}"
        )


def kv_cache_budget(
    total_bytes: int,
    used_bytes: int,
    activation_peak_bytes: int,
    gpu_memory_utilization: float,
    block_bytes: int,
) -> int:
    """Bytes left for the KV cache: `total * utilization - used - activation peak`.

    Raises ConfigError, naming the numbers and what to change, when that is not even one block.
    """
    allowed = int(total_bytes * gpu_memory_utilization)
    budget = allowed - used_bytes - activation_peak_bytes
    if budget < max(block_bytes, 1):
        raise ConfigError(
            f"the model does not fit in GPU memory: gpu_memory_utilization={gpu_memory_utilization:.2f} allows "
            f"{_gib(allowed)} of the device's {_gib(total_bytes)}; the weights and other memory use "
            f"{_gib(used_bytes)} and the profiling pass peaked at {_gib(activation_peak_bytes)} of activations, "
            f"which leaves {_gib(budget)} for the KV cache, less than one block ({block_bytes} bytes). "
            "Raise --gpu-memory-utilization, lower --max-num-batched-tokens, --max-num-seqs or --max-model-len, "
            "or use a smaller model."
        )
    return budget


def profile_forward_memory(run_forward: Callable[[], None], device: torch.device) -> int:
    """Run `run_forward` once; return its peak allocated bytes above what was allocated before it.

    On CUDA the caching allocator's peak counter measures this; other devices have no such counter,
    so the callable runs (the same code path everywhere) and the result is 0.
    """
    if device.type != "cuda":
        with torch.inference_mode():
            run_forward()
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        run_forward()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def profile_kv_cache_memory(
    run_forward: Callable[[], None], device: torch.device, gpu_memory_utilization: float, block_bytes: int
) -> MemoryProfile:
    """Profile `run_forward` on a CUDA device, then size the KV cache from what the device reports free.

    Freed activations go back to the driver first, so `used` counts what stays: weights, the CUDA
    context, library workspaces the pass created, and other processes.
    """
    if device.type != "cuda":
        raise ValueError(f"memory profiling needs a CUDA device, got {device}")
    activation_peak = profile_forward_memory(run_forward, device)
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    budget = kv_cache_budget(total, used, activation_peak, gpu_memory_utilization, block_bytes)
    return MemoryProfile(total, used, activation_peak, gpu_memory_utilization, budget)


def profiling_pass(
    model: nn.Module,
    backend: AttentionBackend,
    config: EngineConfig,
    device: torch.device,
    sample: Callable[[torch.Tensor], object] | None = None,
) -> Callable[[], None]:
    """The busiest step the engine can run, as a callable for `profile_forward_memory`.

    An eager forward over `max_num_batched_tokens` tokens (see `profiling_inputs`) on a scratch one-block
    cache, then logits for `max_num_seqs` rows while the hidden states are still alive, as in a real step.
    `sample`, if given, gets those logits, so the caller can add its sampler's peak.
    """
    scheduler = config.scheduler
    block_size = config.cache.block_size

    def run() -> None:
        inputs = profiling_inputs(
            scheduler.max_num_batched_tokens, scheduler.max_num_seqs, config.model.max_model_len, block_size, device
        )
        with scratch_kv_cache(model, backend, block_size, config.kv_cache_torch_dtype, device):
            hidden = model(inputs.input_ids, inputs.positions, inputs.metadata)
        rows = torch.arange(scheduler.max_num_seqs, device=device) % hidden.shape[0]
        logits = model.compute_logits(hidden[rows])
        if sample is not None:
            sample(logits)

    return run


def profiling_inputs(
    num_tokens: int, max_num_seqs: int, max_model_len: int, block_size: int, device: torch.device
) -> StepInputs:
    """The step with the largest activations the scheduler can make, laid out for a one-block cache.

    `num_tokens` new tokens (at most what `max_num_seqs` requests of `max_model_len` hold) split evenly
    over as few requests as `max_model_len` allows, each chunk ending a full `max_model_len` context: the
    torch backend's gathered context and mask grow with it. Every block table entry is block 0, so the
    keys read are garbage but the memory touched is that of a real step.
    """
    num_tokens = min(num_tokens, max_num_seqs * max_model_len)
    num_requests = -(-num_tokens // max_model_len)
    base, extra = divmod(num_tokens, num_requests)
    query_lens = torch.full((num_requests,), base, dtype=torch.int64)
    query_lens[:extra] += 1
    query_start_loc = torch.zeros(num_requests + 1, dtype=torch.int64)
    torch.cumsum(query_lens, dim=0, out=query_start_loc[1:])
    seq_lens = torch.full((num_requests,), max_model_len, dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(num_requests), query_lens)
    positions = torch.arange(num_tokens) - query_start_loc[owner] + (seq_lens - query_lens)[owner]
    metadata = AttentionMetadata(
        slot_mapping=(positions % block_size).to(device),
        block_tables=torch.zeros(num_requests, -(-max_model_len // block_size), dtype=torch.int64, device=device),
        seq_lens=seq_lens.to(device),
        query_start_loc=query_start_loc.to(device),
        max_query_len=base + (extra > 0),
        max_seq_len=max_model_len,
    )
    input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    return StepInputs(input_ids=input_ids, positions=positions.to(device), metadata=metadata)


@contextmanager
def scratch_kv_cache(
    model: nn.Module, backend: AttentionBackend, block_size: int, dtype: torch.dtype, device: torch.device
) -> Iterator[None]:
    """Bind a one-block cache to every attention layer for the duration, then restore their bindings.

    The real cache is sized from the profile, so it cannot exist yet; a forward only needs somewhere to
    write keys and values.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    saved = [(layer.kv_cache, layer.backend) for layer in layers]
    try:
        for layer in layers:
            shape = (2, 1, block_size, layer.num_kv_heads, layer.head_dim)
            layer.bind(torch.zeros(shape, dtype=dtype, device=device), backend)
        yield
    finally:
        for layer, (kv_cache, layer_backend) in zip(layers, saved, strict=True):
            layer.kv_cache, layer.backend = kv_cache, layer_backend


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / _GIB:.2f} GiB"
