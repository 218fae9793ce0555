"""rebalancerd_maintenance_vms: the VMs still on hosts in maintenance, seen by every cycle
(the RebalancerdDrainStuck alert watches it)."""

from __future__ import annotations

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.daemon.loop import ControlLoop
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState
from rebalancerd.domain.plan import MigrationPlan, PlanStats
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy, default_policy
from rebalancerd.sim.cluster import LoadModel, SimCluster, SimTelemetry, SimVm
from tests.unit.test_loop import FakeExecutor


def _no_moves(snap: ClusterSnapshot, policy: Policy, **kw: object) -> MigrationPlan:
    return MigrationPlan((), PlanStats(planner="fake", status="NOTHING_TO_DO"))


async def test_cycle_reports_vms_left_on_maintenance_hosts() -> None:
    clock = VirtualClock()
    c = SimCluster(
        clock,
        [
            Host("a", cores=4, memory_mib=8192),
            Host("b", cores=4, memory_mib=8192),
            Host("c", cores=4, memory_mib=8192),
        ],
    )
    c.add_vm("a", SimVm("v1", 1, 1024, LoadModel(500, amplitude=0)))
    c.add_vm("a", SimVm("v2", 1, 1024, LoadModel(500, amplitude=0)))
    c.add_vm("b", SimVm("v3", 1, 1024, LoadModel(500, amplitude=0)))
    drained: set[str] = set()

    def overlay(snap: ClusterSnapshot) -> ClusterSnapshot:
        return snap.with_host_states({h: HostState.MAINTENANCE for h in drained})

    metrics = MemoryMetrics()
    loop = ControlLoop(
        SimTelemetry(c),
        default_policy,
        FakeExecutor(),
        clock,
        metrics,
        planner=_no_moves,
        overlay=overlay,
        plan_in_thread=False,
    )
    await loop.cycle()
    assert metrics.gauge("maintenance_vms") == 0
    drained.add("a")
    await loop.cycle()
    assert metrics.gauge("maintenance_vms") == 2
    drained.add("c")  # an empty host in maintenance adds nothing
    await loop.cycle()
    assert metrics.gauge("maintenance_vms") == 2
