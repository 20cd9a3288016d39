"""Tiny mixed batches over a paged KV cache, shared by the kernel and backend tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.attention.backend import AttentionMetadata

# (context already in the cache, new query tokens): two decode rows, a fresh prefill, and a chunk that
# continues a cached prefix; lengths are ragged and cross cache blocks.
MIXED = [(21, 1), (0, 19), (26, 13), (38, 1)]
DECODES = [(0, 1), (45, 1), (70, 1), (17, 1)]
# Kernels run natively where there is a GPU, else under Triton's interpreter on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class PagedBatch:
    """A step's flat query/key/value and the cache they live in; the cache holds every earlier token."""

    query: torch.Tensor  # [num_tokens, num_heads, head_dim], a view of a fused QKV tensor
    key: torch.Tensor  # [num_tokens, num_kv_heads, head_dim], same
    value: torch.Tensor
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, num_kv_heads, head_dim], random everywhere
    metadata: AttentionMetadata


def make_batch(
    lengths: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = DEVICE,
    cache_dtype: torch.dtype | None = None,
) -> PagedBatch:
    """Give each request shuffled, non-adjacent cache blocks and random (never zero) data everywhere;
    the cache holds `dtype` unless `cache_dtype` (float8) says otherwise."""
    generator = torch.Generator().manual_seed(seed)
    seq_lens = [context + new for context, new in lengths]
    blocks_per_request = [-(-seq_len // block_size) for seq_len in seq_lens]
    num_blocks = 2 * sum(blocks_per_request) + 1
    free_blocks = torch.randperm(num_blocks, generator=generator).tolist()

    block_tables = torch.zeros(len(lengths), max(blocks_per_request), dtype=torch.int64)
    slot_mapping = []
    for request, ((context, new), count) in enumerate(zip(lengths, blocks_per_request, strict=True)):
        blocks = [free_blocks.pop() for _ in range(count)]
        block_tables[request, :count] = torch.tensor(blocks)
        positions = range(context, context + new)
        slot_mapping += [blocks[pos // block_size] * block_size + pos % block_size for pos in positions]

    query_lens = torch.tensor([new for _, new in lengths])
    query_start_loc = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    query_start_loc[1:] = torch.cumsum(query_lens, 0)
    num_tokens = int(query_start_loc[-1])

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    def on_device(values: list[int] | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.int64).to(device)

    qkv = randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim)
    query, key, value = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=1)
    return PagedBatch(
        query=query.view(num_tokens, num_heads, head_dim),
        key=key.view(num_tokens, num_kv_heads, head_dim),
        value=value.view(num_tokens, num_kv_heads, head_dim),
        kv_cache=randn(2, num_blocks, block_size, num_kv_heads, head_dim).to(cache_dtype or dtype),
        metadata=AttentionMetadata(
            slot_mapping=on_device(slot_mapping),
            block_tables=on_device(block_tables),
            seq_lens=on_device(seq_lens),
            query_start_loc=on_device(query_start_loc),
            max_query_len=int(query_lens.max()),
            max_seq_len=max(seq_lens),
        ),
    )
