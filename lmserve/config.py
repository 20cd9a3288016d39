"""Engine configuration: one dataclass per concern, validated once when the engine starts."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from lmserve.attention.cache_dtype import KV_CACHE_DTYPES, kv_cache_torch_dtype
from lmserve.errors import ConfigError, ModelLoadError

PROJECTION_LAYOUTS = ("out_in", "in_out")  # lmserve.worker.projection_layout says why both
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@dataclass
class ModelConfig:
    """Which model to load and how; the Hugging Face config is read from the directory in __post_init__."""

    model: str
    dtype: str = "auto"
    max_model_len: int | None = None
    load_format: str = "auto"  # "auto"/"safetensors": read the weights; "dummy": random weights
    load_seed: int = 0  # seed of the random weights of load_format "dummy"
    skip_tokenizer_init: bool = False
    hf_config: Any = field(init=False, repr=False)
    torch_dtype: torch.dtype = field(init=False)

    def __post_init__(self) -> None:
        if not os.path.isdir(self.model):
            raise ModelLoadError(f"model directory not found: {self.model!r}")
        if not os.path.isfile(os.path.join(self.model, "config.json")):
            raise ModelLoadError(f"{self.model!r} has no config.json: is it a Hugging Face model directory?")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(f"load_format must be 'auto', 'safetensors' or 'dummy', got {self.load_format!r}")
        import transformers

        try:
            self.hf_config = transformers.AutoConfig.from_pretrained(self.model)
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"cannot read the model config in {self.model!r}: {error}") from error
        self.torch_dtype = self._resolve_dtype()
        self.max_model_len = self._resolve_max_model_len()

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    @property
    def num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.hf_config, "num_key_value_heads", None) or self.hf_config.num_attention_heads

    @property
    def head_dim(self) -> int:
        config = self.hf_config
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def _resolve_dtype(self) -> torch.dtype:
        name = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        if name == "auto":
            configured = getattr(self.hf_config, "dtype", None) or getattr(self.hf_config, "torch_dtype", None)
            if isinstance(configured, torch.dtype):
                return configured if configured in _DTYPES.values() else torch.float32
            return _DTYPES.get(str(configured), torch.float32)
        if name not in _DTYPES:
            raise ConfigError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        return _DTYPES[name]

    def _resolve_max_model_len(self) -> int:
        limit = getattr(self.hf_config, "max_position_embeddings", None)
        if self.max_model_len is None:
            if limit is None:
                raise ConfigError("the model config has no max_position_embeddings: pass max_model_len")
            return limit
        if self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if limit is not None and self.max_model_len > limit:
            raise ConfigError(f"max_model_len {self.max_model_len} exceeds the model's limit of {limit}")
        return self.max_model_len


@dataclass
class CacheConfig:
    """How large the paged KV cache is and whether full blocks are shared between equal prefixes.

    The block count is `num_kv_blocks` when given, else what `kv_cache_memory_bytes` holds, else
    `gpu_memory_utilization` of the GPU's memory (after the weights) or `cpu_kv_cache_bytes` on the CPU.
    """

    block_size: int = 16
    enable_prefix_caching: bool = True
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int = 1 << 30
    # "auto": the model's dtype; "fp8" (= "fp8_e4m3"): twice the tokens, no scales (lmserve.attention.cache_dtype);
    # on an H200 not yet faster end to end than a bf16 cache (benchmarks/results/*-fp8-kv.json)
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            choices = ", ".join(KV_CACHE_DTYPES)
            raise ConfigError(f"kv_cache_dtype must be one of {choices}, got {self.kv_cache_dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class SchedulerConfig:
    """Per-step limits of continuous batching: tokens computed per step and requests running at once.

    `async_scheduling` overlaps the host's work for the next step with the device's work for this one.
    A larger token budget means fewer prefill steps, each with the same fixed launch cost (8192 is
    vLLM's server default on an H100); a smaller one bounds how long a prefill chunk stalls decodes.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    async_scheduling: bool = True

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")


@dataclass
class RunnerConfig:
    """How the model runner executes a step.

    On CUDA with the Triton backend, steps replay CUDA graphs captured at start-up: decode-only steps one
    for each of `cuda_graph_batch_sizes` (a batch pads to the next size), and other steps (prefill chunks,
    mixed batches) one for each of `cuda_graph_token_sizes` (a step pads to the next token count; an empty
    list captures none); `enforce_eager` turns them all off. The CPU always runs eagerly.
    """

    attention_backend: str = "auto"  # "torch" (reference), "triton" (GPU kernels); auto: triton on CUDA
    enforce_eager: bool = False
    # How projection weights lie in memory: "out_in" (as checkpoints hold them) or "in_out", which cuBLAS
    # serves with other kernels: faster for some models and batch sizes (lmserve.worker.projection_layout)
    projection_layout: str = "out_in"
    # [fewest, most] rows at which projections run lmserve's stream-K GEMM (lmserve.kernels.matmul) on the GPU
    # instead of cuBLAS; None: cuBLAS at every row count
    stream_k_rows: list[int] | None = None
    # None: 1, 2, 4, 8, 16, 24, 32, then every 16 up to min(max_num_seqs, 512); sizes are capped at max_num_seqs
    cuda_graph_batch_sizes: list[int] | None = None
    # None: 256, 512, then every 1024 up to max_num_batched_tokens; sizes are capped at max_num_batched_tokens
    cuda_graph_token_sizes: list[int] | None = None

    def __post_init__(self) -> None:
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ConfigError(f"attention_backend must be auto, torch or triton, got {self.attention_backend!r}")
        if self.projection_layout not in PROJECTION_LAYOUTS:
            choices = " or ".join(PROJECTION_LAYOUTS)
            raise ConfigError(f"projection_layout must be {choices}, got {self.projection_layout!r}")
        rows = self.stream_k_rows
        if rows is not None and not (len(rows) == 2 and all(isinstance(r, int) for r in rows)
                                     and 1 <= rows[0] <= rows[1]):
            raise ConfigError(f"stream_k_rows must be [fewest, most] with 1 <= fewest <= most, got {rows!r}")
        sizes = self.cuda_graph_batch_sizes
        if sizes is not None and (not sizes or any(not isinstance(s, int) or s < 1 for s in sizes)):
            raise ConfigError(
                f"cuda_graph_batch_sizes must be positive integers (enforce_eager turns graphs off), got {sizes!r}"
            )
        sizes = self.cuda_graph_token_sizes or []
        if any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ConfigError(f"cuda_graph_token_sizes must be positive integers, got {sizes!r}")


@dataclass
class EngineConfig:
    """Everything the engine needs, grouped by concern."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.runner.attention_backend == "auto":
            self.runner.attention_backend = "triton" if self.device.startswith("cuda") else "torch"

    @property
    def kv_cache_torch_dtype(self) -> torch.dtype:
        return kv_cache_torch_dtype(self.cache.kv_cache_dtype, self.model.torch_dtype)

    @classmethod
    def from_options(cls, model: str, **options: Any) -> EngineConfig:
        """Build from flat keyword options (the `LLM(...)` and CLI style); unknown names are an error."""
        groups = {ModelConfig: {}, CacheConfig: {}, SchedulerConfig: {}, RunnerConfig: {}}
        device = options.pop("device", "auto")
        for name, value in options.items():
            owner = next((g for g in groups if name in {f.name for f in dataclasses.fields(g) if f.init}), None)
            if owner is None:
                raise ConfigError(f"unknown engine option {name!r}")
            groups[owner][name] = value
        return cls(
            model=ModelConfig(model=model, **groups[ModelConfig]),
            cache=CacheConfig(**groups[CacheConfig]),
            scheduler=SchedulerConfig(**groups[SchedulerConfig]),
            runner=RunnerConfig(**groups[RunnerConfig]),
            device=device,
        )
