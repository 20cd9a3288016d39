"""load_model reads single-file and sharded safetensors, or fills dummy weights, and fails clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from lmserve.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError
from lmserve.models import load_model
from tests.tiny_models import TinyModelCache, lmserve_logits, save_sharded_copy

CPU = torch.device("cpu")
PROMPT = list(range(3, 23))


def load(model_dir: Path, dtype: torch.dtype = torch.float32, **options: object) -> nn.Module:
    """Load as the engine does: the caller reads the config, then hands it over."""
    return load_model(str(model_dir), AutoConfig.from_pretrained(model_dir), dtype, CPU, **options)


def copy_checkpoint(tiny_models: TinyModelCache, tmp_path: Path) -> Path:
    """A writable copy of the llama checkpoint, for tests that damage it."""
    return Path(shutil.copytree(tiny_models.get("llama"), tmp_path / "llama"))


def rewrite_tensors(model_dir: Path, edit: dict[str, torch.Tensor | None]) -> None:
    """Replace (or, for None, drop) tensors of a single-file checkpoint."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    for name, tensor in edit.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, path)


def test_sharded_checkpoint_loads_like_single_file(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    single_dir = tiny_models.get("qwen3")
    sharded_dir = save_sharded_copy(single_dir, tmp_path / "sharded")
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    assert len(list(sharded_dir.glob("*.safetensors"))) > 1

    single, sharded = load(single_dir), load(sharded_dir)

    assert single.state_dict().keys() == sharded.state_dict().keys()
    for name, tensor in single.state_dict().items():
        assert torch.equal(tensor, sharded.state_dict()[name]), name


def test_dummy_weights_need_no_files_and_are_seeded(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    hf_config = AutoConfig.from_pretrained(tiny_models.get("llama"))
    missing_dir = str(tmp_path / "nowhere")

    model = load_model(missing_dir, hf_config, torch.float32, CPU, load_format="dummy", seed=1)
    same = load_model(missing_dir, hf_config, torch.float32, CPU, load_format="dummy", seed=1)
    other = load_model(missing_dir, hf_config, torch.float32, CPU, load_format="dummy", seed=2)

    assert torch.isfinite(lmserve_logits(model, PROMPT)).all()
    assert torch.equal(model.model.embed_tokens.weight, same.model.embed_tokens.weight)
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))


# Fused projections sum in another order than transformers' separate ones: a few half-precision ulps apart.
@pytest.mark.parametrize(("dtype", "atol"), [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_half_precision_matches_transformers_in_that_precision(
    tiny_models: TinyModelCache, dtype: torch.dtype, atol: float
) -> None:
    model_dir = tiny_models.get("qwen3")
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    with torch.inference_mode():
        expected = hf_model(torch.tensor([PROMPT])).logits[0].float()

    model = load(model_dir, dtype)

    assert {param.dtype for param in model.parameters()} == {dtype}
    logits = lmserve_logits(model, PROMPT)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=atol, rtol=0)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_missing_directory(tmp_path: Path, tiny_models: TinyModelCache) -> None:
    hf_config = AutoConfig.from_pretrained(tiny_models.get("llama"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nowhere"), hf_config, torch.float32, CPU)


def test_directory_without_safetensors(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        load(model_dir)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_safetensors(tiny_models: TinyModelCache, tmp_path: Path, damage: str) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07garbage" * 100)
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        load(model_dir)


def test_unsupported_architecture_lists_supported_ones(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["FooForCausalLM"]
    config_path.write_text(json.dumps(config))

    with pytest.raises(UnsupportedArchitectureError, match="FooForCausalLM") as error:
        load(model_dir)
    assert "LlamaForCausalLM" in str(error.value) and "Qwen3ForCausalLM" in str(error.value)


def test_parameter_missing_from_checkpoint(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    # Without k_proj the fused qkv_proj is only partly filled, which must not pass as loaded.
    rewrite_tensors(model_dir, {"model.layers.1.self_attn.k_proj.weight": None})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.self_attn\.qkv_proj\.weight"):
        load(model_dir)


def test_shape_mismatch(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    rewrite_tensors(model_dir, {"model.norm.weight": torch.ones(65)})
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight.*\(65,\).*\(64,\)"):
        load(model_dir)


def test_unexpected_tensor(tiny_models: TinyModelCache, tmp_path: Path) -> None:
    model_dir = copy_checkpoint(tiny_models, tmp_path)
    rewrite_tensors(model_dir, {"model.layers.7.mlp.gate_proj.weight": torch.zeros(128, 64)})
    with pytest.raises(ModelLoadError, match="matches no parameter"):
        load(model_dir)


def test_unknown_load_format(tiny_models: TinyModelCache) -> None:
    with pytest.raises(ConfigError, match="load_format"):
        load(tiny_models.get("llama"), load_format="pickle")
