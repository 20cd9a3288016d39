"""Step CUDA graphs: the capture ladders, the padded static inputs, and graph outputs equal to eager ones.

The ladder and padding tests run anywhere (the padded forward runs the Triton kernels in the interpreter
on a CPU); the tests marked `gpu` capture real graphs and need a CUDA device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lmserve import LLM, SamplingParams
from lmserve.config import EngineConfig, RunnerConfig
from lmserve.engine.scheduler import SchedulerOutput
from lmserve.errors import ConfigError
from lmserve.worker.cuda_graphs import StepGraphs, capture_sizes, padded_size, token_capture_sizes
from lmserve.worker.input_preparation import StepLayout, layout_step, to_device
from lmserve.worker.model_runner import ModelRunner
from lmserve.worker.staging import HostToDevice
from tests.engine.test_scheduler import make_batch, make_request

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_default_ladder_is_dense_for_small_batches_and_ends_at_max_num_seqs():
    assert capture_sizes(None, 256) == [1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16)]
    assert capture_sizes(None, 100)[-3:] == [80, 96, 100]  # the largest batch possible gets a graph too
    assert capture_sizes(None, 3) == [1, 2, 3]
    assert capture_sizes(None, 4096)[-1] == 512


def test_configured_sizes_are_sorted_deduplicated_and_capped():
    assert capture_sizes([64, 1, 8, 8], max_num_seqs=32) == [1, 8, 32]


def test_token_sizes_are_sorted_deduplicated_and_capped_at_the_step_budget():
    assert token_capture_sizes([64, 9000, 64], 8192) == [64, 8192]
    assert token_capture_sizes([], 8192) == []


def test_default_token_ladder_steps_by_1024_and_ends_at_the_step_budget():
    assert token_capture_sizes(None, 8192) == [256, 512, *range(1024, 8193, 1024)]
    assert token_capture_sizes(None, 3000) == [256, 512, 1024, 2048, 3000]
    assert token_capture_sizes(None, 300) == [256, 300]
    assert token_capture_sizes(None, 64) == [64]


def test_a_batch_pads_to_the_next_captured_size():
    sizes = [1, 2, 4, 8, 16]
    assert [padded_size(sizes, n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 2, 4, 4, 8, 8, 16, 16, None]


def decode_step(contexts: list[list[int]], block_ids: list[list[int]]) -> SchedulerOutput:
    """Each request has its whole context but the last token cached and computes that one token."""
    requests = [make_request(f"r{i}", tokens) for i, tokens in enumerate(contexts)]
    for request in requests:
        request.num_computed_tokens = request.num_tokens - 1
    return make_batch(requests, [1] * len(requests), block_ids)


def test_a_decode_step_is_padded_with_rows_that_write_nothing():
    step = layout_step(decode_step([[7, 8, 9], [4, 5, 6, 7, 8]], [[3], [6, 2]]), block_size=4).padded(4)
    assert step.token_ids.tolist() == [9, 8, 0, 0]
    assert step.positions.tolist() == [2, 4, 0, 0]
    assert step.slot_mapping.tolist() == [3 * 4 + 2, 2 * 4 + 0, -1, -1]
    assert step.seq_lens.tolist() == [3, 5, 1, 1]
    assert step.block_tables.tolist() == [[3, 0], [6, 2], [0, 0], [0, 0]]
    assert step.query_start_loc.tolist() == [0, 1, 2, 3, 4]


def test_a_mixed_step_is_padded_with_one_context_that_writes_nothing():
    prefill = make_request("p", [1, 2, 3])
    step = layout_step(make_batch([prefill], [3], [[5]]), block_size=4)
    padded = step.padded_mixed(8, 4, max_context=16)
    assert padded.token_ids.tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert padded.positions.tolist() == [0, 1, 2, 0, 0, 0, 0, 0]
    assert padded.slot_mapping.tolist() == [20, 21, 22, -1, -1, -1, -1, -1]
    # Two spare requests compute nothing; the last computes the five padding tokens as a fresh context.
    assert padded.query_start_loc.tolist() == [0, 3, 3, 3, 8]
    assert padded.seq_lens.tolist() == [3, 0, 0, 5]
    assert padded.block_tables.tolist() == [[5], [0], [0], [0]]
    assert padded.sample_indices.tolist() == step.sample_indices.tolist() == [2]
    # No padding context is longer than a block table row reaches: 13 tokens as 4 + 4 + 4 + 1.
    chunked = step.padded_mixed(16, 6, max_context=4)
    assert chunked.query_start_loc.tolist() == [0, 3, 3, 7, 11, 15, 16]
    assert chunked.seq_lens.tolist() == [3, 0, 4, 4, 4, 1]
    with pytest.raises(ValueError, match="cannot pad"):
        step.padded_mixed(8, 1, max_context=16)
    with pytest.raises(ValueError, match="cannot pad"):
        step.padded_mixed(16, 3, max_context=4)


def test_each_step_pads_to_the_smallest_graph_that_holds_it():
    graphs = StepGraphs(nn.Identity(), [1, 2], [4, 8], max_num_seqs=3, max_blocks_per_seq=3, block_size=4,
                        device=torch.device("cpu"))
    assert (graphs.spare_requests, graphs.mixed_requests) == (1, 4)  # 8 padding tokens fit one 12-token context

    def shape(batch: SchedulerOutput) -> tuple[int, int] | None:
        padded = graphs.pad(layout_step(batch, block_size=4))
        return None if padded is None else (padded.num_tokens, padded.num_requests)

    assert shape(decode_step([[1, 2]], [[0]])) == (1, 1)
    assert shape(decode_step([[1, 2], [3, 4]], [[0], [1]])) == (2, 2)
    assert shape(decode_step([[1, 2]] * 3, [[0], [1], [2]])) == (4, 4)  # past the decode sizes: mixed graph
    assert shape(make_batch([make_request("p", [1, 2, 3])], [3], [[0]])) == (4, 4)
    assert shape(make_batch([make_request("p", [1] * 9)], [5], [[0, 1]])) == (8, 4)
    assert shape(make_batch([make_request("p", [1] * 9)], [9], [[0, 1, 2]])) is None  # more tokens than any graph
    assert shape(decode_step([[1] * 13], [[0, 1, 2, 3]])) is None  # a block table wider than any graph's


class _NoReplay:
    def replay(self) -> None:
        pass


def test_a_step_padded_to_a_mixed_graph_is_no_decode_step_even_with_one_token_a_request():
    # Mixed graphs of 4 tokens over 4 requests: a 3-token prefill, and 3 decodes past the decode graphs'
    # sizes, both pad to 4 tokens for 4 requests. Taken for decode steps, they would hand the graphs a
    # decode order one longer than its buffer.
    graphs = StepGraphs(nn.Identity(), [1, 2], [4], max_num_seqs=3, max_blocks_per_seq=4, block_size=16,
                        device=torch.device("cpu"))
    graphs.graphs[4, 4], graphs.outputs[4, 4] = _NoReplay(), torch.zeros(4, 1)
    for batch in (make_batch([make_request("p", [5, 6, 7])], [3], [[1]]), decode_step([[1, 2]] * 3, [[0], [1], [2]])):
        padded = graphs.pad(layout_step(batch, block_size=16))
        assert (padded.num_tokens, padded.num_requests, padded.decode_only) == (4, 4, False)
        inputs = to_device(padded, HostToDevice(torch.device("cpu")))
        assert inputs.metadata.decode_order is None
        graphs.run(inputs)


def test_no_graphs_on_the_cpu_or_with_enforce_eager(tiny_models):
    model_dir = str(tiny_models.get("qwen3"))
    on_cpu = EngineConfig.from_options(model_dir, device="cpu", attention_backend="triton")
    eager = EngineConfig.from_options(model_dir, enforce_eager=True)
    assert not ModelRunner(on_cpu).uses_cuda_graphs and not ModelRunner(eager).uses_cuda_graphs


@pytest.mark.parametrize("sizes", [[], [0, 4]])
def test_graph_sizes_must_be_positive(sizes):
    with pytest.raises(ConfigError, match="cuda_graph_batch_sizes"):
        RunnerConfig(cuda_graph_batch_sizes=sizes)


def prefilled_runner(tiny_models, lengths: list[int], chunks: list[int], block_ids: list[list[int]], seed: int):
    """An eager float32 runner (Triton kernels) with 8 cache blocks, and requests with random prompts of `lengths`
    after one step computed `chunks[i]` tokens of each; those that finished their prompt hold a sampled token."""
    options = {"dtype": "float32", "device": DEVICE, "attention_backend": "triton", "enforce_eager": True}
    config = EngineConfig.from_options(str(tiny_models.get("qwen3")), max_model_len=64, **options)
    runner = ModelRunner(config)
    runner.allocate_kv_cache(8)
    rng = random.Random(seed)
    requests = [make_request(f"r{i}", [rng.randrange(3, 512) for _ in range(n)]) for i, n in enumerate(lengths)]
    first = make_batch(requests, chunks, block_ids)
    for request, chunk, token in zip(requests, chunks, runner.execute(first).sampled_token_ids, strict=True):
        request.num_computed_tokens += chunk
        if token is not None:
            request.append_token(token)
    return config, runner, requests


@torch.inference_mode()
def test_padding_rows_leave_the_real_rows_and_the_cache_alone(tiny_models):
    """The forward a graph records, run eagerly on padded buffers, gives the unpadded step's rows."""
    block_ids = [[1], [2, 3], [4]]  # block 0, which padding rows read, belongs to nobody
    config, runner, requests = prefilled_runner(tiny_models, [5, 20, 3], [5, 20, 3], block_ids, seed=0)

    step = layout_step(make_batch(requests, [1, 1, 1], block_ids), config.cache.block_size)
    eager = to_device(step, runner.staging)
    expected = runner.model(eager.input_ids, eager.positions, eager.metadata)
    padded_inputs = to_device(step.padded(8), runner.staging)
    padded = runner.model(padded_inputs.input_ids, padded_inputs.positions, padded_inputs.metadata)

    torch.testing.assert_close(padded[:3], expected)
    assert torch.isfinite(padded).all()
    assert all(not kv_cache[:, 0].any() for kv_cache in runner.kv_caches)  # padding wrote nothing


@torch.inference_mode()
def test_mixed_padding_leaves_the_real_rows_and_the_cache_alone(tiny_models):
    """A chunk of one prompt beside another's first chunk and a decode, padded as a mixed-step graph pads it."""
    block_ids = [[1, 2], [3], [4]]  # block 0, which the padding context reads, belongs to nobody
    # r0's first chunk; r1 and r2 whole.
    config, runner, requests = prefilled_runner(tiny_models, [20, 9, 4], [12, 9, 4], block_ids, seed=1)

    step = layout_step(make_batch(requests, [8, 1, 1], block_ids), config.cache.block_size)  # r0's rest; decodes
    eager = to_device(step, runner.staging)
    expected = runner.model(eager.input_ids, eager.positions, eager.metadata)
    # 30 padding tokens in contexts of at most 16 (a whole block table row of this tiny engine is 64).
    padded_inputs = to_device(step.padded_mixed(40, 6, max_context=16), runner.staging)
    padded = runner.model(padded_inputs.input_ids, padded_inputs.positions, padded_inputs.metadata)

    torch.testing.assert_close(padded[: step.num_tokens], expected)
    assert torch.isfinite(padded).all()
    assert all(not kv_cache[:, 0].any() for kv_cache in runner.kv_caches)  # padding wrote nothing


# GPU: greedy outputs with graphs equal eager outputs, token for token.


@dataclass
class Replay:
    """A step that replayed a graph: its requests and tokens, whether it decoded only, and the graph's shape."""

    num_requests: int
    num_tokens: int
    decode_only: bool
    shape: tuple[int, int]


@pytest.fixture
def replays(monkeypatch) -> list[Replay]:
    """Every step that replays a graph during the test."""
    recorded = []
    pad = StepGraphs.pad

    def recording_pad(graphs: StepGraphs, layout: StepLayout) -> StepLayout | None:
        padded = pad(graphs, layout)
        if padded is not None:
            shape = (padded.num_tokens, padded.num_requests)
            recorded.append(Replay(layout.num_requests, layout.num_tokens, layout.decode_only, shape))
        return padded

    monkeypatch.setattr(StepGraphs, "pad", recording_pad)
    return recorded


def generate(model_dir, prompts, max_tokens, **options):
    """Greedy token ids of each prompt, and the engine's stats at the end."""
    llm = LLM(str(model_dir), skip_tokenizer_init=True, **options)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [output.outputs[0].token_ids for output in outputs], llm.engine.stats()


def staggered_batch(num_prompts: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Prompts of mixed lengths; request i stops after num_prompts - i tokens, so once every prompt is
    in, the decode batch shrinks by one request a step and passes through every size down to 1."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 512) for _ in range(rng.randint(1, 40))] for _ in range(num_prompts)]
    return prompts, [num_prompts - i for i in range(num_prompts)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", ["qwen3", "mistral"])  # mistral: a sliding window in every layer
def test_greedy_outputs_with_graphs_equal_eager(tiny_models, replays, variant, dtype):
    model_dir = tiny_models.get(variant)
    prompts, max_tokens = staggered_batch(30)
    expected, _ = generate(model_dir, prompts, max_tokens, dtype=dtype, enforce_eager=True)
    assert replays == []
    ours, _ = generate(model_dir, prompts, max_tokens, dtype=dtype)
    assert ours == expected
    # Default ladder 1, 2, 4, 8, 16, 24, 32, ...: decode sizes 29..1 all replay, exactly or padded.
    decodes = {(replay.num_requests, replay.shape[0]) for replay in replays if replay.decode_only}
    assert {size for size, _ in decodes} == set(range(1, 30))
    assert {(24, 24), (16, 16), (1, 1), (23, 24), (17, 24), (3, 4)} <= decodes
    # The prompts' step (30 prompts of up to 40 tokens) replays one of the default mixed-step graphs.
    assert any(not replay.decode_only and replay.shape[0] in (256, 512, 1024) for replay in replays)


@pytest.mark.gpu
@needs_cuda
def test_greedy_outputs_over_a_float8_cache_with_graphs_equal_eager(tiny_models, replays):
    # The kernel takes 128-key tiles over a float8 cache once a decode step's (request, kv head) pairs fill
    # the SMs, else 32-key tiles and splits. A graph padded across that switch runs the other tile than an
    # eager step of the true size, and the float8 rounding of the cache turns that into other tokens; so
    # the ladder has a size just below the switch, and decode batches run from above it down to 1.
    num_kv_heads = 2  # the tiny qwen3's
    switch = -(-torch.cuda.get_device_properties(0).multi_processor_count // num_kv_heads)
    num_prompts = switch + 14
    prompts, max_tokens = staggered_batch(num_prompts)
    options = {"dtype": "bfloat16", "kv_cache_dtype": "fp8"}
    expected, _ = generate(tiny_models.get("qwen3"), prompts, max_tokens, enforce_eager=True, **options)
    ladder = sorted({1, 2, 4, 8, 16, 32, switch - 1, num_prompts})
    ours, _ = generate(tiny_models.get("qwen3"), prompts, max_tokens, cuda_graph_batch_sizes=ladder, **options)
    assert ours == expected
    decodes = {(replay.num_requests, replay.shape[0]) for replay in replays if replay.decode_only}
    # Padded replays on both sides of the switch: 128-key tiles above it, 32-key tiles below.
    assert (switch, num_prompts) in decodes and (switch - 2, switch - 1) in decodes


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphs_with_chunked_prefill_mixed_steps_and_preemption(tiny_models, replays, dtype):
    # A 32-token budget chunks prompts and mixes them with decodes; 10 blocks of 16 cannot hold 12
    # requests of up to 40 + 12 tokens, so one is preempted and recomputed. Decode-only steps of up to 4
    # requests replay decode graphs; larger ones, and the mixed steps, replay the 16- and 32-token graphs.
    model_dir = tiny_models.get("qwen3")
    prompts, max_tokens = staggered_batch(12, seed=1)
    options = {"dtype": dtype, "max_num_batched_tokens": 32, "max_model_len": 160, "num_kv_blocks": 10,
               "max_num_seqs": 12}
    expected, eager_stats = generate(model_dir, prompts, max_tokens, enforce_eager=True, **options)
    sizes = {"cuda_graph_batch_sizes": [1, 2, 4], "cuda_graph_token_sizes": [16, 32]}
    ours, stats = generate(model_dir, prompts, max_tokens, **sizes, **options)
    assert ours == expected
    assert stats.num_preemptions > 0 and stats.num_preemptions == eager_stats.num_preemptions
    assert {replay.shape for replay in replays} <= {(1, 1), (2, 2), (4, 4), (16, 13), (32, 13)}
    assert any(replay.shape == (32, 13) and not replay.decode_only for replay in replays)
    assert any(replay.decode_only and replay.num_requests > 4 for replay in replays)  # a decode past the ladder
    assert stats.num_used_blocks == 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mixed_graphs_of_many_sizes_and_long_padding(tiny_models, replays, dtype):
    # Token sizes up to 8192 pad far past a block table row (max_model_len 128): the padding is split.
    prompts, max_tokens = staggered_batch(20, seed=2)
    options = {"dtype": dtype, "max_model_len": 128}
    expected, _ = generate(tiny_models.get("qwen3"), prompts, max_tokens, enforce_eager=True, **options)
    sizes = [256, 1024, 8192]
    ours, _ = generate(tiny_models.get("qwen3"), prompts, max_tokens, cuda_graph_token_sizes=sizes, **options)
    assert ours == expected
    assert any(not replay.decode_only for replay in replays)
