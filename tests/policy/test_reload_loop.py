"""Reload under a running control loop (real loop, real planner, real store and watcher; fake
telemetry and a recording executor): a valid edit applies from the next cycle, an invalid edit
keeps the old policy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.daemon.loop import ControlLoop, CycleReport
from rebalancerd.daemon.policy_source import PolicyStore, PolicyWatcher
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.domain.plan import MigrationPlan, ReasonKind
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Mode, Policy

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


class Telemetry:
    def __init__(self, snap: ClusterSnapshot) -> None:
        self.snap = snap

    async def run(self) -> None:
        await asyncio.Event().wait()

    def current(self) -> ClusterSnapshot:
        return self.snap

    def data_age_s(self) -> float:
        return 0.0


class RecordingExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[MigrationPlan, Policy]] = []

    async def execute(
        self,
        plan: MigrationPlan,
        snapshot: ClusterSnapshot,
        policy: Policy,
        *,
        applied: bool,
        observed: bool = False,
    ) -> Any:
        self.calls.append((plan, policy))
        return None

    def frozen_vms(self) -> frozenset[str]:
        return frozenset()


def cluster() -> ClusterSnapshot:
    hosts = tuple(Host(f"hv{i}", 16, 65536) for i in range(1, 5))
    vms = [Vm(f"hot{j}", "hv1", 4, 6144, cpu_used_mc=1800) for j in range(6)]
    vms += [Vm(f"m{j}", "hv3", 2, 2048, cpu_used_mc=500) for j in range(2)]
    vms += [Vm(f"e{i}", f"hv{i}", 2, 4096, cpu_used_mc=1000) for i in (2, 4)]
    return ClusterSnapshot(hosts, tuple(vms), taken_at=1_767_225_600.0)


async def test_reload_under_a_running_loop(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(HEAD + "name: first\nmode: balance\n")
    clock = VirtualClock(start=1_767_225_600.0)
    metrics = MemoryMetrics()
    store = PolicyStore(tmp_path, metrics, clock)
    watcher = PolicyWatcher(store, clock, interval_s=5)
    executor = RecordingExecutor()
    reports: list[CycleReport] = []
    stop = asyncio.Event()

    def edits(report: CycleReport) -> None:
        """Operators edit the file while the loop runs; the watcher notices between cycles."""
        reports.append(report)
        n = report.number
        if n == 1:
            f.write_text(HEAD + "name: second\nmode: drain\nrules:\n  maintenance: [{host: hv3}]\n")
        elif n == 2:
            f.write_text(HEAD + "name: third\nmode: consolidate\nlimits: {max_concurent: 1}\n")
        elif n == 3:
            f.write_text(HEAD + "name: fourth\nmode: advisory\nmode: balance\n")  # duplicate key
        if n >= 4:
            stop.set()
            return
        watcher.request_reload()  # as SIGHUP does; the mtime may not have moved yet
        assert watcher.poll() is not None

    loop = ControlLoop(
        Telemetry(cluster()),
        store,
        executor,
        clock,
        metrics,
        interval_s=60,
        planner_time_limit_s=1.0,
        plan_in_thread=False,
        on_cycle=edits,
    )
    await asyncio.wait_for(loop.run(stop), timeout=120)

    assert [r.status for r in reports] == ["planned"] * 4, [(r.status, r.detail) for r in reports]
    assert [r.policy for r in reports] == ["first", "second", "second", "second"]
    # cycle 1 balanced hv1's hot VMs; cycle 2 (drain, hv3 in maintenance) only drained hv3
    first_plan, first_policy = executor.calls[0]
    assert first_policy.mode is Mode.BALANCE
    assert "hv1" in {m.source for m in first_plan.migrations}
    assert ReasonKind.DRAIN not in {m.reason.kind for m in first_plan.migrations}
    second_plan, second_policy = executor.calls[1]
    assert second_policy.mode is Mode.DRAIN
    assert {m.vm for m in second_plan.migrations} == {"m0", "m1"}
    assert {m.reason.kind for m in second_plan.migrations} == {ReasonKind.DRAIN}
    # the two broken edits were refused and counted; the drain policy stayed in force
    assert executor.calls[2][1] is second_policy and executor.calls[3][1] is second_policy
    assert metrics.total("policy_reloads_total", result="ok") == 2  # start + second
    assert metrics.total("policy_reloads_total", result="error") == 2
    assert metrics.gauge("policy_reload_success") == 0.0
    assert store.current() is second_policy
