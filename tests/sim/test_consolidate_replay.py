"""The replay's default policy in consolidate mode: one consolidation, then no churn."""

from __future__ import annotations

import numpy as np

from rebalancerd.policy.schema import default_policy
from rebalancerd.sim.cloudsim import default_replay_policy
from rebalancerd.sim.replay import PlannerDecider, Replay
from rebalancerd.sim.traces import read_planetlab
from tests.sim.conftest import WriteDay


def test_default_replay_policy_keeps_the_daemons_safety_limits() -> None:
    p, d = default_replay_policy(), default_policy()
    assert p.limits.max_per_source == d.limits.max_per_source == 1
    assert p.limits.max_per_target == d.limits.max_per_target == 1
    assert p.limits.cooldown_s == d.limits.cooldown_s
    assert p.targets.prediction == d.targets.prediction
    assert p.targets.hysteresis == d.targets.hysteresis
    assert p.targets.low_watermark == d.targets.low_watermark


def test_steady_demand_is_consolidated_once_then_left_alone(write_day: WriteDay) -> None:
    # 12 VMs at a steady 10-20 %, one per host (a spread-out start): the first cycles pack
    # them; with demand that does not change, nothing moves afterwards and every VM moved at
    # most once over 6 h.
    samples = {f"vm{i:02d}": [10 + (i % 3) * 5] * 72 for i in range(12)}
    tr = read_planetlab(write_day(samples))
    pol = default_replay_policy()
    start = np.arange(12, dtype=np.int64)
    rp = Replay(tr, PlannerDecider(pol, time_limit_s=0.5), pol, hosts=12, initial_placement=start)
    r = rp.run()
    mig = r.timeline.migrations
    assert sum(mig[:3]) >= 1
    assert sum(mig[12:]) == 0  # after the first hour: no churn
    assert r.summary["migrations"] <= 12
    assert r.timeline.active_hosts[-1] < r.timeline.active_hosts[0]


def test_a_host_whose_vms_jump_is_relieved(write_day: WriteDay) -> None:
    # Four VMs on one G5 host at 20 % (1,200 of 5,320 MIPS); after 1 h they all jump to 99 %
    # (5,940 MIPS): the host saturates and the planner relieves it (hotspot).
    samples = {f"vm{i}": [20] * 12 + [99] * 24 for i in range(4)}
    tr = read_planetlab(write_day(samples))
    pol = default_replay_policy()
    start = np.array([1, 1, 1, 1], dtype=np.int64)  # all on the G5 host (5320 MIPS)
    rp = Replay(tr, PlannerDecider(pol, time_limit_s=0.5), pol, hosts=4, initial_placement=start)
    r = rp.run()
    assert sum(r.timeline.migrations[:12]) == 0  # 20 % of 2500+2000+1000+500 = 1200: room
    assert r.summary["migrations"] >= 1
    assert r.timeline.overloaded_hosts[-1] == 0
    assert r.timeline.active_hosts[-1] >= 2
