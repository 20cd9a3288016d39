"""`compile_model`: greedy outputs of the compiled model equal eager ones (and Hugging Face's), from few graphs.

On the CPU Inductor compiles C++ (it needs a C++ compiler); the tests marked `gpu` compile Triton kernels
and capture the compiled model in CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM

from lmserve import LLM, SamplingParams
from tests.entrypoints.test_llm_matches_hf import MAX_TOKENS, PROMPTS, run_lmserve
from tests.worker.test_cuda_graphs import generate, needs_cuda, replays, staggered_batch  # noqa: F401 (a fixture)

# With CUDA graphs: mixed steps, decodes, decode at batch 1 (lmserve.worker.compilation); the CPU tests'
# workloads, run without graphs, need no more.
MAX_GRAPHS = 3


@pytest.fixture
def compiled_graphs():
    """The number of graphs Dynamo compiles during the test, as a callable; Dynamo starts afresh, so that no
    model compiled by an earlier test counts towards its limit of recompilations."""
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    return lambda: counters["stats"]["unique_graphs"] - before


def hf_greedy(model_dir, prompts: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = [model.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
               for p in prompts]
    return [output[0, len(prompt) :].tolist() for output, prompt in zip(outputs, prompts, strict=True)]


def test_compiled_greedy_outputs_equal_eager_and_hf(tiny_models, compiled_graphs):
    model_dir = tiny_models.get("qwen3")  # per-head norms, biases
    eager, _ = run_lmserve(model_dir, PROMPTS)
    graph_breaks = sum(counters["graph_break"].values())
    compiled, stats = run_lmserve(model_dir, PROMPTS, compile_model=True)
    assert compiled == eager == hf_greedy(model_dir, PROMPTS)
    assert stats.num_running == 0 and stats.num_used_blocks == 0
    assert 0 < compiled_graphs() <= MAX_GRAPHS  # chunked prefills, mixed steps and decodes of 8 sizes
    assert sum(counters["graph_break"].values()) == graph_breaks  # attention is one op, not a break


def test_compiled_model_calls_the_triton_attention_backend(tiny_models, compiled_graphs):
    """The op runs the Triton kernels (in Triton's interpreter on the CPU), which store keys rotated by
    Inductor's code."""
    model_dir = tiny_models.get("mistral")
    prompts = [PROMPTS[1], PROMPTS[4], PROMPTS[7]]  # decode, chunked prefill, past the sliding window
    compiled, _ = run_lmserve(model_dir, prompts, attention_backend="triton", compile_model=True)
    assert compiled == hf_greedy(model_dir, prompts)
    assert 0 < compiled_graphs() <= MAX_GRAPHS


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("variant", ["qwen3", "mistral"])
def test_compiled_model_in_cuda_graphs_equals_eager(tiny_models, replays, compiled_graphs, variant):  # noqa: F811
    """In float32, where Inductor's kernels and lmserve's round alike enough that no greedy token differs.
    Start-up compiles every graph (before capturing the CUDA graphs); serving compiles none."""
    model_dir = tiny_models.get(variant)
    prompts, max_tokens = staggered_batch(30)
    expected, _ = generate(model_dir, prompts, max_tokens, dtype="float32", enforce_eager=True)
    llm = LLM(str(model_dir), skip_tokenizer_init=True, dtype="float32", compile_model=True)
    at_start = compiled_graphs()
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [output.outputs[0].token_ids for output in outputs] == expected
    assert 0 < compiled_graphs() == at_start <= MAX_GRAPHS
    assert {replay.num_requests for replay in replays if replay.decode_only} == set(range(1, 30))
    assert any(not replay.decode_only for replay in replays)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_of_the_compiled_bfloat16_model_equal_it_run_without_graphs(tiny_models, compiled_graphs):
    """In bfloat16 Inductor's kernels may round otherwise than lmserve's: compare the compiled model with itself."""
    model_dir = tiny_models.get("qwen3")
    prompts, max_tokens = staggered_batch(30)
    options = {"dtype": "bfloat16", "compile_model": True}
    expected, _ = generate(model_dir, prompts, max_tokens, enforce_eager=True, **options)
    ours, _ = generate(model_dir, prompts, max_tokens, **options)
    assert ours == expected
