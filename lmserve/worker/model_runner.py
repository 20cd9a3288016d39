"""Runs one scheduled step: prepare inputs, run the model over the flat batch, sample, take logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.attention import Attention, AttentionBackend, TorchAttentionBackend
from lmserve.config import EngineConfig
from lmserve.engine.scheduler import SchedulerOutput
from lmserve.errors import ConfigError
from lmserve.models import load_model
from lmserve.outputs import PositionLogprobs
from lmserve.sample import Sampler, SamplingMetadata, compute_logprobs, to_position_logprobs
from lmserve.worker.cuda_graphs import DecodeGraphs, capture_sizes
from lmserve.worker.input_preparation import StepLayout, layout_step, to_device


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


class ModelRunner:
    """Holds the model, its paged KV cache and the sampler; keeps each seeded request's generator.

    On CUDA with the Triton backend, decode-only steps replay CUDA graphs captured when the cache is
    allocated (unless `enforce_eager`); every other step runs the model eagerly.
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
        self.backend = _attention_backend(config.runner.attention_backend)
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.kv_caches: list[torch.Tensor] = []
        self.decode_graphs: DecodeGraphs | None = None

    @property
    def kv_cache_block_bytes(self) -> int:
        """Bytes of one block across all layers (keys and values)."""
        model = self.config.model
        element_size = torch.tensor([], dtype=model.torch_dtype).element_size()
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
                free, total = torch.cuda.mem_get_info(self.device)
                budget = int(free - total * (1.0 - cache.gpu_memory_utilization))
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

    @property
    def uses_cuda_graphs(self) -> bool:
        """Graphs need a GPU and the Triton backend, whose launches take no per-step host values."""
        runner = self.config.runner
        return not runner.enforce_eager and self.device.type == "cuda" and runner.attention_backend == "triton"

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Preallocate every layer's cache (zeroed, so unwritten slots are finite) and bind it; then
        capture the decode CUDA graphs, which hold the cache's addresses."""
        model = self.config.model
        block_size = self.config.cache.block_size
        shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.decode_graphs = None
        self.kv_caches = [torch.zeros(shape, dtype=model.torch_dtype, device=self.device) for _ in layers]
        for layer, kv_cache in zip(layers, self.kv_caches, strict=True):
            layer.bind(kv_cache, self.backend)
        if self.uses_cuda_graphs:
            sizes = capture_sizes(self.config.runner.cuda_graph_batch_sizes, self.config.scheduler.max_num_seqs)
            max_blocks_per_seq = -(-model.max_model_len // block_size)
            self.decode_graphs = DecodeGraphs(self.model, sizes, max_blocks_per_seq, block_size, self.device)
            self.decode_graphs.capture()

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in batch.finished_request_ids:
            self.generators.pop(request_id, None)
        num_requests = len(batch.requests)
        if num_requests == 0:
            return ModelRunnerOutput([], [], [])
        layout = layout_step(batch, self.config.cache.block_size)
        hidden = self._forward(layout)

        sampled: list[int | None] = [None] * num_requests
        logprobs: list[PositionLogprobs | None] = [None] * num_requests
        if layout.sampling_rows:
            self._sample(batch, layout, hidden, sampled, logprobs)
        prompt_logprobs = [self._prompt_logprobs(batch, layout, hidden, i) for i in range(num_requests)]
        return ModelRunnerOutput(sampled, logprobs, prompt_logprobs)

    def _forward(self, layout: StepLayout) -> torch.Tensor:
        """Hidden states [num_tokens, hidden]: a graph replay for decode-only steps, else an eager forward."""
        if self.decode_graphs is not None and self.decode_graphs.can_run(layout):
            return self.decode_graphs.run(layout)
        inputs = to_device(layout, self.device)
        return self.model(inputs.input_ids, inputs.positions, inputs.metadata)

    def _sample(
        self,
        batch: SchedulerOutput,
        layout: StepLayout,
        hidden: torch.Tensor,
        sampled: list[int | None],
        logprobs: list[PositionLogprobs | None],
    ) -> None:
        requests = [batch.requests[i] for i in layout.sampling_rows]
        if not layout.every_token_samples:
            hidden = hidden[torch.from_numpy(layout.sample_indices).to(self.device, non_blocking=True)]
        logits = self.model.compute_logits(hidden)
        metadata = SamplingMetadata.build(
            params=[r.sampling_params for r in requests],
            prompt_token_ids=[r.prompt_token_ids for r in requests],
            output_token_ids=[r.output_token_ids for r in requests],
            eos_token_ids=[r.eos_token_ids for r in requests],
            generators=[self._generator(r.request_id, r.sampling_params.seed) for r in requests],
            vocab_size=logits.shape[-1],
            device=self.device,
        )
        output = self.sampler(logits, metadata)
        token_ids = output.sampled_token_ids.tolist()
        wanted = [r.sampling_params.logprobs for r in requests]
        positions = None
        if output.logprobs is not None:
            positions = to_position_logprobs(output.logprobs, [n or 0 for n in wanted])
        for row, index in enumerate(layout.sampling_rows):
            sampled[index] = token_ids[row]
            if positions is not None and wanted[row] is not None:
                logprobs[index] = positions[row]

    def _prompt_logprobs(
        self, batch: SchedulerOutput, layout: StepLayout, hidden: torch.Tensor, index: int
    ) -> PromptLogprobsChunk | None:
        """Logprobs of the prompt tokens this chunk predicts: position p's logits score token p + 1."""
        request = batch.requests[index]
        num_top = request.sampling_params.prompt_logprobs
        start = request.num_computed_tokens
        end = min(start + batch.num_new_tokens[index], request.num_prompt_tokens - 1)
        if num_top is None or start >= end:
            return None
        first_row = int(layout.query_start_loc[index])
        logits = self.model.compute_logits(hidden[first_row : first_row + end - start])
        targets = torch.tensor(request.token_ids[start + 1 : end + 1], device=self.device)
        tensors = compute_logprobs(torch.log_softmax(logits, dim=-1), targets, num_top)
        return PromptLogprobsChunk(start + 1, to_position_logprobs(tensors, [num_top] * (end - start)))

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        generator = self.generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self.generators[request_id] = generator
        return generator


def _attention_backend(name: str) -> AttentionBackend:
    if name == "triton":
        from lmserve.attention.triton_backend import TritonAttentionBackend  # needs triton: import on demand

        return TritonAttentionBackend()
    return TorchAttentionBackend()
