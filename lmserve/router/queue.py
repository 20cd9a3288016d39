"""The router's one queue: requests of every model wait here, lowest priority value first, for a slot on
one of their model's replicas (at most max_outstanding_per_backend requests in flight on each)."""

from __future__ import annotations

import asyncio
import bisect
import itertools
from dataclasses import dataclass, field
from http import HTTPStatus

from lmserve.errors import ServerOverloadedError
from lmserve.router.backend import Backend
from lmserve.router.metrics import RouterMetrics
from lmserve.router.replica_group import ReplicaGroup
from lmserve.server.errors import ServerError


@dataclass(order=True)
class _Waiter:
    priority: int
    sequence: int  # first come, first served within a priority
    group: ReplicaGroup = field(compare=False)
    key: str | None = field(compare=False)
    tried: set[str] = field(compare=False)
    granted: asyncio.Future[Backend] = field(compare=False)


class DispatchQueue:
    """Hands out replica slots. `acquire` waits for one (or refuses), `release` gives it back.

    Every change that may free a slot (a request ends, a replica comes back) runs `dispatch`, which
    walks the waiting requests in order and grants each whose group's policy picks a replica: a request
    whose model's replicas are all busy does not hold up requests for other models.
    """

    def __init__(self, max_size: int, max_wait: float, metrics: RouterMetrics) -> None:
        self.max_size = max_size
        self.max_wait = max_wait
        self.metrics = metrics
        self._waiting: list[_Waiter] = []
        self._sequence = itertools.count()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    async def acquire(
        self, group: ReplicaGroup, key: str | None, priority: int, tried: set[str], retry: bool = False
    ) -> Backend:
        """A replica of `group` with a slot taken for the caller, who must `release` it.

        Raises ServerOverloadedError (429) when the queue is full (a retry, admitted already, is never
        refused for that) or after max_wait seconds, or a 503 ServerError then if no replica is healthy.
        """
        if not retry and len(self._waiting) >= self.max_size:
            raise ServerOverloadedError(f"the router's queue is full ({self.max_size} requests waiting); retry later")
        waiter = _Waiter(priority, next(self._sequence), group, key, tried, asyncio.get_running_loop().create_future())
        bisect.insort(self._waiting, waiter)
        self.dispatch()
        try:
            async with asyncio.timeout(self.max_wait):
                return await waiter.granted
        except TimeoutError:
            self._abandon(waiter)
            raise _wait_refusal(group, self.max_wait) from None
        except asyncio.CancelledError:  # the client left
            self._abandon(waiter)
            raise

    def release(self, backend: Backend) -> None:
        backend.outstanding -= 1
        self.metrics.observe_outstanding(backend)
        self.dispatch()

    def dispatch(self) -> None:
        """Grant a slot to every waiting request that can have one now, in queue order."""
        for waiter in list(self._waiting):
            if waiter.granted.done():  # cancelled; its task removes it
                continue
            backend = waiter.group.pick(waiter.key, waiter.tried)
            if backend is not None:
                self._waiting.remove(waiter)
                backend.outstanding += 1
                self.metrics.observe_outstanding(backend)
                waiter.granted.set_result(backend)
        self.metrics.queue_depth.set(len(self._waiting))

    def _abandon(self, waiter: _Waiter) -> None:
        """Forget a request that stops waiting; a slot granted to it in the same instant goes back."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            self.metrics.queue_depth.set(len(self._waiting))
        elif waiter.granted.done() and not waiter.granted.cancelled():
            self.release(waiter.granted.result())


def _wait_refusal(group: ReplicaGroup, max_wait: float) -> Exception:
    if not group.has_healthy_backend:
        message = f"no healthy replica of model {group.name!r} came up within {max_wait:g}s; retry later"
        return ServerError(HTTPStatus.SERVICE_UNAVAILABLE, message)
    return ServerOverloadedError(f"every replica of model {group.name!r} stayed busy for {max_wait:g}s; retry later")
