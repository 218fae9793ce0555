"""Circuit breaker and 'did it help' tracker (pure state machines)."""

from __future__ import annotations

import pytest

from rebalancerd.execution.guards import CircuitBreaker, HelpTracker


def test_breaker_opens_after_threshold_half_opens_and_closes() -> None:
    b = CircuitBreaker(threshold=3, open_s=100)
    assert b.record("h", False, 0) is None and b.record("h", False, 1) is None
    assert b.record("h", True, 2) is None  # a success resets the count
    for t in (3, 4):
        b.record("h", False, t)
    assert b.record("h", False, 5) == "opened"
    assert b.is_open("h", 50) and b.open_hosts(50) == ["h"] and not b.is_open("x", 50)
    assert not b.is_open("h", 105) and b.tripped("h")  # half-open: a trial may run
    assert b.record("h", False, 106) == "opened"  # failed trial: a full period again
    assert b.is_open("h", 200) and not b.is_open("h", 206)
    assert b.record("h", True, 207) == "closed" and not b.tripped("h")
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


def test_help_tracker_waits_for_moves_to_show_then_judges() -> None:
    t = HelpTracker(strikes=2, backoff_s=100, max_backoff_s=250, max_looks=2)
    t.moved(0.30, {"v": "b"})
    assert t.observe(0.10, {"v": "a"}, 0) is None  # telemetry does not show the move yet
    assert t.observe(0.20, {"v": "b"}, 1) == "helped" and t.pending is None
    # two waves in a row that do not help: back off, doubling up to the cap
    for level, period in enumerate((100, 200, 250)):
        t.moved(0.20, {"v": "a"})
        assert t.observe(0.20, {"v": "a"}, 10) == "not_helped"
        t.moved(0.20, {"v": "b"})
        assert t.observe(0.25, {"v": "b"}, 10) == "backoff"
        assert t.remaining(10) == pytest.approx(period), level
    assert t.remaining(10 + 250) == 0
    # a wave whose moves never show up is dropped after max_looks snapshots
    t.moved(0.5, {"v": "c"})
    assert t.observe(0.1, {"v": "a"}, 0) is None and t.observe(0.1, {"v": "a"}, 0) is None
    assert t.pending is None
