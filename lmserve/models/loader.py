"""Build a model straight on its device and fill it from safetensors files, or with random weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from lmserve.errors import ConfigError, ModelLoadError
from lmserve.models.layers import RMSNorm
from lmserve.models.registry import resolve_model_class

LOAD_FORMATS = ("auto", "safetensors", "dummy")


def load_model(
    model_dir: str,
    hf_config: Any,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """The model for `hf_config` in eval mode, on `device`, in `dtype`, with its weights loaded.

    "auto" and "safetensors" read `model_dir/*.safetensors`; "dummy" fills seeded random weights without
    touching the directory, for benchmarks and tests.
    """
    if load_format not in LOAD_FORMATS:
        raise ConfigError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    model_class = resolve_model_class(hf_config)
    # Allocate each parameter once, directly on the device and in the target dtype.
    with _default_dtype(dtype), torch.device(device):
        model = model_class(hf_config)
    if load_format == "dummy":
        initialize_dummy_weights(model, seed)
    else:
        loaded = model.load_weights(iterate_safetensors(model_dir))
        missing = sorted({name for name, _ in model.named_parameters()} - loaded)
        if missing:
            raise ModelLoadError(
                f"the checkpoint in {model_dir!r} lacks {len(missing)} parameter(s), e.g. {missing[:5]}"
            )
    return model.requires_grad_(False).eval()


def iterate_safetensors(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from the directory's safetensors files, one file open at a time."""
    for path in _safetensors_files(Path(model_dir)):
        try:
            with safe_open(path, framework="pt") as file:
                for name in file.keys():
                    yield name, file.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"cannot read {path} ({error}): is it corrupted or truncated?") from error


def _safetensors_files(model_dir: Path) -> list[Path]:
    """A sharded checkpoint's index names its files (a directory may also hold a consolidated copy)."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {str(model_dir)!r}")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ModelLoadError(f"cannot read the weight map of {index}: {error}") from error
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [file.name for file in files if not file.is_file()]
        if absent:
            raise ModelLoadError(f"{index} lists files that are missing: {absent}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {str(model_dir)!r}: lmserve reads only safetensors")
    return files


@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, seed: int) -> None:
    """Small seeded normal weights, norms at 1: finite, repeatable activations with no checkpoint."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    norm_weights = {id(module.weight) for module in model.modules() if isinstance(module, RMSNorm)}
    for param in model.parameters():
        if id(param) in norm_weights:
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
