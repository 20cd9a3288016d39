"""Rows of the model runner's persistent tables, one per request while it is in the engine."""

from __future__ import annotations

from collections.abc import Iterable


class RequestRows:
    """Gives each request a row of a table that persists from step to step; rows of requests that left are
    reused. When every row is taken, `capacity` doubles: the table's owner grows its table to match."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._row_of: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))

    def get(self, request_id: str) -> int | None:
        return self._row_of.get(request_id)

    def add(self, request_id: str) -> int:
        """A free row for a request that has none."""
        if not self._free:
            self._free = list(range(2 * self.capacity - 1, self.capacity - 1, -1))
            self.capacity *= 2
        row = self._row_of[request_id] = self._free.pop()
        return row

    def release(self, request_ids: Iterable[str]) -> list[int]:
        """Free the rows of requests that left; the rows freed."""
        freed = [row for row in (self._row_of.pop(request_id, None) for request_id in request_ids) if row is not None]
        self._free += freed
        return freed
