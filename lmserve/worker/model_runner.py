"""Runs one scheduled step: prepare inputs, run the model over the flat batch, sample, take logprobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from lmserve.attention import Attention, AttentionBackend, TorchAttentionBackend
from lmserve.attention.cache_dtype import FLOAT8_MIN_CAPABILITY
from lmserve.config import EngineConfig
from lmserve.engine.scheduler import SchedulerOutput
from lmserve.errors import ConfigError
from lmserve.models import load_model
from lmserve.models.layers.projection import use_stream_k
from lmserve.outputs import PositionLogprobs
from lmserve.sample import LogprobsTensors, Sampler, SamplingMetadata, compute_logprobs, to_position_logprobs
from lmserve.sampling_params import SamplingParams
from lmserve.worker.cuda_graphs import StepGraphs, capture_sizes, token_capture_sizes
from lmserve.worker.input_preparation import BlockTableRows, StepLayout, layout_step, to_device
from lmserve.worker.memory import profile_kv_cache_memory, profiling_pass
from lmserve.worker.penalty_history import PenaltyHistory
from lmserve.worker.projection_layout import apply_projection_layout
from lmserve.worker.staging import HostToDevice, start_copy_to_host

logger = logging.getLogger(__name__)


@dataclass
class PromptLogprobsChunk:
    """Logprobs of prompt tokens `first_index`, `first_index + 1`, ... computed in one step."""

    first_index: int
    positions: list[PositionLogprobs]


@dataclass
class ModelRunnerOutput:
    """Per scheduled request (in batch order): the sampled token (None mid-prefill) and logprobs."""

    sampled_token_ids: list[int | None]
    logprobs: list[PositionLogprobs | None]
    prompt_logprobs: list[PromptLogprobsChunk | None]


@dataclass
class _PromptLogprobsPart:
    index: int  # of the request in the batch
    first_index: int
    num_top: int
    tensors: LogprobsTensors  # on the host, being copied


@dataclass
class LaunchedStep:
    """A step whose work is queued on the device and whose results are being copied to the host.

    `result()` waits for that copy only, not for steps launched after this one.
    """

    num_requests: int
    sampling_rows: list[int] = field(default_factory=list)
    num_logprobs: list[int | None] = field(default_factory=list)  # per sampling row
    sampled: torch.Tensor | None = None  # [len(sampling_rows)] on the host
    logprobs: LogprobsTensors | None = None
    prompt_logprobs: list[_PromptLogprobsPart] = field(default_factory=list)
    copied: torch.cuda.Event | None = None

    def result(self) -> ModelRunnerOutput:
        if self.copied is not None:
            self.copied.synchronize()
        sampled: list[int | None] = [None] * self.num_requests
        logprobs: list[PositionLogprobs | None] = [None] * self.num_requests
        if self.sampled is not None:
            for index, token in zip(self.sampling_rows, self.sampled.tolist(), strict=True):
                sampled[index] = token
        if self.logprobs is not None:
            positions = to_position_logprobs(self.logprobs, [n or 0 for n in self.num_logprobs])
            for index, wanted, position in zip(self.sampling_rows, self.num_logprobs, positions, strict=True):
                if wanted is not None:
                    logprobs[index] = position
        prompt_logprobs: list[PromptLogprobsChunk | None] = [None] * self.num_requests
        for part in self.prompt_logprobs:
            rows = part.tensors.ranks.shape[0]
            positions = to_position_logprobs(part.tensors, [part.num_top] * rows)
            prompt_logprobs[part.index] = PromptLogprobsChunk(part.first_index, positions)
        return ModelRunnerOutput(sampled, logprobs, prompt_logprobs)


class ModelRunner:
    """Holds the model, its paged KV cache, the sampler, and the per-request state kept between steps (block
    table rows, the penalties' seen tokens).

    `launch` queues a step's work without waiting for the device, so the engine can prepare the next
    step meanwhile. A token sampled by one step is fed to the next on the device: the host need not know
    it yet. On CUDA with the Triton backend, steps replay CUDA graphs captured when the cache is allocated
    (unless `enforce_eager`): decode-only ones by batch size, others by token count; a step no graph
    holds runs the model eagerly.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        model_config = config.model
        self.model = load_model(
            model_config.model,
            model_config.hf_config,
            model_config.torch_dtype,
            self.device,
            model_config.load_format,
            model_config.load_seed,
        )
        apply_projection_layout(self.model, config.runner.projection_layout)
        stream_k_rows = config.runner.stream_k_rows
        use_stream_k(range(stream_k_rows[0], stream_k_rows[1] + 1) if stream_k_rows else range(0))
        if stream_k_rows and self.device.type == "cuda":
            from lmserve.kernels.matmul import reserve_workspace  # needs triton: import on demand

            reserve_workspace(self.device)  # before the memory profile and graph capture
        self.backend = _attention_backend(config.runner.attention_backend)
        _check_float8_cache_support(config, self.device)
        self.sampler = Sampler()
        self.staging = HostToDevice(self.device)
        self.kv_caches: list[torch.Tensor] = []
        self.graphs: StepGraphs | None = None
        self.block_tables = BlockTableRows(num_rows=config.scheduler.max_num_seqs)
        # Allocated now, whether or not a request will have a penalty, so that the memory profile counts it
        # as memory that stays (about 160 MB for a 128k vocabulary and 256 rows).
        self.penalty_history = PenaltyHistory(model_config.vocab_size, config.scheduler.max_num_seqs, self.device,
                                              self.staging)
        # The tokens the last launched step sampled (on the device), and each sampling request's row.
        self._last_sampled: torch.Tensor | None = None
        self._last_sample_rows: dict[str, int] = {}

    @property
    def kv_cache_block_bytes(self) -> int:
        """Bytes of one block across all layers (keys and values)."""
        model = self.config.model
        element_size = self.config.kv_cache_torch_dtype.itemsize
        per_layer = 2 * self.config.cache.block_size * model.num_kv_heads * model.head_dim * element_size
        return per_layer * model.num_layers

    def determine_num_blocks(self) -> int:
        """Blocks that fit the configured budget, capped at what `max_num_seqs` full sequences need."""
        cache = self.config.cache
        model = self.config.model
        blocks_per_seq = -(-model.max_model_len // cache.block_size)
        if cache.num_kv_blocks is not None:
            num_blocks = cache.num_kv_blocks
        else:
            budget = cache.kv_cache_memory_bytes
            if budget is None and self.device.type == "cuda":
                # Profile the busiest step before the cache exists; the cache gets the rest of the allowed memory.
                step = profiling_pass(self.model, self.backend, self.config, self.device, self._profile_sampler)
                profile = profile_kv_cache_memory(
                    step, self.device, cache.gpu_memory_utilization, self.kv_cache_block_bytes
                )
                logger.info(profile.describe())
                budget = profile.kv_cache_bytes
            elif budget is None:
                budget = cache.cpu_kv_cache_bytes
            num_blocks = budget // self.kv_cache_block_bytes
            num_blocks = min(num_blocks, blocks_per_seq * self.config.scheduler.max_num_seqs + 1)
        if num_blocks < blocks_per_seq:
            raise ConfigError(
                f"the KV cache holds {num_blocks} blocks of {cache.block_size} tokens, fewer than one sequence "
                f"of max_model_len={model.max_model_len} needs ({blocks_per_seq}); "
                "give it more memory or lower max_model_len"
            )
        return num_blocks

    def _profile_sampler(self, logits: torch.Tensor) -> None:
        """Sample every row with each costly option on, so the memory profile holds the sampler's peak; then
        each other way the sampler's kernels can run (greedy or at a temperature, on the model's dtype or,
        after logit changes, on float32), so that none compiles while serving."""
        rows = logits.shape[0]
        costly = SamplingParams(
            temperature=0.8, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.1, frequency_penalty=0.1,
            presence_penalty=0.1, logprobs=20,
        )
        kernel_variants = [
            SamplingParams(temperature=temperature, presence_penalty=penalty)
            for temperature in (0.0, 0.8, 1.0) for penalty in (0.0, 0.1)
        ]
        request_ids = [f"profile-{row}" for row in range(rows)]
        for params in (costly, *kernel_variants):
            batch = [params] * rows
            metadata = SamplingMetadata.build(
                params=batch,
                num_output_tokens=[1] * rows,
                eos_token_ids=[()] * rows,
                vocab_size=logits.shape[-1],
                penalties=self.penalty_history.penalties(request_ids, batch, [[0]] * rows),
            ).to_device(self.staging)
            self.sampler(logits, metadata)
        self.penalty_history.release(request_ids)

    @property
    def uses_cuda_graphs(self) -> bool:
        """Graphs need a GPU and the Triton backend, whose launches take no per-step host values."""
        runner = self.config.runner
        return not runner.enforce_eager and self.device.type == "cuda" and runner.attention_backend == "triton"

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Preallocate every layer's cache (zeroed, so unwritten slots are finite) and bind it; then
        capture the CUDA graphs, which hold the cache's addresses."""
        model = self.config.model
        block_size = self.config.cache.block_size
        shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.graphs = None
        dtype = self.config.kv_cache_torch_dtype
        self.kv_caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in layers]
        for layer, kv_cache in zip(layers, self.kv_caches, strict=True):
            layer.bind(kv_cache, self.backend)
        if self.uses_cuda_graphs:
            runner, scheduler = self.config.runner, self.config.scheduler
            batch_sizes = capture_sizes(runner.cuda_graph_batch_sizes, scheduler.max_num_seqs)
            token_sizes = token_capture_sizes(runner.cuda_graph_token_sizes, scheduler.max_num_batched_tokens)
            max_blocks_per_seq = -(-model.max_model_len // block_size)
            self.graphs = StepGraphs(self.model, batch_sizes, token_sizes, scheduler.max_num_seqs, max_blocks_per_seq,
                                     block_size, self.device)
            self.graphs.capture()

    def execute(self, batch: SchedulerOutput) -> ModelRunnerOutput:
        """Run a step and wait for its results."""
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: SchedulerOutput) -> LaunchedStep:
        """Queue the step's forward pass, sampling and result copies; return without waiting for them."""
        self.block_tables.release(batch.finished_request_ids)
        self.penalty_history.release(batch.finished_request_ids)
        step = LaunchedStep(num_requests=len(batch.requests))
        if not batch.requests:
            return step
        layout = layout_step(batch, self.config.cache.block_size, self.block_tables)
        hidden = self._forward(layout)
        self._last_sample_rows = {}
        if layout.sampling_rows:
            self._sample(batch, layout, hidden, step)
        for index in range(len(batch.requests)):
            self._prompt_logprobs(batch, layout, hidden, index, step)
        if self.device.type == "cuda":
            step.copied = torch.cuda.Event()
            step.copied.record()
        return step

    def _forward(self, layout: StepLayout) -> torch.Tensor:
        """Hidden states [num_tokens, hidden]: a graph replay when one holds the step, else an eager forward."""
        padded = None if self.graphs is None else self.graphs.pad(layout)
        inputs = to_device(layout if padded is None else padded, self.staging)
        if layout.pending_request_ids:
            rows = np.array([self._last_sample_rows[request_id] for request_id in layout.pending_request_ids])
            destinations, sources = self.staging.move([layout.pending_indices, rows])
            inputs.input_ids[destinations] = self._last_sampled[sources]
        if padded is not None:
            return self.graphs.run(inputs)[: layout.num_tokens]
        return self.model(inputs.input_ids, inputs.positions, inputs.metadata)

    def _sample(self, batch: SchedulerOutput, layout: StepLayout, hidden: torch.Tensor, step: LaunchedStep) -> None:
        requests = [batch.requests[i] for i in layout.sampling_rows]
        if not layout.every_token_samples:
            (indices,) = self.staging.move([layout.sample_indices])
            hidden = hidden[indices]
        logits = self.model.compute_logits(hidden)
        params = [r.sampling_params for r in requests]
        penalties = self.penalty_history.penalties([r.request_id for r in requests], params,
                                                   [r.prompt_token_ids for r in requests])
        metadata = SamplingMetadata.build(
            params=params,
            # The token sampled now follows every computed one: count the outputs before it.
            num_output_tokens=[
                batch.num_computed_tokens[i] + batch.num_new_tokens[i] - batch.requests[i].num_prompt_tokens
                for i in layout.sampling_rows
            ],
            eos_token_ids=[r.eos_token_ids for r in requests],
            vocab_size=logits.shape[-1],
            penalties=penalties,
        ).to_device(self.staging)
        output = self.sampler(logits, metadata)
        if metadata.penalties is not None:
            self.penalty_history.record(metadata.penalties, output.sampled_token_ids)
        self._last_sampled = output.sampled_token_ids
        self._last_sample_rows = {r.request_id: row for row, r in enumerate(requests)}
        step.sampling_rows = layout.sampling_rows
        step.num_logprobs = [r.sampling_params.logprobs for r in requests]
        step.sampled = start_copy_to_host(output.sampled_token_ids)
        if output.logprobs is not None:
            step.logprobs = output.logprobs.to_host()

    def _prompt_logprobs(
        self, batch: SchedulerOutput, layout: StepLayout, hidden: torch.Tensor, index: int, step: LaunchedStep
    ) -> None:
        """Logprobs of the prompt tokens this chunk predicts: position p's logits score token p + 1."""
        request = batch.requests[index]
        num_top = request.sampling_params.prompt_logprobs
        start = batch.num_computed_tokens[index]
        end = min(start + batch.num_new_tokens[index], request.num_prompt_tokens - 1)
        if num_top is None or start >= end:
            return
        first_row = int(layout.query_start_loc[index])
        logits = self.model.compute_logits(hidden[first_row : first_row + end - start])
        (targets,) = self.staging.move([np.asarray(request.token_ids[start + 1 : end + 1], dtype=np.int64)])
        tensors = compute_logprobs(torch.log_softmax(logits.float(), dim=-1), targets, num_top)
        step.prompt_logprobs.append(_PromptLogprobsPart(index, start + 1, num_top, tensors.to_host()))


def _check_float8_cache_support(config: EngineConfig, device: torch.device) -> None:
    if config.kv_cache_torch_dtype != torch.float8_e4m3fn or device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < FLOAT8_MIN_CAPABILITY:
        raise ConfigError(
            f"kv_cache_dtype {config.cache.kv_cache_dtype!r} needs a GPU of compute capability "
            f"{'.'.join(map(str, FLOAT8_MIN_CAPABILITY))} or newer; this one has {capability[0]}.{capability[1]}"
        )


def _attention_backend(name: str) -> AttentionBackend:
    if name == "triton":
        from lmserve.attention.triton_backend import TritonAttentionBackend  # needs triton: import on demand

        return TritonAttentionBackend()
    return TorchAttentionBackend()
