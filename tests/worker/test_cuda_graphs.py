"""Decode CUDA graphs: the capture ladder, the padded static inputs, and graph outputs equal to eager ones.

The ladder and padding tests run anywhere (the padded forward runs the Triton kernels in the interpreter
on a CPU); the tests marked `gpu` capture real graphs and need a CUDA device.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from lmserve import LLM, SamplingParams
from lmserve.config import EngineConfig, RunnerConfig
from lmserve.engine.scheduler import SchedulerOutput
from lmserve.errors import ConfigError
from lmserve.worker.cuda_graphs import DecodeGraphs, capture_sizes, padded_size
from lmserve.worker.input_preparation import StepLayout, layout_step, to_device
from lmserve.worker.model_runner import ModelRunner
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


def test_only_decode_steps_that_fit_a_graph_get_one():
    graphs = DecodeGraphs(nn.Identity(), [1, 2], max_blocks_per_seq=2, block_size=4, device=torch.device("cpu"))
    assert graphs.graph_size(layout_step(decode_step([[1, 2]], [[0]]), block_size=4)) == 1
    assert graphs.graph_size(layout_step(decode_step([[1, 2], [3, 4]], [[0], [1]]), block_size=4)) == 2
    assert graphs.graph_size(layout_step(decode_step([[1, 2]] * 3, [[0], [1], [2]]), block_size=4)) is None
    assert graphs.graph_size(layout_step(decode_step([[1] * 9], [[0, 1, 2]]), block_size=4)) is None  # too long
    prefill = make_request("p", [1, 2, 3])
    assert graphs.graph_size(layout_step(make_batch([prefill], [3], [[0]]), block_size=4)) is None


def test_no_graphs_on_the_cpu_or_with_enforce_eager(tiny_models):
    model_dir = str(tiny_models.get("qwen3"))
    on_cpu = EngineConfig.from_options(model_dir, device="cpu", attention_backend="triton")
    eager = EngineConfig.from_options(model_dir, enforce_eager=True)
    assert not ModelRunner(on_cpu).uses_cuda_graphs and not ModelRunner(eager).uses_cuda_graphs


@pytest.mark.parametrize("sizes", [[], [0, 4]])
def test_graph_sizes_must_be_positive(sizes):
    with pytest.raises(ConfigError, match="cuda_graph_batch_sizes"):
        RunnerConfig(cuda_graph_batch_sizes=sizes)


@torch.inference_mode()
def test_padding_rows_leave_the_real_rows_and_the_cache_alone(tiny_models):
    """The forward a graph records, run eagerly on padded buffers, gives the unpadded step's rows."""
    options = {"dtype": "float32", "device": DEVICE, "attention_backend": "triton", "enforce_eager": True}
    config = EngineConfig.from_options(str(tiny_models.get("qwen3")), max_model_len=64, **options)
    runner = ModelRunner(config)
    runner.allocate_kv_cache(8)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(n)] for n in (5, 20, 3)]
    block_ids = [[1], [2, 3], [4]]  # block 0, which padding rows read, belongs to nobody
    requests = [make_request(f"r{i}", p) for i, p in enumerate(prompts)]
    prefill = make_batch(requests, [len(p) for p in prompts], block_ids)
    for request, token in zip(requests, runner.execute(prefill).sampled_token_ids, strict=True):
        request.num_computed_tokens = request.num_tokens
        request.append_token(token)

    step = layout_step(make_batch(requests, [1, 1, 1], block_ids), config.cache.block_size)
    eager = to_device(step, runner.staging)
    expected = runner.model(eager.input_ids, eager.positions, eager.metadata)
    padded_inputs = to_device(step.padded(8), runner.staging)
    padded = runner.model(padded_inputs.input_ids, padded_inputs.positions, padded_inputs.metadata)

    torch.testing.assert_close(padded[:3], expected)
    assert torch.isfinite(padded).all()
    assert all(not kv_cache[:, 0].any() for kv_cache in runner.kv_caches)  # padding wrote nothing


# GPU: greedy outputs with graphs equal eager outputs, token for token.


@pytest.fixture
def replays(monkeypatch) -> list[tuple[int, int]]:
    """The (batch size, graph size) of every decode step that replays a graph during the test."""
    recorded = []
    graph_size = DecodeGraphs.graph_size

    def recording_graph_size(graphs: DecodeGraphs, layout: StepLayout) -> int | None:
        size = graph_size(graphs, layout)
        if size is not None:
            recorded.append((layout.num_requests, size))
        return size

    monkeypatch.setattr(DecodeGraphs, "graph_size", recording_graph_size)
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
    # Default ladder 1, 2, 4, 8, 16, 24, 32, ...: sizes 29..1 all replay, exactly or padded.
    assert {size for size, _ in replays} == set(range(1, 30))
    assert {(24, 24), (16, 16), (1, 1), (23, 24), (17, 24), (3, 4)} <= set(replays)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphs_with_chunked_prefill_mixed_steps_and_preemption(tiny_models, replays, dtype):
    # A 32-token budget chunks prompts and mixes them with decodes (eager); 10 blocks of 16 cannot hold
    # 12 requests of up to 40 + 12 tokens, so one is preempted and recomputed. Decode-only steps of 5 or
    # 6 requests exceed the largest graph (4) and run eagerly; those of 4 and 1 replay.
    model_dir = tiny_models.get("qwen3")
    prompts, max_tokens = staggered_batch(12, seed=1)
    options = {"dtype": dtype, "max_num_batched_tokens": 32, "max_model_len": 160, "num_kv_blocks": 10}
    expected, eager_stats = generate(model_dir, prompts, max_tokens, enforce_eager=True, **options)
    ours, stats = generate(model_dir, prompts, max_tokens, cuda_graph_batch_sizes=[1, 2, 4], **options)
    assert ours == expected
    assert stats.num_preemptions > 0 and stats.num_preemptions == eager_stats.num_preemptions
    assert replays and max(size for size, _ in replays) <= 4
    assert stats.num_used_blocks == 0
