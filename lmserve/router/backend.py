"""One replica as the router sees it: its load (outstanding requests) and its health, with the rules that
eject it and re-admit it. Plain state, no I/O: the health checker and the forwarder report to it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backend:
    """A replica of one model. It starts healthy, so the router serves at once; the first health checks
    or the first failed request take a dead one out."""

    url: str
    model: str  # its group's model name, for metric labels ("" for the catch-all group)
    capacity: int  # max_outstanding_per_backend
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    outstanding: int = 0
    healthy: bool = True
    failures: int = 0  # consecutive failed checks
    successes: int = 0  # consecutive passed checks

    @property
    def has_free_slot(self) -> bool:
        return self.outstanding < self.capacity

    def record_check(self, passed: bool) -> bool:
        """Take an active health check's result; True when it changed the replica's health."""
        if passed:
            self.failures, self.successes = 0, self.successes + 1
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False

    def eject(self) -> bool:
        """Take the replica out at once (a request could not reach it); True when it was healthy.

        Re-admission then needs `healthy_threshold` passed checks in a row, as after failed checks.
        """
        self.failures, self.successes = max(self.failures, self.unhealthy_threshold), 0
        was_healthy, self.healthy = self.healthy, False
        return was_healthy
