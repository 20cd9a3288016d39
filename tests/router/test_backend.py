"""A replica's health: ejected after N failed checks or at once when unreachable, back after M passed checks."""

from __future__ import annotations

from lmserve.router.backend import Backend


def backend() -> Backend:
    return Backend("http://a:1", "m", capacity=2, unhealthy_threshold=3, healthy_threshold=2)


def test_failed_checks_eject_only_when_consecutive() -> None:
    replica = backend()
    results = [replica.record_check(passed) for passed in (False, False, True, False, False)]
    assert results == [False] * 5 and replica.healthy
    assert replica.record_check(False) and not replica.healthy
    assert not replica.record_check(False)  # already out: no change to report


def test_passed_checks_readmit_only_when_consecutive() -> None:
    replica = backend()
    assert replica.eject() and not replica.healthy
    assert not replica.eject()
    assert [replica.record_check(passed) for passed in (True, False, True)] == [False] * 3
    assert replica.record_check(True) and replica.healthy


def test_an_ejected_replica_needs_no_more_failures_after_readmission_to_count_afresh() -> None:
    replica = backend()
    replica.eject()
    replica.record_check(True)
    replica.record_check(True)
    assert replica.healthy
    assert not replica.record_check(False) and replica.healthy  # one failure after coming back is not enough


def test_slots() -> None:
    replica = backend()
    assert replica.has_free_slot
    replica.outstanding = 2
    assert not replica.has_free_slot
