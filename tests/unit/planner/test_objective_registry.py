"""The planner asks the objective registered for the policy's mode: registering another one
for a mode changes what the planner does (greedy passes, CPU demand basis, reported value)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.planner import make_plan
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.objectives.balance import BalanceObjective
from rebalancerd.planner.objectives.demand import CpuDemand
from rebalancerd.planner.objectives.registry import objective_for, register
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import loose_limits, policy

REPORTED = 42.125


class RecordingObjective(BalanceObjective):
    """Balance without any optional greedy pass or CP-SAT, counting current CPU use, and
    reporting a fixed objective value; records each call."""

    cpu_demand = CpuDemand.CURRENT
    uses_cpsat = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def greedy_passes(self, ctx: GreedyContext) -> GreedyContext:
        self.calls.append("greedy_passes")
        return ctx

    def plan_value(self, p: Problem, s: State) -> float:
        self.calls.append("plan_value")
        return REPORTED


@pytest.fixture
def recording() -> Iterator[RecordingObjective]:
    test_objective = RecordingObjective()
    previous = register(Mode.BALANCE, test_objective)
    assert previous is not None
    try:
        yield test_objective
    finally:
        register(Mode.BALANCE, previous)


def _case() -> tuple[ClusterSnapshot, Policy]:
    snap = skewed_snapshot(16, 200, seed=2)
    return snap, policy(mode="balance", limits=loose_limits())


def test_the_registered_objective_is_the_one_the_planner_uses(
    recording: RecordingObjective,
) -> None:
    assert objective_for(Mode.BALANCE) is recording
    snap, pol = _case()
    plan = make_plan(snap, pol, now=0.0, time_limit_s=1.0)
    assert recording.calls == ["greedy_passes", "plan_value"]
    assert plan.stats.objective == REPORTED
    assert plan.stats.planner == "greedy"  # no CP-SAT
    assert plan.migrations == ()  # no balancing pass ran


def test_without_the_test_objective_the_same_case_balances() -> None:
    snap, pol = _case()
    plan = make_plan(snap, pol, now=0.0, time_limit_s=1.0)
    assert plan.migrations  # so the test above shows the objective's effect
    assert plan.stats.objective != REPORTED


def test_the_problem_counts_the_registered_objectives_cpu_demand(
    recording: RecordingObjective,
) -> None:
    snap, pol = _case()
    p = build_problem(apply_policy(pol, snap, 0.0), pol)
    current = [vm.cpu_used_mc for vm in p.vms]
    predicted = [vm.cpu_demand_mc(p.percentile, p.window) for vm in p.vms]
    assert current != predicted  # the two bases differ on this snapshot
    assert p.cpu == current
    register(Mode.BALANCE, BalanceObjective())
    assert build_problem(apply_policy(pol, snap, 0.0), pol).cpu == predicted
