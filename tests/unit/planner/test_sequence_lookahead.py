"""The sequencer's look-ahead window must not invent cycles: when none of the first moves can go
yet, a move further down (e.g. onto an empty host) that frees their room goes first."""

from __future__ import annotations

from pathlib import Path

from rebalancerd.files import load_snapshot
from rebalancerd.planner import make_plan
from rebalancerd.policy.schema import default_policy

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "snapshot-small.json"


def test_example_snapshot_plan_is_fully_sequenced() -> None:
    snap = load_snapshot(EXAMPLE)
    plan = make_plan(snap, default_policy(), now=0.0, time_limit_s=2.0, seed=0)
    assert not plan.unsequenced, plan.explain()
    assert len(plan.migrations) >= 3
    assert plan.stats.imbalance_after is not None and plan.stats.imbalance_before is not None
    assert plan.stats.imbalance_after < plan.stats.imbalance_before / 2
    # the maintenance host is emptied
    final = dict(snap.placement())
    for m in plan.migrations:
        final[m.vm] = m.target
    assert "hv04" not in final.values()
