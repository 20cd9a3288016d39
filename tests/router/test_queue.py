"""The router's queue: slots per replica, priority order, the size bound, the maximum wait, cancellation."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import pytest

from lmserve.errors import ServerOverloadedError
from lmserve.router.config import ReplicaGroupConfig, RouterConfig
from lmserve.router.metrics import RouterMetrics
from lmserve.router.queue import DispatchQueue
from lmserve.router.replica_group import ReplicaGroup
from lmserve.server.errors import ServerError


def group(model: str = "m", replicas: int = 1, capacity: int = 1) -> ReplicaGroup:
    config = ReplicaGroupConfig(model, [f"http://{model}{index}:8000" for index in range(replicas)])
    return ReplicaGroup(config, RouterConfig(groups=[config], max_outstanding_per_backend=capacity))


def queue(max_size: int = 10, max_wait: float = 5.0) -> DispatchQueue:
    return DispatchQueue(max_size, max_wait, RouterMetrics())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_free_slot_is_granted_at_once_and_comes_back_on_release() -> None:
    async def story() -> None:
        models = group(replicas=2)
        waiting = queue()
        first = await waiting.acquire(models, None, 0, set())
        second = await waiting.acquire(models, None, 0, set())
        assert {first.url, second.url} == {"http://m0:8000", "http://m1:8000"}
        waiting.release(first)
        assert first.outstanding == 0 and second.outstanding == 1

    asyncio.run(story())


def test_waiting_requests_get_slots_lowest_priority_value_first_then_in_arrival_order() -> None:
    async def story() -> list[str]:
        models = group()
        waiting = queue()
        held = await waiting.acquire(models, None, 0, set())
        granted: list[str] = []

        async def wait(name: str, priority: int) -> None:
            backend = await waiting.acquire(models, None, priority, set())
            granted.append(name)
            await asyncio.sleep(0)
            waiting.release(backend)

        tasks = []
        for name, priority in (("late", 5), ("urgent", -1), ("normal", 0), ("urgent too", -1)):
            tasks.append(asyncio.create_task(wait(name, priority)))
            await settle()
        assert waiting.depth == 4
        waiting.release(held)
        await asyncio.gather(*tasks)
        return granted

    assert asyncio.run(story()) == ["urgent", "urgent too", "normal", "late"]


def test_a_full_queue_refuses_new_requests_but_not_retries() -> None:
    async def story() -> None:
        models = group()
        waiting = queue(max_size=1)
        held = await waiting.acquire(models, None, 0, set())
        queued = asyncio.create_task(waiting.acquire(models, None, 0, set()))
        await settle()
        with pytest.raises(ServerOverloadedError, match="queue is full"):
            await waiting.acquire(models, None, 0, set())
        retry = asyncio.create_task(waiting.acquire(models, None, 0, {held.url}, retry=True))
        await settle()
        assert waiting.depth == 2
        waiting.release(held)
        waiting.release(await queued)
        waiting.release(await retry)

    asyncio.run(story())


def test_past_the_maximum_wait_busy_replicas_give_429_and_no_healthy_replica_503() -> None:
    async def story() -> None:
        models = group()
        waiting = queue(max_wait=0.05)
        held = await waiting.acquire(models, None, 0, set())
        with pytest.raises(ServerOverloadedError, match="busy"):
            await waiting.acquire(models, None, 0, set())
        held.eject()
        waiting.release(held)
        with pytest.raises(ServerError) as error:
            await waiting.acquire(models, None, 0, set())
        assert error.value.status == HTTPStatus.SERVICE_UNAVAILABLE
        assert waiting.depth == 0

    asyncio.run(story())


def test_a_replica_coming_back_serves_the_requests_waiting_for_it() -> None:
    async def story() -> None:
        models = group()
        waiting = queue()
        (replica,) = models.backends
        replica.eject()
        task = asyncio.create_task(waiting.acquire(models, None, 0, set()))
        await settle()
        assert not task.done()
        replica.healthy = True
        waiting.dispatch()
        assert await task is replica

    asyncio.run(story())


def test_a_request_for_a_busy_model_does_not_hold_up_another_model() -> None:
    async def story() -> None:
        busy, idle = group("busy"), group("idle")
        waiting = queue()
        held = await waiting.acquire(busy, None, 0, set())
        blocked = asyncio.create_task(waiting.acquire(busy, None, 0, set()))
        await settle()
        assert (await asyncio.wait_for(waiting.acquire(idle, None, 0, set()), 1)).model == "idle"
        waiting.release(held)
        await blocked

    asyncio.run(story())


def test_a_cancelled_wait_leaves_the_queue_and_takes_no_slot() -> None:
    async def story() -> None:
        models = group()
        waiting = queue()
        held = await waiting.acquire(models, None, 0, set())
        task = asyncio.create_task(waiting.acquire(models, None, 0, set()))
        await settle()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert waiting.depth == 0
        waiting.release(held)
        assert held.outstanding == 0

    asyncio.run(story())


def test_a_retry_avoids_the_replica_it_failed_on_while_another_is_healthy() -> None:
    async def story() -> None:
        models = group(replicas=2, capacity=5)
        waiting = queue()
        for _ in range(4):
            backend = await waiting.acquire(models, None, 0, {"http://m0:8000"}, retry=True)
            assert backend.url == "http://m1:8000"
        models.backends[1].eject()
        assert (await waiting.acquire(models, None, 0, {"http://m0:8000"}, retry=True)).url == "http://m0:8000"

    asyncio.run(story())
