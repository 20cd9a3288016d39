"""The model runner's KV cache sizing."""

import pytest
import torch

from lmserve.config import EngineConfig
from lmserve.errors import ConfigError
from lmserve.worker.model_runner import ModelRunner


def make_runner(model_dir, **options):
    return ModelRunner(EngineConfig.from_options(str(model_dir), dtype="float32", device="cpu", **options))


def test_block_bytes_count_every_layer_key_and_value(tiny_models):
    runner = make_runner(tiny_models.get("qwen3"))
    # 2 layers x (key + value) x 16 tokens x 2 kv heads x head_dim 32 x 4 bytes
    assert runner.kv_cache_block_bytes == 2 * 2 * 16 * 2 * 32 * 4


def test_a_float8_cache_takes_one_byte_per_element(tiny_models):
    runner = make_runner(tiny_models.get("qwen3"), kv_cache_dtype="fp8")
    assert runner.kv_cache_block_bytes == 2 * 2 * 16 * 2 * 32 * 1
    runner.allocate_kv_cache(4)
    assert runner.kv_caches and all(cache.dtype == torch.float8_e4m3fn for cache in runner.kv_caches)


def test_unknown_kv_cache_dtype_is_a_config_error(tiny_models):
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        make_runner(tiny_models.get("qwen3"), kv_cache_dtype="int4")


def test_number_of_blocks_follows_the_byte_budget_or_the_explicit_count(tiny_models):
    runner = make_runner(tiny_models.get("qwen3"), max_model_len=64, kv_cache_memory_bytes=100 * 16384 + 5)
    assert runner.determine_num_blocks() == 100
    assert make_runner(tiny_models.get("qwen3"), max_model_len=64, num_kv_blocks=7).determine_num_blocks() == 7
    capped = make_runner(tiny_models.get("qwen3"), max_model_len=64, max_num_seqs=2)
    assert capped.determine_num_blocks() == 2 * 4 + 1  # no more than max_num_seqs full sequences need


def test_a_cache_too_small_for_one_sequence_is_a_clear_error(tiny_models):
    runner = make_runner(tiny_models.get("qwen3"), max_model_len=64, num_kv_blocks=3)
    with pytest.raises(ConfigError, match="lower max_model_len"):
        runner.determine_num_blocks()


def test_in_out_projections_change_the_layout_not_the_tokens(tiny_models):
    from lmserve import LLM, SamplingParams

    model_dir = str(tiny_models.get("llama"))
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    default, transposed = (LLM(model_dir, skip_tokenizer_init=True, projection_layout=layout)
                           for layout in ("out_in", "in_out"))
    weight = transposed.engine.core.runner.model.model.layers[0].self_attn.o_proj.weight
    assert weight.stride() == (1, weight.shape[0])
    outputs = [llm.generate(prompts, params, use_tqdm=False) for llm in (default, transposed)]
    assert [o.outputs[0].token_ids for o in outputs[0]] == [o.outputs[0].token_ids for o in outputs[1]]


def test_the_engine_runs_and_frees_its_blocks_over_a_float8_cache(tiny_models):
    # What the float8 cache does to the values is checked by tests/attention/test_cache_dtype.py.
    from lmserve import LLM, SamplingParams

    llm = LLM(str(tiny_models.get("llama")), skip_tokenizer_init=True, kv_cache_dtype="fp8")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate([[5, 6, 7, 8], list(range(20, 60))], params, use_tqdm=False)
    assert [len(output.outputs[0].token_ids) for output in outputs] == [12, 12]
    assert llm.engine.core.stats().num_used_blocks == 0


def test_a_float8_cache_on_a_gpu_without_float8_is_a_config_error(tiny_models, monkeypatch):
    from lmserve.worker.model_runner import _check_float8_cache_support

    config = EngineConfig.from_options(str(tiny_models.get("qwen3")), device="cpu", kv_cache_dtype="fp8")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))  # an A100
    with pytest.raises(ConfigError, match="compute capability 8.9 or newer; this one has 8.0"):
        _check_float8_cache_support(config, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    _check_float8_cache_support(config, torch.device("cuda"))


def test_stream_k_rows_set_the_row_counts_that_take_the_stream_k_gemm(tiny_models):
    from lmserve.models.layers import projection

    try:
        make_runner(tiny_models.get("llama"), stream_k_rows=[128, 512])
        assert projection._stream_k_rows == range(128, 513)
        make_runner(tiny_models.get("llama"))
        assert projection._stream_k_rows == range(0)
    finally:
        projection.use_stream_k(range(0))


@pytest.mark.parametrize("rows", [[0, 512], [256, 128], [128], [128.0, 256]])
def test_stream_k_rows_out_of_order_or_below_one_are_a_config_error(tiny_models, rows):
    with pytest.raises(ConfigError, match=r"stream_k_rows must be \[fewest, most\]"):
        make_runner(tiny_models.get("llama"), stream_k_rows=rows)
