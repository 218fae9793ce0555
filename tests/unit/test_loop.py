"""ControlLoop with an in-process fake planner and executor over the simulated cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.daemon.loop import ControlLoop
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState
from rebalancerd.domain.plan import (
    Migration,
    MigrationPlan,
    PlanStats,
    PlanStep,
    Reason,
    ReasonKind,
)
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy, default_policy
from rebalancerd.sim.cluster import LoadModel, SimCluster, SimTelemetry, SimVm


class FakeExecutor:
    def __init__(self) -> None:
        self.plans: list[MigrationPlan] = []
        self.applied: list[bool] = []

    async def execute(
        self,
        plan: MigrationPlan,
        snapshot: ClusterSnapshot,
        policy: Policy,
        *,
        applied: bool,
        observed: bool = False,
    ) -> Any:
        self.plans.append(plan)
        self.applied.append(applied)
        return None

    def frozen_vms(self) -> frozenset[str]:
        return frozenset({"cooling"})


def cluster(clock: VirtualClock) -> SimCluster:
    c = SimCluster(
        clock, [Host("a", cores=4, memory_mib=8192), Host("b", cores=4, memory_mib=8192)]
    )
    c.add_vm("a", SimVm("v1", 2, 2048, LoadModel(1500, amplitude=0)))
    c.add_vm("a", SimVm("v2", 2, 2048, LoadModel(1500, amplitude=0)))
    return c


def one_move_planner(calls: list[dict[str, Any]]) -> Any:
    def plan(snap: ClusterSnapshot, policy: Policy, **kw: Any) -> MigrationPlan:
        calls.append(kw | {"snap": snap})
        m = Migration("v2", "a", "b", Reason(ReasonKind.HOTSPOT, "a hot"), 2048)
        return MigrationPlan((PlanStep((m,)),), PlanStats(planner="fake", status="FEASIBLE"))

    return plan


async def test_cycle_plans_and_hands_plan_to_executor() -> None:
    clock = VirtualClock()
    c = cluster(clock)
    tel = SimTelemetry(c)
    ex = FakeExecutor()
    calls: list[dict[str, Any]] = []
    metrics = MemoryMetrics()
    loop = ControlLoop(tel, default_policy, ex, clock, metrics, planner=one_move_planner(calls))
    r = await loop.cycle()
    assert r.status == "planned"
    assert len(ex.plans) == 1 and ex.plans[0].migrations[0].vm == "v2"
    assert ex.applied == [True]
    assert calls[0]["frozen"] == {"cooling"}
    assert calls[0]["applied"] is True
    assert calls[0]["snap"].vm("v1").cpu_used_mc == 1500
    assert metrics.total("migrations_planned_total", reason="hotspot") == 1
    assert metrics.gauge("host_load_ratio", host="a", resource="cpu") == 0.75
    # memory on the default `used` basis: the sim's guests use 3/4 of their 2 GiB each
    assert metrics.gauge("cluster_imbalance_ratio") == 0.5625  # (0.75 cpu + 0.375 mem) / 2
    assert loop.state.last_ok_monotonic is not None


async def test_stale_data_is_never_planned_on() -> None:
    clock = VirtualClock()
    tel = SimTelemetry(cluster(clock))
    tel.tick()
    clock.advance(500)
    ex = FakeExecutor()
    calls: list[dict[str, Any]] = []
    loop = ControlLoop(
        tel,
        default_policy,
        ex,
        clock,
        MemoryMetrics(),
        planner=one_move_planner(calls),
        max_data_age_s=120,
    )
    r = await loop.cycle()
    assert r.status == "stale" and not calls and not ex.plans


async def test_no_active_host_and_backoff_skip_planning() -> None:
    clock = VirtualClock()
    c = cluster(clock)
    for h in ("a", "b"):
        c.set_host_state(h, HostState.STALE)
    calls: list[dict[str, Any]] = []
    loop = ControlLoop(
        SimTelemetry(c),
        default_policy,
        FakeExecutor(),
        clock,
        MemoryMetrics(),
        planner=one_move_planner(calls),
    )
    assert (await loop.cycle()).status == "no_hosts"
    c2 = cluster(clock)
    loop2 = ControlLoop(
        SimTelemetry(c2),
        default_policy,
        FakeExecutor(),
        clock,
        MemoryMetrics(),
        planner=one_move_planner(calls),
        backoff=lambda: 30.0,
    )
    assert (await loop2.cycle()).status == "backoff"
    assert not calls


async def test_planner_crash_is_survived_and_counted() -> None:
    clock = VirtualClock()

    def boom(*a: Any, **k: Any) -> MigrationPlan:
        raise RuntimeError("solver exploded")

    metrics = MemoryMetrics()
    loop = ControlLoop(
        SimTelemetry(cluster(clock)), default_policy, FakeExecutor(), clock, metrics, planner=boom
    )
    r = await loop.cycle()
    assert r.status == "error" and "solver exploded" in r.detail
    assert metrics.total("errors_total", where="cycle") == 1


async def test_run_cycles_on_interval_wakes_early_and_stops() -> None:
    clock = VirtualClock()
    calls: list[dict[str, Any]] = []
    tel = SimTelemetry(cluster(clock), interval_s=10)
    loop = ControlLoop(
        tel,
        default_policy,
        FakeExecutor(),
        clock,
        MemoryMetrics(),
        planner=one_move_planner(calls),
        interval_s=100,
        plan_in_thread=False,
    )
    stop = asyncio.Event()
    t_tel = asyncio.create_task(tel.run())
    t_loop = asyncio.create_task(loop.run(stop))
    await clock.sleep(250)
    assert loop.state.cycles == 3  # t=0, 100, 200
    t_before = clock.monotonic()
    loop.wake()
    for _ in range(5):  # fewer yields than the virtual clock needs to advance time
        await asyncio.sleep(0)
    assert loop.state.cycles == 4 and clock.monotonic() == t_before
    stop.set()
    await asyncio.wait_for(t_loop, 1)
    t_tel.cancel()


async def test_every_fresh_cycle_lets_the_executor_judge_the_last_wave() -> None:
    clock = VirtualClock()

    class Judging(FakeExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.observed: list[int] = []

        def observe_snapshot(
            self, snap: ClusterSnapshot, policy: Policy, *, applied: bool = False
        ) -> None:
            assert applied
            self.observed.append(len(snap.vms))

    def nothing(snap: ClusterSnapshot, policy: Policy, **kw: Any) -> MigrationPlan:
        return MigrationPlan(stats=PlanStats(status="NOTHING_TO_DO"))

    ex = Judging()
    tel = SimTelemetry(cluster(clock))
    loop = ControlLoop(
        tel, default_policy, ex, clock, MemoryMetrics(), planner=nothing, max_data_age_s=120
    )
    assert (await loop.cycle()).status == "nothing_to_do"
    assert ex.observed == [2] and not ex.plans
    clock.advance(500)  # stale: nothing is judged on old data
    assert (await loop.cycle()).status == "stale"
    assert ex.observed == [2]


async def test_a_cycle_applies_the_policy_once_and_judges_the_wave_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real planner and real (dry-run) executor: the loop applies the policy to the snapshot
    once and hands that effective snapshot on; the executor's help tracker sees one look per
    cycle (its `max_looks` would otherwise run out twice as fast)."""
    import rebalancerd.daemon.loop as loop_mod
    import rebalancerd.execution.executor as executor_mod
    import rebalancerd.planner.core as planner_core
    from rebalancerd.execution.executor import Executor
    from rebalancerd.execution.journal import Journal
    from rebalancerd.policy.resolve import apply_policy

    applied: list[str] = []

    def counting(where: str) -> Any:
        def apply(policy: Policy, snapshot: ClusterSnapshot, now: float) -> ClusterSnapshot:
            applied.append(where)
            return apply_policy(policy, snapshot, now)

        return apply

    for mod, where in ((loop_mod, "loop"), (planner_core, "planner"), (executor_mod, "executor")):
        monkeypatch.setattr(mod, "apply_policy", counting(where))
    clock = VirtualClock()
    c = cluster(clock)
    c.add_vm("a", SimVm("v3", 1, 1024, LoadModel(900, amplitude=0)))
    ex = Executor(c.hypervisor, clock, MemoryMetrics(), Journal.open(":memory:"), dry_run=True)
    observed: list[bool] = []
    real_observe = ex.observe_snapshot

    def observe(snap: ClusterSnapshot, policy: Policy, *, applied: bool = False) -> Any:
        observed.append(applied)
        return real_observe(snap, policy, applied=applied)

    monkeypatch.setattr(ex, "observe_snapshot", observe)
    loop = ControlLoop(
        SimTelemetry(c), default_policy, ex, clock, MemoryMetrics(), plan_in_thread=False
    )
    r = await loop.cycle()
    assert r.status == "planned" and r.plan is not None and r.plan.migrations, r
    assert applied == ["loop"]
    assert observed == [True]
