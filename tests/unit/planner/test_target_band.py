"""Target band (planner/greedy/target.py): the band is reached with moves near the lower bound,
nothing moves once it holds, the overcommit rule holds at every step, network-only plans."""

from __future__ import annotations

import pytest

from rebalancerd.planner import make_plan
from rebalancerd.planner.verify import verify_plan
from rebalancerd.sim.independent import VARIANTS, independent_snapshot
from tests.unit.planner.helpers import policy

LIMITS = {"max_per_cycle": 100_000, "max_concurrent": 20, "max_per_source": 2, "max_per_target": 2}


@pytest.mark.parametrize("variant", VARIANTS)
def test_band_plan_is_safe_and_near_its_bound(variant: str) -> None:
    snap = independent_snapshot(8, 60, seed=2, variant=variant)
    pol = policy(targets={"max_gap": 0.10, "memory_overcommit": 2.0}, limits=LIMITS)
    plan = make_plan(snap, pol, now=0.0, time_limit_s=5.0)
    assert verify_plan(snap, pol, plan, now=0.0) == []
    st = plan.stats
    assert st.moves_lower_bound is not None
    assert len(plan.migrations) >= st.moves_lower_bound or st.band_met is False


def test_nothing_moves_once_the_band_holds() -> None:
    snap = independent_snapshot(8, 60, seed=2)
    pol = policy(targets={"max_gap": 0.10, "memory_overcommit": 2.0}, limits=LIMITS)
    plan = make_plan(snap, pol, now=0.0)
    placed = snap
    for m in plan.migrations:
        vms = tuple(v.moved_to(m.target) if v.name == m.vm else v for v in placed.vms)
        placed = type(snap)(placed.hosts, vms, placed.rules, placed.taken_at)
    if plan.stats.band_met:
        again = make_plan(placed, pol, now=0.0)
        assert again.migrations == ()


def test_overcommit_ratio_is_a_hard_rule() -> None:
    snap = independent_snapshot(8, 60, seed=2)
    tight = policy(targets={"max_gap": 0.10, "memory_overcommit": 1.0}, limits=LIMITS)
    plan = make_plan(snap, tight, now=0.0)
    assert verify_plan(snap, tight, plan, now=0.0) == []
    assert plan.stats.overcommit_hosts and plan.stats.overcommit_hosts > 0
    assert any("memory_overcommit" in n for n in plan.stats.notes)


def test_network_only_weights_plan() -> None:
    snap = independent_snapshot(8, 60, seed=2)
    pol = policy(
        targets={"weights": {"cpu": 0, "memory": 0, "network": 1}, "max_gap": 0.10},
        limits=LIMITS,
    )
    plan = make_plan(snap, pol, now=0.0)
    assert verify_plan(snap, pol, plan, now=0.0) == []
