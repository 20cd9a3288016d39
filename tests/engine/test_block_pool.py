"""The block pool: allocation, reference counts, LRU eviction of cached blocks."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmserve.engine.block_pool import BlockPool
from lmserve.errors import LmserveError


def test_allocate_and_free_return_blocks_to_the_free_queue():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert [b.ref_count for b in blocks] == [1, 1, 1]
    assert pool.num_free_blocks == 1
    pool.free(blocks)
    assert pool.num_free_blocks == 4


def test_over_allocation_and_double_free_raise():
    pool = BlockPool(2)
    blocks = pool.allocate(2)
    with pytest.raises(LmserveError):
        pool.allocate(1)
    pool.free(blocks)
    with pytest.raises(LmserveError, match="double free"):
        pool.free(blocks[:1])


def test_freed_cached_block_is_revived_by_touch_and_evicted_least_recently_used_first():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache(a, b"a")
    pool.cache(b, b"b")
    pool.free([a])
    pool.free([b])
    pool.free([c])
    assert pool.lookup(b"a") is a
    pool.touch([a])  # revived: no longer free
    assert a.ref_count == 1 and pool.num_free_blocks == 2
    (first,) = pool.allocate(1)  # b was freed before c, so b goes first and loses its hash
    assert first is b and pool.lookup(b"b") is None and b.block_hash is None
    assert pool.lookup(b"a") is a


def test_a_hash_is_cached_once():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache(a, b"h")
    pool.cache(b, b"h")
    assert pool.lookup(b"h") is a and b.block_hash is None


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=60))
def test_random_allocate_free_keeps_counts_consistent(operations):
    pool = BlockPool(8)
    held = []
    for allocate, count in operations:
        if allocate:
            count = min(count, pool.num_free_blocks)
            held.append(pool.allocate(count))
        elif held:
            pool.free(held.pop(count % len(held)))
        in_use = sum(len(group) for group in held)
        assert pool.num_used_blocks == in_use
        assert all((b.ref_count == 0) == (b.block_id in pool.free_queue) for b in pool.blocks)
    for group in held:
        pool.free(group)
    assert pool.num_free_blocks == 8 and all(b.ref_count == 0 for b in pool.blocks)
