"""A post-check that hits an unreachable host: verified again on a timer (bounded back-off),
listed by `in_flight()` as unresolved with the reason, resolved as soon as both hosts answer,
never by migrating again (simulated time)."""

from __future__ import annotations

from typing import Any

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from tests.unit.execution.fakes import FakeHypervisor, cluster, mig, plan, policy


def make() -> tuple[Executor, FakeHypervisor, VirtualClock, MemoryMetrics, Journal]:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster())
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:")
    ex = Executor(hv, clock, metrics, journal, adaptive=AdaptiveConcurrency(slow_start=False))
    return ex, hv, clock, metrics, journal


def cut_after_migrate(hv: FakeHypervisor, host: str) -> None:
    """`host` stops answering as soon as the migration returns (before the post-check)."""
    orig = hv.migrate

    async def migrate(*a: Any, **kw: Any) -> Any:
        res = await orig(*a, **kw)
        hv.unreachable.add(host)
        return res

    hv.migrate = migrate  # type: ignore[method-assign]


async def test_unreachable_target_after_the_move_is_resolved_when_it_answers() -> None:
    ex, hv, clock, metrics, journal = make()
    cut_after_migrate(hv, "h1")
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.failed] == ["unverified"]  # the wave does not wait for it
    (pending,) = ex.in_flight()
    assert (pending.vm, pending.state, pending.detail) == (
        "vm0-0",
        "unresolved",
        "host h1 unreachable",
    )
    assert "vm0-0" in ex.frozen_vms()
    # ten minutes of a dead host: retried with a bounded back-off, the move stays open
    before = hv.domain_calls
    await clock.sleep(600)
    retries = (hv.domain_calls - before) // 2
    assert 5 <= retries <= 600 / ex.verify_retry_max_s + 5
    assert [f.state for f in ex.in_flight()] == ["unresolved"]
    assert [e.state for e in journal.open_moves()] == ["unverified"]
    # the host answers again: resolved within one back-off step, never migrated again
    hv.unreachable.discard("h1")
    await clock.sleep(ex.verify_retry_max_s)
    assert ex.in_flight() == [] and journal.open_moves() == []
    assert [e.state for e in journal.moves()] == ["succeeded"]
    assert "vm0-0" not in ex.frozen_vms()
    assert hv.calls == [("vm0-0", "h0", "h1")] and hv.where("vm0-0") == ["h1"]
    assert metrics.total("migrations_reconciled_total", result="succeeded") == 1


async def test_guest_found_still_on_the_source_is_resolved_as_failed() -> None:
    ex, hv, clock, metrics, journal = make()
    hv.behaviour["vm0-0"] = "fail"
    cut_after_migrate(hv, "h0")
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.failed] == ["unverified"]
    assert ex.in_flight()[0].detail == "host h0 unreachable"
    hv.unreachable.discard("h0")
    await clock.sleep(ex.verify_retry_first_s + 1)
    assert ex.in_flight() == [] and journal.open_moves() == []
    assert [e.state for e in journal.moves()] == ["failed"]
    assert hv.calls == [("vm0-0", "h0", "h1")] and hv.where("vm0-0") == ["h0"]
    assert metrics.total("migrations_reconciled_total", result="failed") == 1
