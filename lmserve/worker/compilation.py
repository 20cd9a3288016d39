"""`torch.compile` of the model's forward (opt-in: `compile_model`), with attention left out of the graph.

Compiled, the layers run their torch code (norms, SwiGLU's activation, rotary, the projections), which
Inductor fuses into kernels of its own; lmserve's hand-written Triton kernels for those run only eagerly.
Attention stays lmserve's (Triton kernels on the GPU), run as eagerly: each layer's call is one op that
Dynamo does not look into, as in vLLM's piecewise compilation. Traced, the torch backend's data-dependent
shapes would break the graph, and a break in the loop over layers makes Dynamo run that loop eagerly and
compile each layer's pieces apart (`torch.compiler.disable` there: 12 graphs for 2 layers). The sampler
stays eager.

The shapes are dynamic, so one compilation serves every token count. Dynamo still specialises sizes of 1
(a step of one token or one request, a block table one block wide) and tells decode steps (with a
`decode_order`) from others. With CUDA graphs, whose shapes differ only in their token counts, start-up
compiles three graphs (mixed steps, decodes, decode at batch 1) before capturing them. Steps without
graphs (enforce_eager, the CPU) compile one per combination of those met, 2-4 on the tests' workloads;
past Dynamo's limit of 8 a new combination runs uncompiled.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from lmserve.attention import AttentionMetadata, attention_backend
from lmserve.attention.backend import Rotation


@torch.library.custom_op("lmserve::attention", mutates_args=("kv_cache",))
def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    decode_order: torch.Tensor | None,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None,
    backend: str,
) -> torch.Tensor:
    """Store the keys and values, then attend: the backend called `backend` (an op takes no Python objects)."""
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        seq_lens=seq_lens,
        query_start_loc=query_start_loc,
        max_query_len=max_query_len,
        max_seq_len=max_seq_len,
        decode_order=decode_order,
    )
    return attention_backend(backend).forward(query, key, value, kv_cache, metadata, scale, sliding_window)


@_attention.register_fake
def _(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return query.new_empty(query.shape)  # both backends return a new contiguous tensor of the queries' shape


class OpaqueAttentionBackend:
    """The backend called `name`, which compiled code sees as one op; eager code calls it directly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend = attention_backend(name)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return self.backend.forward(query, key, value, kv_cache, metadata, scale, sliding_window, rotation)
        if rotation is not None:  # in torch, for Inductor to fuse (and an op cannot take the rotation's callable)
            rotated_query, rotated_key = rotation.apply(query.flatten(1), key.flatten(1))
            query, key = rotated_query.view(query.shape), rotated_key.view(key.shape)
        return _attention(
            query, key, value, kv_cache, metadata.slot_mapping, metadata.block_tables, metadata.seq_lens,
            metadata.query_start_loc, metadata.decode_order, metadata.max_query_len, metadata.max_seq_len, scale,
            sliding_window, self.name,
        )

    def attend(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
        """Only eager code attends alone: compiled, no projection stores the keys (`projection.fuses`)."""
        return self.backend.attend(query, kv_cache, metadata, scale, sliding_window)


def compile_model(model: nn.Module, kv_caches: list[torch.Tensor]) -> None:
    """Compile `model`'s forward in place (its `compute_logits` stays eager), lazily: at its next call.

    Step sizes that happen to be equal when Dynamo traces (two requests of two blocks each) are not tied
    together ("duck sizing"), nor are the caches' sizes, fixed for the engine's life: either would add a
    compilation when they differ.
    """
    for kv_cache in kv_caches:
        torch._dynamo.mark_static(kv_cache)
    compiled = torch.compile(model.forward, dynamic=True)
    model.forward = fx_config.patch(use_duck_shape=False)(compiled)
