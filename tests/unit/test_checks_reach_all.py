"""A check added to `domain.checks.PRECHECKS` reaches all three of its callers: the planner
does not plan the move, the executor skips it with the check's reason, the replay does not
admit it. Once as a VM-level check (this VM may not move) and once as a host-level target
check (nothing may go to that host)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain import checks
from rebalancerd.domain.checks import Check, Level, MoveFacts, Need, ReasonCode
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from rebalancerd.planner import make_plan
from rebalancerd.policy.schema import Policy
from rebalancerd.sim.admission import ProposedMove
from rebalancerd.sim.replay import Replay, View
from rebalancerd.sim.traces import read_planetlab
from tests.unit.execution.fakes import FakeHypervisor, mig, plan, policy

REASON = ReasonCode.BACKOFF
"""The new check's reason (one the scenarios below never give otherwise)."""


def new_check(level: str, vm: str, host: str) -> Check:
    if level == "vm":
        return Check(
            "test_vm_may_not_move",
            REASON,
            Level.VM,
            frozenset({Need.SNAPSHOT}),
            lambda f: REASON if f.vm_name == vm else None,
        )

    def test(f: MoveFacts) -> ReasonCode | None:
        return REASON if f.target == host else None

    return Check(
        "test_host_may_not_receive", REASON, Level.TARGET, frozenset({Need.SNAPSHOT}), test
    )


def drain_snapshot() -> ClusterSnapshot:
    """Host a is in maintenance with one VM: the planner moves it to b, the only other host."""
    hosts = (
        Host("a", 8, 32768, state=HostState.MAINTENANCE),
        Host("b", 8, 32768),
    )
    return ClusterSnapshot(hosts, (Vm("vm-x", "a", 1, 1024, cpu_used_mc=200),), taken_at=0.0)


def planned(snap: ClusterSnapshot) -> list[tuple[str, str]]:
    pol = Policy.model_validate({"apiVersion": "rebalancerd/v1", "kind": "Policy"})
    p = make_plan(snap, pol, now=0.0, time_limit_s=2.0)
    return [(m.vm, m.target) for m in p.migrations]


async def executed(snap: ClusterSnapshot) -> tuple[list[str], list[str]]:
    clock = VirtualClock()
    ex = Executor(
        FakeHypervisor.for_snapshot(clock, snap),
        clock,
        MemoryMetrics(),
        Journal.open(":memory:"),
        adaptive=AdaptiveConcurrency(slow_start=False),
    )
    rep = await ex.execute(plan([mig("vm-x", "a", "b")]), snap, policy())
    return [r.vm for r in rep.succeeded], [r.reason for r in rep.skipped]


class OneMove:
    name = "one-move"

    def decide(self, view: View) -> list[list[ProposedMove]]:
        return [[ProposedMove(0, int(view.host_of[0]), 1)]] if view.sample == 1 else []


def replayed(tmp_path: Path) -> tuple[int, dict[str, int], str, str]:
    d = tmp_path / "20110303"
    d.mkdir(exist_ok=True)
    for i in range(2):
        (d / f"vm{i}").write_text("".join("10\n" for _ in range(6)))
    pol = Policy.model_validate(
        {"apiVersion": "rebalancerd/v1", "kind": "Policy", "mode": "consolidate"}
    )
    rp = Replay(
        read_planetlab(d),
        OneMove(),
        pol,
        hosts=2,
        initial_placement=np.array([0, 0], dtype=np.int64),
    )
    r = rp.run()
    return r.summary["migrations"], r.limit_blocks, rp.dc.vm_names[0], rp.dc.host_names[1]


@pytest.mark.parametrize("level", ["vm", "target"])
async def test_a_new_check_reaches_planner_executor_and_replay(
    level: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    snap = drain_snapshot()
    # without the check: planned, executed, admitted
    assert planned(snap) == [("vm-x", "b")]
    assert await executed(snap) == (["vm-x"], [])
    moved, blocks, replay_vm, replay_target = replayed(tmp_path)
    assert moved == 1 and blocks == {}

    monkeypatch.setattr(checks, "PRECHECKS", [*checks.PRECHECKS, new_check(level, "vm-x", "b")])
    assert planned(snap) == []
    assert await executed(snap) == ([], [str(REASON)])
    monkeypatch.setattr(
        checks,
        "PRECHECKS",
        [*checks.PRECHECKS[:-1], new_check(level, replay_vm, replay_target)],
    )
    moved, blocks, _, _ = replayed(tmp_path)
    assert moved == 0 and blocks == {str(REASON): 1}
