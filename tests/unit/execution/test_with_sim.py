"""The executor with the simulated hypervisor (rebalancerd.sim.hypervisor, an independent
pre-copy/post-copy timing model): the settings it chooses resolve hard guests as intended."""

from __future__ import annotations

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.execution.records import ExecutionReport
from rebalancerd.observability import MemoryMetrics
from rebalancerd.sim.hypervisor import SimDomain, SimHypervisor
from tests.unit.execution.fakes import mig, plan, policy


async def run(
    dirty: float, migration: dict[str, object], *, unreachable: str | None = None
) -> tuple[ExecutionReport, SimHypervisor, Journal]:
    clock = VirtualClock()
    hv = SimHypervisor(clock)
    for h in ("a", "b"):
        hv.add_host(h, link_mib_s=1180.0)
    hv.add_domain("a", SimDomain("v", memory_mib=4096, dirty_rate_mib_s=dirty))
    if unreachable:
        hv.hosts[unreachable].reachable = False
    snap = ClusterSnapshot(
        (Host("a", 16, 65536), Host("b", 16, 65536)),
        (Vm("v", "a", 4, 4096, dirty_rate_mib_s=dirty),),
    )
    journal = Journal.open(":memory:")
    ex = Executor(hv, clock, MemoryMetrics(), journal)
    rep = await ex.execute(
        plan([mig("v", "a", "b")]), snap, policy(migration={"default": migration})
    )
    return rep, hv, journal


async def test_idle_guest_precopy_within_downtime() -> None:
    rep, hv, _ = await run(5.0, {"max_downtime_ms": 300})
    (ok,) = rep.succeeded
    assert ok.strategy == "precopy" and ok.downtime_ms is not None and ok.downtime_ms <= 300
    assert hv.where("v") == ["b"]


async def test_guest_dirtying_faster_than_the_link_goes_post_copy() -> None:
    rep, hv, journal = await run(1500.0, {"postcopy_after_s": 30, "auto_converge": False})
    (ok,) = rep.succeeded
    assert ok.strategy == "postcopy" and hv.where("v") == ["b"]
    # switched after one full pass (about 3.5 s), not after the class's 30 s
    assert ok.duration_s is not None and ok.duration_s < 10
    assert journal.moves()[0].state == "succeeded"


async def test_same_guest_without_post_copy_is_aborted_and_stays_on_source() -> None:
    rep, hv, journal = await run(1500.0, {"auto_converge": False, "time_budget_s": 60})
    assert [r.strategy for r in rep.aborted] == ["precopy-unlikely"]
    assert hv.where("v") == ["a"] and not rep.succeeded
    assert journal.moves()[0].state == "aborted"


async def test_high_dirty_rate_uses_auto_converge_and_converges() -> None:
    rep, hv, _ = await run(800.0, {"auto_converge": True, "time_budget_s": 120})
    (ok,) = rep.succeeded
    assert ok.strategy == "auto-converge" and hv.where("v") == ["b"]


async def test_unreachable_target_is_skipped_before_anything_starts() -> None:
    rep, hv, journal = await run(5.0, {}, unreachable="b")
    assert [r.reason for r in rep.skipped] == ["hypervisor_unreachable"]
    assert hv.migrate_calls == [] and journal.moves() == []
