"""The scheduler and KV cache manager driven by a fake model that records what each cache slot holds.

The fake runner writes (token id, position) into the slots the step's tokens map to, then checks that
every context slot a request reads holds that request's own token at that position: so prefix sharing,
preemption and same-step reuse can never hand a request someone else's KV.
"""

import random
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmserve.config import SchedulerConfig
from lmserve.engine.kv_cache_manager import KVCacheManager
from lmserve.engine.messages import EngineCoreRequest
from lmserve.engine.request import Request, RequestStatus
from lmserve.engine.scheduler import Scheduler, SchedulerOutput
from lmserve.sampling_params import SamplingParams
from lmserve.worker.input_preparation import BlockTableRows

EOS = 0


class FakeRunner:
    """Stands in for the model: fills cache slots and samples tokens from a seeded RNG.

    It also keeps block tables as the model runner does (`BlockTableRows`) and checks each step's against
    the scheduler's block lists, so the random interleavings below cover those persistent rows too.
    """

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        self.block_size = block_size
        self.slots = np.full((num_blocks * block_size, 2), -1)
        self.rng = random.Random(seed)
        self.last_sampled: dict[str, int] = {}  # like the device, it knows tokens the scheduler does not yet
        self.block_tables = BlockTableRows(num_rows=1, num_columns=1)  # grown as needed

    def token_at(self, request: Request, position: int) -> int:
        if position < request.num_tokens:
            return request.token_ids[position]
        assert position == request.num_tokens, "at most one token may be pending"
        return self.last_sampled[request.request_id]

    def slot(self, block_ids: list[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def execute(self, batch: SchedulerOutput) -> list[int | None]:
        self.block_tables.release(batch.finished_request_ids)
        table = self.block_tables.gather(batch)
        for row, ids in zip(table.tolist(), batch.block_ids, strict=True):
            assert row == ids + [0] * (len(row) - len(ids))
        steps = list(zip(batch.requests, batch.num_computed_tokens, batch.num_new_tokens, batch.block_ids, strict=True))
        for request, start, num_new, block_ids in steps:
            for position in range(start, start + num_new):
                self.slots[self.slot(block_ids, position)] = (self.token_at(request, position), position)
        sampled = []
        for (request, start, num_new, block_ids), samples in zip(steps, batch.samples, strict=True):
            for position in range(start + num_new):
                token, written_at = self.slots[self.slot(block_ids, position)]
                assert (token, written_at) == (self.token_at(request, position), position), (request, position)
            sampled.append(self.rng.randrange(0, 6) if samples else None)
        self.last_sampled = {r.request_id: t for r, t in zip(batch.requests, sampled, strict=True) if t is not None}
        return sampled


class OverlappedSteps:
    """Steps as the engine core does with async scheduling: step k is scheduled and run before step k-1's
    tokens reach the scheduler."""

    def __init__(self, scheduler: Scheduler, runner: FakeRunner) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.in_flight: tuple[SchedulerOutput, list[int | None]] | None = None

    def step(self) -> tuple[SchedulerOutput, list[Request]]:
        batch = self.scheduler.schedule()
        sampled = self.runner.execute(batch)
        finished = [] if self.in_flight is None else self.scheduler.update_from_output(*self.in_flight)
        self.in_flight = (batch, sampled)
        return batch, finished


def make_request(request_id, prompt, max_tokens=8, priority=0, arrival=None, **params):
    return Request(
        EngineCoreRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            sampling_params=SamplingParams(max_tokens=max_tokens, **params),
            eos_token_ids=(EOS,),
            arrival_time=time.monotonic() if arrival is None else arrival,
            max_tokens=max_tokens,
            priority=priority,
        )
    )


def make_batch(requests: list[Request], num_new_tokens: list[int], block_ids: list[list[int]]) -> SchedulerOutput:
    """A hand-made step: each request computes `num_new_tokens` after its `num_computed_tokens`, and samples
    if that reaches its last token. Unlike the scheduler, it leaves the requests' counts as they are."""
    starts = [request.num_computed_tokens for request in requests]
    ends = [start + n for start, n in zip(starts, num_new_tokens, strict=True)]
    samples = [end == request.num_tokens for request, end in zip(requests, ends, strict=True)]
    return SchedulerOutput(requests, num_new_tokens, starts, samples, block_ids)


def make_scheduler(num_blocks=64, block_size=4, max_num_batched_tokens=32, max_num_seqs=8):
    kv_cache = KVCacheManager(num_blocks, block_size)
    config = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs)
    return Scheduler(config, kv_cache), FakeRunner(num_blocks, block_size)


def step(scheduler, runner):
    batch = scheduler.schedule()
    return batch, scheduler.update_from_output(batch, runner.execute(batch))


def check_invariants(scheduler: Scheduler, batch: SchedulerOutput) -> None:
    config, kv_cache = scheduler.config, scheduler.kv_cache
    assert batch.total_num_tokens <= config.max_num_batched_tokens
    assert len(batch.requests) <= config.max_num_seqs and len(scheduler.running) <= config.max_num_seqs
    assert len({r.request_id for r in batch.requests}) == len(batch.requests)
    holders: dict[int, int] = {}
    for blocks in kv_cache.blocks.values():
        assert len({b.block_id for b in blocks}) == len(blocks), "a request holds a block twice"
        for block in blocks:
            holders[block.block_id] = holders.get(block.block_id, 0) + 1
    for block in kv_cache.pool.blocks:
        assert block.ref_count == holders.get(block.block_id, 0)
        assert (block.ref_count == 0) == (block.block_id in kv_cache.pool.free_queue)
    for block_hash, block in kv_cache.pool.cached.items():
        assert block.block_hash == block_hash
    for request in scheduler.running:
        assert request.status == RequestStatus.RUNNING
    for request in scheduler.waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert request.request_id not in kv_cache.blocks


def test_a_long_prompt_is_prefilled_in_chunks_then_decoded():
    scheduler, runner = make_scheduler(max_num_batched_tokens=8)
    request = make_request("a", list(range(1, 21)), max_tokens=3, ignore_eos=True)
    scheduler.add_request(request)
    chunks = []
    while scheduler.has_unfinished_requests():
        batch, _ = step(scheduler, runner)
        chunks.append(batch.num_new_tokens[0])
    assert chunks == [8, 8, 4, 1, 1]
    assert request.status == RequestStatus.FINISHED_LENGTH and request.num_output_tokens == 3


def test_decodes_are_scheduled_before_new_prefills():
    scheduler, runner = make_scheduler(max_num_batched_tokens=10)
    scheduler.add_request(make_request("first", [1, 2, 3], ignore_eos=True))
    step(scheduler, runner)
    scheduler.add_request(make_request("second", list(range(1, 31)), ignore_eos=True))
    batch, _ = step(scheduler, runner)
    assert [r.request_id for r in batch.requests] == ["first", "second"]
    assert batch.num_new_tokens == [1, 9]


def test_prefix_cache_shares_full_blocks_even_within_one_step():
    scheduler, runner = make_scheduler(block_size=4, max_num_batched_tokens=64)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks of 4
    scheduler.add_request(make_request("a", prompt))
    scheduler.add_request(make_request("b", prompt))
    batch, _ = step(scheduler, runner)
    assert batch.num_new_tokens == [13, 1]  # b reuses a's 3 full blocks, registered this very step
    a_blocks, b_blocks = batch.block_ids
    assert a_blocks[:3] == b_blocks[:3] and a_blocks[3] != b_blocks[3]
    assert scheduler.kv_cache.stats.hits == 12


def test_a_fully_cached_prompt_still_computes_its_last_token():
    scheduler, runner = make_scheduler(block_size=4)
    prompt = list(range(1, 9))  # exactly 2 blocks
    scheduler.add_request(make_request("a", prompt, max_tokens=1))
    step(scheduler, runner)
    scheduler.add_request(make_request("b", prompt, max_tokens=1))
    batch, _ = step(scheduler, runner)
    assert batch.num_new_tokens == [4]  # the last block is recomputed, not shared
    assert batch.requests[0].num_cached_tokens == 4


def test_preemption_frees_the_latest_lowest_priority_request_and_recomputes_it():
    scheduler, runner = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    early = make_request("early", list(range(1, 9)), max_tokens=8, ignore_eos=True, arrival=1.0)
    late = make_request("late", list(range(11, 19)), max_tokens=8, ignore_eos=True, arrival=2.0)
    scheduler.add_request(early)
    scheduler.add_request(late)
    while late.status != RequestStatus.PREEMPTED:
        batch, _ = step(scheduler, runner)
        check_invariants(scheduler, batch)
    assert scheduler.num_preemptions >= 1 and early.status == RequestStatus.RUNNING
    tokens_before = list(late.token_ids)
    while scheduler.has_unfinished_requests():
        batch, _ = step(scheduler, runner)
        check_invariants(scheduler, batch)
    assert late.token_ids[: len(tokens_before)] == tokens_before  # nothing generated was lost
    assert early.num_output_tokens == late.num_output_tokens == 8


def test_higher_priority_is_preempted_last():
    scheduler, runner = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    important = make_request("important", list(range(1, 9)), ignore_eos=True, priority=-1, arrival=2.0)
    other = make_request("other", list(range(11, 19)), ignore_eos=True, priority=0, arrival=1.0)
    scheduler.add_request(other)
    scheduler.add_request(important)
    while scheduler.num_preemptions == 0:
        step(scheduler, runner)
    assert important.status == RequestStatus.RUNNING and other.status == RequestStatus.PREEMPTED


def test_abort_frees_blocks_at_any_time():
    scheduler, runner = make_scheduler(max_num_batched_tokens=4)
    scheduler.add_request(make_request("a", list(range(1, 11))))
    step(scheduler, runner)
    assert scheduler.kv_cache.pool.num_used_blocks > 0
    scheduler.abort_request("a")
    assert scheduler.kv_cache.pool.num_used_blocks == 0 and not scheduler.has_unfinished_requests()
    assert scheduler.abort_request("a") is None
    batch = scheduler.schedule()
    assert batch.finished_request_ids == {"a"}


def test_stop_token_ids_and_eos_wait_for_min_tokens():
    scheduler, _ = make_scheduler()
    request = make_request("a", [1, 2], max_tokens=10, stop_token_ids=[3], min_tokens=3)
    scheduler.add_request(request)
    for token in [3, EOS]:  # outputs 1 and 2 are below min_tokens and do not stop it
        batch = scheduler.schedule()
        scheduler.update_from_output(batch, [token])
        assert request.status == RequestStatus.RUNNING
    batch = scheduler.schedule()
    scheduler.update_from_output(batch, [3])
    assert request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason == 3


def test_max_tokens_finishes_with_length():
    scheduler, _ = make_scheduler()
    request = make_request("a", [1, 2], max_tokens=2)
    scheduler.add_request(request)
    for _ in range(2):
        scheduler.update_from_output(scheduler.schedule(), [4])
    assert request.status == RequestStatus.FINISHED_LENGTH and request.output_token_ids == [4, 4]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_interleavings_never_leak_or_corrupt(data):
    """Any mix of adds, aborts and steps, the steps run one at a time or overlapped."""
    block_size = data.draw(st.sampled_from([1, 2, 4, 8]), label="block_size")
    max_model_len = 48
    num_blocks = data.draw(st.integers(max_model_len // block_size, 4 * max_model_len // block_size))
    scheduler, runner = make_scheduler(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_batched_tokens=data.draw(st.integers(1, 40), label="budget"),
        max_num_seqs=data.draw(st.integers(1, 6), label="max_num_seqs"),
    )
    runner.rng.seed(data.draw(st.integers(0, 1000)))
    overlapped = data.draw(st.booleans(), label="overlapped")
    stepper = OverlappedSteps(scheduler, runner) if overlapped else None

    def next_step():
        return stepper.step() if overlapped else step(scheduler, runner)

    added, ended = {}, set()
    for op_index in range(data.draw(st.integers(1, 60), label="num_ops")):
        op = data.draw(st.sampled_from(["add", "step", "step", "step", "abort"]))
        if op == "add":
            prefix = data.draw(st.sampled_from([[], [1, 2, 3, 4, 5, 6, 7, 8], [5, 5, 5, 5]]))
            prompt = prefix + data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=20))
            max_tokens = data.draw(st.integers(1, max_model_len - len(prompt)))
            request = make_request(
                f"r{op_index}", prompt, max_tokens=max_tokens, priority=data.draw(st.integers(0, 2)),
                arrival=float(op_index),
            )
            added[request.request_id] = request
            scheduler.add_request(request)
        elif op == "abort" and scheduler.requests:
            victim = data.draw(st.sampled_from(sorted(scheduler.requests)))
            scheduler.abort_request(victim)
            ended.add(victim)
        else:
            batch, finished = next_step()
            check_invariants(scheduler, batch)
            ended.update(r.request_id for r in finished)
    for _ in range(10_000):
        if not scheduler.has_unfinished_requests():
            break
        batch, finished = next_step()
        check_invariants(scheduler, batch)
        ended.update(r.request_id for r in finished)
    assert not scheduler.has_unfinished_requests(), "requests never finished"
    assert ended == set(added)
    assert all(r.status.finished for r in added.values())
    for request in added.values():  # overlapped steps never sample past max_tokens
        assert request.num_output_tokens <= request.max_tokens
        if request.status == RequestStatus.FINISHED_LENGTH:
            assert request.num_output_tokens == request.max_tokens
    assert scheduler.kv_cache.pool.num_free_blocks == num_blocks
    assert all(block.ref_count == 0 for block in scheduler.kv_cache.pool.blocks)
    assert not scheduler.kv_cache.blocks
