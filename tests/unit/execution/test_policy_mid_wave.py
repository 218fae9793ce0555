"""Issue 14: a policy change reaches a wave in flight before its next move. With the simulated
hypervisor: a long migration runs, the policy flips meanwhile, the next move does not start."""

from __future__ import annotations

import asyncio

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import POLICY_CHANGED, Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.execution.records import ExecutionReport
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy
from rebalancerd.sim.hypervisor import SimDomain, SimHypervisor
from tests.unit.execution.fakes import mig, plan, policy

VMS = ("v1", "v2", "v3")


async def wave_with_flip(after: Policy, flip_at_s: float) -> tuple[ExecutionReport, SimHypervisor]:
    """Three 32 GiB moves a -> b, one at a time (each takes about 30 s on the simulated link);
    the policy in force becomes `after` `flip_at_s` seconds into the wave."""
    clock = VirtualClock()
    hv = SimHypervisor(clock)
    for h in ("a", "b"):
        hv.add_host(h, link_mib_s=1180.0)
    for v in VMS:
        hv.add_domain("a", SimDomain(v, memory_mib=32768, dirty_rate_mib_s=1.0))
    snap = ClusterSnapshot(
        (Host("a", 64, 262144), Host("b", 64, 262144)),
        tuple(Vm(v, "a", 4, 32768, dirty_rate_mib_s=1.0) for v in VMS),
    )
    before = policy(max_concurrent=1)
    in_force = [before]
    ex = Executor(
        hv,
        clock,
        MemoryMetrics(),
        Journal.open(":memory:"),
        adaptive=AdaptiveConcurrency(slow_start=False),
        policy_provider=lambda: in_force[0],
    )

    async def flip() -> None:
        await clock.sleep(flip_at_s)
        in_force[0] = after

    flipper = asyncio.create_task(flip())
    rep = await ex.execute(plan([mig(v, "a", "b") for v in VMS]), snap, before)
    flipper.cancel()
    return rep, hv


async def test_flip_to_advisory_mid_wave_stops_the_next_move() -> None:
    rep, hv = await wave_with_flip(policy(max_concurrent=1, mode="advisory"), flip_at_s=5.0)
    assert [r.vm for r in rep.succeeded] == ["v1"]  # the move in flight finishes
    assert [(r.vm, r.reason, r.detail) for r in rep.skipped] == [
        ("v2", "advisory", POLICY_CHANGED),
        ("v3", "advisory", POLICY_CHANGED),
    ]
    assert [c[0] for c in hv.migrate_calls] == ["v1"]
    assert sorted(hv.where("v2") + hv.where("v3")) == ["a", "a"]


async def test_new_exclusion_and_dry_run_reach_the_wave() -> None:
    excl = policy(max_concurrent=1, rules={"exclusions": ["v2"]})
    rep, hv = await wave_with_flip(excl, flip_at_s=5.0)
    assert [r.vm for r in rep.succeeded] == ["v1", "v3"]
    assert [(r.vm, r.reason) for r in rep.skipped] == [("v2", "excluded")]
    assert hv.where("v2") == ["a"]
    rep, hv = await wave_with_flip(policy(max_concurrent=1, dry_run=True), flip_at_s=5.0)
    assert [r.vm for r in rep.succeeded] == ["v1"]
    assert {r.reason for r in rep.skipped} == {"dry_run"}
    assert [c[0] for c in hv.migrate_calls] == ["v1"]


async def test_unchanged_policy_runs_the_whole_wave() -> None:
    rep, hv = await wave_with_flip(policy(max_concurrent=1), flip_at_s=5.0)
    assert [r.vm for r in rep.succeeded] == list(VMS) and not rep.skipped
    assert hv.where("v3") == ["b"]
