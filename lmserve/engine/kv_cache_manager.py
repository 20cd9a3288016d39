"""Which KV cache blocks each request holds, and the automatic prefix cache over them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from lmserve.engine.block_pool import BlockPool, KVCacheBlock
from lmserve.engine.request import Request


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache, and how many of them were found there."""

    queries: int = 0
    hits: int = 0


def hash_block(parent_hash: bytes, token_ids: list[int]) -> bytes:
    """A full block's identity: its tokens and, through the parent's hash, everything before them."""
    digest = hashlib.blake2b(parent_hash, digest_size=16)
    digest.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return digest.digest()


class KVCacheManager:
    """Gives requests the blocks their tokens need and shares full blocks between equal prefixes.

    Blocks are registered in the prefix cache as soon as a step is scheduled to fill them, so a request
    scheduled later in the same step can already reuse them: every attention backend writes a layer's
    new KV before it reads the cache.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_registered: dict[str, int] = {}  # how many of a request's leading blocks are cached
        # The ids of `blocks`, kept alongside so the per-step block tables cost no list building.
        self._block_ids: dict[str, list[int]] = {}
        self.stats = PrefixCacheStats()

    @property
    def usage(self) -> float:
        """Fraction of blocks some request holds (cached free blocks count as free)."""
        return self.pool.num_used_blocks / self.pool.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        """The ids of the request's blocks, in order: the manager's own list, so callers must not mutate it.

        Later allocations append to it in place; freeing the request drops it unchanged, so a batch that
        holds it keeps its table.
        """
        return self._block_ids.get(request_id, [])

    def find_cached_prefix(self, request: Request) -> list[KVCacheBlock]:
        """The cached blocks of the request's longest cached prefix, leaving at least one token to compute.

        The caller records the lookup in `stats` once the request is actually admitted.

        Requests asking for prompt logprobs must compute every prompt position, so they get none.
        """
        if request.sampling_params.prompt_logprobs is not None:
            return []
        self._hash_full_blocks(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_lookup(self, num_tokens: int, num_hits: int) -> None:
        self.stats.queries += num_tokens
        self.stats.hits += num_hits

    def allocate(self, request: Request, num_new_tokens: int, cached: list[KVCacheBlock] = ()) -> bool:
        """Reserve blocks for `num_new_tokens` more tokens after the computed and `cached` ones.

        Returns False, changing nothing, when the pool has too few free blocks.
        """
        request_id = request.request_id
        held = self.blocks.get(request_id)
        num_tokens_after = request.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        # Most decode steps: the held blocks have room and every block this step fills is already
        # registered, so there is nothing to do (the general path below would change nothing).
        if (
            held is not None
            and not cached
            and num_tokens_after <= len(held) * self.block_size
            and num_tokens_after // self.block_size <= self.num_registered[request_id]
        ):
            return True
        num_held = 0 if held is None else len(held)
        num_new_blocks = -(-num_tokens_after // self.block_size) - num_held - len(cached)
        num_revived = sum(1 for block in cached if block.ref_count == 0)
        if max(num_new_blocks, 0) + num_revived > self.pool.num_free_blocks:
            return False
        if held is None:
            held = self.blocks[request_id] = []
            self._block_ids[request_id] = []
        new_blocks = list(cached)
        self.pool.touch(new_blocks)
        if num_new_blocks > 0:
            new_blocks += self.pool.allocate(num_new_blocks)
        held += new_blocks
        self._block_ids[request_id] += [block.block_id for block in new_blocks]
        self._cache_full_blocks(request, held, min(num_tokens_after, request.num_tokens))
        return True

    def free(self, request: Request) -> None:
        """Release a request's blocks, tail first so the shared prefix stays cached longest.

        Blocks this step was to fill but never will (the request is being preempted) are forgotten by
        the prefix cache, since their contents will never be written.
        """
        held = self.blocks.pop(request.request_id, [])
        self._block_ids.pop(request.request_id, None)
        self.num_registered.pop(request.request_id, None)
        num_computed_blocks = request.num_computed_tokens // self.block_size
        for block in held[num_computed_blocks:]:
            if block.ref_count == 1:
                self.pool.uncache(block)
        self.pool.free(reversed(held))

    def _hash_full_blocks(self, request: Request) -> None:
        hashes = request.block_hashes
        size = self.block_size
        for index in range(len(hashes), request.num_tokens // size):
            parent = hashes[-1] if hashes else (request.cache_salt or "").encode()
            hashes.append(hash_block(parent, request.token_ids[index * size : (index + 1) * size]))

    def _cache_full_blocks(self, request: Request, held: list[KVCacheBlock], num_tokens: int) -> None:
        self._hash_full_blocks(request)
        first = self.num_registered.get(request.request_id, 0)
        last = num_tokens // self.block_size
        for index in range(first, last):
            self.pool.cache(held[index], request.block_hashes[index])
        self.num_registered[request.request_id] = max(first, last)
