"""Copying checkpoint tensors onto a model's parameters, including shards of fused projections."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from lmserve.errors import ModelLoadError
from lmserve.models.layers import MergedLinear

# (fused module name, checkpoint module name, shard index) for a checkpoint that stores them apart.
StackedMapping = tuple[tuple[str, str, int], ...]


def copy_weight(target: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    """Copy `weight` into `target` (casting dtype and device), refusing a shape mismatch."""
    if target.shape != weight.shape:
        raise ModelLoadError(
            f"checkpoint tensor {name!r} has shape {tuple(weight.shape)}, the model expects {tuple(target.shape)}"
        )
    target.copy_(weight)


@torch.no_grad()
def load_stacked_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: StackedMapping,
    skip: Iterable[str] = (),
) -> set[str]:
    """Load checkpoint `weights` into `model`; return the names of the parameters fully loaded.

    Names containing any `skip` substring are ignored. A fused parameter counts as loaded only once every
    one of its shards arrived, so a checkpoint missing, say, `k_proj` is caught by the caller.
    """
    skip = tuple(skip)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    shards_loaded: dict[str, set[int]] = defaultdict(set)
    for checkpoint_name, weight in weights:
        if any(pattern in checkpoint_name for pattern in skip):
            continue
        for fused, part, shard in stacked:
            if f".{part}." not in checkpoint_name:
                continue
            name = checkpoint_name.replace(f".{part}.", f".{fused}.")
            param = _parameter(params, name)
            module = model.get_submodule(name.rsplit(".", 1)[0])
            assert isinstance(module, MergedLinear), f"{name} is not a fused projection"
            copy_weight(module.shard(param, shard), weight, checkpoint_name)
            shards_loaded[name].add(shard)
            if len(shards_loaded[name]) == len(module.output_sizes):
                loaded.add(name)
            break
        else:
            copy_weight(_parameter(params, checkpoint_name), weight, checkpoint_name)
            loaded.add(checkpoint_name)
    return loaded


def _parameter(params: dict[str, nn.Parameter], name: str) -> nn.Parameter:
    if name not in params:
        raise ModelLoadError(f"checkpoint tensor {name!r} matches no parameter of the model")
    return params[name]
