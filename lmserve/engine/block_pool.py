"""The pool of KV cache blocks: reference counts, a free queue in LRU order, and the prefix cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from lmserve.errors import LmserveError


class KVCacheBlock:
    """One fixed-size block of KV memory. `block_hash` is set once the block is full and cached."""

    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: bytes | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock({self.block_id}, refs={self.ref_count})"


class BlockPool:
    """Hands out blocks and takes them back.

    A block nobody references sits in the free queue but keeps its hash, so a later request with the
    same prefix can revive it; blocks are reused from the front of the queue, so the least recently
    freed cached block is evicted first.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise LmserveError(f"the KV cache needs at least one block, got {num_blocks}")
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[bytes, KVCacheBlock] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def allocate(self, count: int) -> list[KVCacheBlock]:
        """Take `count` blocks off the free queue, evicting whatever they cached."""
        if count > len(self.free_queue):
            raise LmserveError(f"asked for {count} blocks, {len(self.free_queue)} free")
        blocks = []
        for _ in range(count):
            _, block = self.free_queue.popitem(last=False)
            self.uncache(block)
            block.ref_count = 1
            blocks.append(block)
        return blocks

    def lookup(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Add a reference to cached blocks a new request reuses, reviving free ones."""
        for block in blocks:
            if block.ref_count == 0:
                del self.free_queue[block.block_id]
            block.ref_count += 1

    def free(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; pass them in the order they should be evicted."""
        for block in blocks:
            if block.ref_count <= 0:
                raise LmserveError(f"double free of {block}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block.block_id] = block

    def cache(self, block: KVCacheBlock, block_hash: bytes) -> None:
        """Register a full block under its hash; a block already cached under that hash stays the one."""
        if block.block_hash is None and block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def uncache(self, block: KVCacheBlock) -> None:
        """Forget a block's hash: its contents are not (or no longer) what the hash promises."""
        if block.block_hash is not None:
            del self.cached[block.block_hash]
            block.block_hash = None
