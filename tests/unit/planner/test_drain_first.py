"""Drains in balance mode: the host in maintenance is emptied in the plan's first waves, and
CP-SAT leaves drained VMs on the host the greedy phase gave them (its model is smaller for it:
on the maintenance benchmark snapshots the final gaps came out lower, see docs/planner.md)."""

from __future__ import annotations

import math

import pytest

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import make_plan, verify_plan
from rebalancerd.planner.greedy.run import run_greedy
from rebalancerd.planner.problem import build_problem
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import policy


@pytest.mark.parametrize(("hosts", "vms", "seed"), [(8, 60, 0), (32, 400, 0), (128, 1600, 0)])
def test_drain_takes_the_first_waves_and_keeps_the_greedy_targets(
    hosts: int, vms: int, seed: int
) -> None:
    snap = skewed_snapshot(hosts, vms, seed=seed, maintenance_hosts=1)
    limits = {"max_per_cycle": 100_000, "max_concurrent": 20, "max_per_source": 2}
    pol = policy(limits={**limits, "max_per_target": 2})
    plan = make_plan(snap, pol, now=0.0, time_limit_s=2.0, seed=0)
    assert verify_plan(snap, pol, plan, now=0.0) == []
    assert plan.stats.planner == "greedy+cp-sat"
    drains = [
        (i, m)
        for i, step in enumerate(plan.steps)
        for m in step.migrations
        if m.reason.kind is ReasonKind.DRAIN
    ]
    assert len(drains) >= 2, "the host in maintenance holds VMs to drain"
    assert any(m.reason.kind is not ReasonKind.DRAIN for m in plan.migrations)
    # two moves per wave may leave the source: the drain needs ceil(n / 2) waves, no more
    assert max(i for i, _ in drains) < math.ceil(len(drains) / 2)
    p = build_problem(apply_policy(pol, snap, 0.0), pol)
    greedy = run_greedy(p).s
    for _, m in drains:
        assert m.target == p.hosts[greedy.where[p.vm_index[m.vm]]].name
