"""Active health checks: GET each replica's health path every health_interval seconds, all at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from lmserve.router.backend import Backend


class HealthChecker:
    """Reports each check to its replica, which ejects or re-admits itself (see Backend.record_check);
    `on_change` hears of every change."""

    def __init__(
        self,
        backends: list[Backend],
        client: httpx.AsyncClient,
        path: str,
        interval: float,
        timeout: float,
        on_change: Callable[[Backend], None],
    ) -> None:
        self.backends = backends
        self.client = client
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.on_change = on_change

    async def run(self) -> None:
        """Check forever; cancel the task to stop."""
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval)

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(backend) for backend in self.backends))

    async def _check(self, backend: Backend) -> None:
        try:
            response = await self.client.get(backend.url + self.path, timeout=self.timeout)
            passed = response.status_code == 200
        except httpx.HTTPError:
            passed = False
        if backend.record_check(passed):
            self.on_change(backend)
