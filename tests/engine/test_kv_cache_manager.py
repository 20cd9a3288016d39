"""The KV cache manager: block accounting per request and the prefix cache's rules."""

from hypothesis import given
from hypothesis import strategies as st

from lmserve.engine.kv_cache_manager import KVCacheManager, hash_block
from tests.engine.test_scheduler import make_request


def test_blocks_are_allocated_as_tokens_grow():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", list(range(1, 7)))
    assert manager.allocate(request, 6)
    assert len(manager.block_ids("a")) == 2
    request.num_computed_tokens = 6
    assert manager.allocate(request, 2)  # positions 6, 7 fit in block 1
    assert len(manager.block_ids("a")) == 2
    request.num_computed_tokens = 8
    assert manager.allocate(request, 1)
    assert len(manager.block_ids("a")) == 3


def test_allocation_that_does_not_fit_changes_nothing():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    request = make_request("a", list(range(1, 13)))
    assert not manager.allocate(request, 12)
    assert manager.pool.num_free_blocks == 2 and "a" not in manager.blocks


def test_block_hash_chains_through_the_parent():
    first = hash_block(b"", [1, 2])
    assert hash_block(first, [3, 4]) != hash_block(hash_block(b"", [9, 9]), [3, 4])
    assert hash_block(b"", [1, 2]) == first


def test_cache_salt_isolates_prefixes():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    salted = make_request("a", list(range(1, 10)))
    salted.cache_salt = "tenant-1"
    manager.allocate(salted, 9)
    salted.num_computed_tokens = 9
    other = make_request("b", list(range(1, 10)))
    assert manager.find_cached_prefix(other) == []
    same_salt = make_request("c", list(range(1, 10)))
    same_salt.cache_salt = "tenant-1"
    assert len(manager.find_cached_prefix(same_salt)) == 2


def test_blocks_never_computed_are_forgotten_when_freed():
    """A request preempted in the step that was to fill its blocks must not leave them in the cache."""
    manager = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", list(range(1, 10)))
    assert manager.allocate(request, 9)  # registers 2 full blocks the step is going to fill
    assert len(manager.pool.cached) == 2
    manager.free(request)  # num_computed_tokens is still 0: nothing was written
    assert manager.pool.cached == {}


def test_freed_computed_blocks_stay_cached_and_prompt_logprobs_skip_the_cache():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", list(range(1, 10)))
    manager.allocate(request, 9)
    request.num_computed_tokens = 9
    manager.free(request)
    assert len(manager.pool.cached) == 2 and manager.usage == 0.0
    again = make_request("b", list(range(1, 10)))
    assert len(manager.find_cached_prefix(again)) == 2
    wants_prompt_logprobs = make_request("c", list(range(1, 10)), prompt_logprobs=1)
    assert manager.find_cached_prefix(wants_prompt_logprobs) == []


def test_block_ids_grow_in_place_and_survive_the_free():
    """A batch may hold a request's block table while the manager moves on: it only ever grows."""
    manager = KVCacheManager(num_blocks=8, block_size=4)
    request = make_request("a", list(range(1, 5)))
    manager.allocate(request, 4)
    ids = manager.block_ids("a")
    request.num_computed_tokens = 4
    manager.allocate(request, 1)
    assert manager.block_ids("a") is ids and ids == [block.block_id for block in manager.blocks["a"]]
    manager.free(request)
    assert len(ids) == 2 and manager.block_ids("a") == []


@given(
    block_size=st.integers(1, 4),
    prompt_len=st.integers(1, 12),
    steps=st.lists(st.tuples(st.integers(1, 6), st.booleans()), max_size=30),
)
def test_blocks_are_registered_once_filled_and_known(block_size, prompt_len, steps):
    """Each step grows by a chunk, maybe up to one token not known yet (sampled by a step still in flight).

    After every allocation the request holds just enough blocks, its block ids match them, and exactly
    the leading blocks whose tokens are all scheduled and known are in the prefix cache.
    """
    manager = KVCacheManager(num_blocks=64, block_size=block_size)
    request = make_request("a", list(range(1, prompt_len + 1)))
    pending = False
    num_registered = 0
    for chunk, sampled_token_arrives in steps:
        if pending and sampled_token_arrives:
            request.append_token(len(request.token_ids) % 7 + 1)
            pending = False
        num_new = min(chunk, request.num_tokens + pending - request.num_computed_tokens)
        if num_new == 0:
            continue
        assert manager.allocate(request, num_new)
        request.num_computed_tokens += num_new
        pending = pending or request.num_computed_tokens == request.num_tokens

        held = manager.blocks["a"]
        assert len(held) == -(-request.num_computed_tokens // block_size)
        assert manager.block_ids("a") == [block.block_id for block in held]
        num_registered = max(num_registered, min(request.num_computed_tokens, request.num_tokens) // block_size)
        parent = b""
        for index, block in enumerate(held):
            if index < num_registered:
                parent = hash_block(parent, request.token_ids[index * block_size : (index + 1) * block_size])
                assert block.block_hash == parent and manager.pool.lookup(parent) is block
            else:
                assert block.block_hash is None
