"""Consolidate mode (planner/consolidate.py): per-host prediction, the packing band, whole hosts
only, per-host hysteresis, efficient wake-up."""

from __future__ import annotations

from typing import Any

from rebalancerd.domain.model import PowerCurve, Vm
from rebalancerd.domain.plan import MigrationPlan, ReasonKind
from rebalancerd.planner import make_plan
from rebalancerd.planner.consolidate import interleave_targets, pack_limit
from rebalancerd.planner.problem import build_problem
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Policy
from tests.unit.planner.helpers import host, loose_limits, policy, snap, vm

CURVE = PowerCurve((100.0, 200.0))


def cons(**over: Any) -> Policy:
    return policy(mode="consolidate", limits=loose_limits(), **over)


def final(plan: MigrationPlan, vms: list[Vm]) -> dict[str, str]:
    where = {v.name: v.host for v in vms}
    for m in plan.migrations:
        where[m.vm] = m.target
    return where


def test_pack_limit_is_a_band_below_the_high_watermark() -> None:
    s = snap([host("a")], [])
    p = build_problem(s, cons(targets={"high_watermark": 0.85, "hysteresis": 0.02}))
    assert abs(pack_limit(p) - 0.80) < 1e-9  # band at least MIN_BAND (0.05)
    p2 = build_problem(s, cons(targets={"high_watermark": 0.85, "hysteresis": 0.15}))
    assert abs(pack_limit(p2) - 0.70) < 1e-9
    # a watermark above capacity with headroom: the band sits below the headroom line instead
    p3 = build_problem(s, cons(targets={"high_watermark": 0.95, "headroom": 0.10}))
    assert abs(pack_limit(p3) - 0.85) < 1e-9


def test_vms_peaking_at_different_times_share_a_host() -> None:
    # Each VM peaks at 5000 mc once, at a different sample (hosts at 0.50, consolidation
    # candidates under a 0.50 low watermark); per host the summed p95 is 6000 (0.60 of 10
    # cores): packable. Summing per-VM p95s (5000 + 5000) would say 1.0: not.
    hosts = [host("a", power_curve=CURVE), host("b", power_curve=CURVE)]
    vms = [
        vm("x", "a", cpu_mc=1000, cpu_history_mc=(5000, 1000, 1000, 1000)),
        vm("y", "b", cpu_mc=1000, cpu_history_mc=(1000, 1000, 5000, 1000)),
    ]
    pol = cons(targets={"prediction": {"window": 4}, "low_watermark": 0.5})
    plan = make_plan(snap(hosts, vms), pol, now=0.0, time_limit_s=0.5)
    assert len(plan.migrations) == 1
    assert plan.migrations[0].reason.kind is ReasonKind.ENERGY
    # the same VMs peaking together (sum 10000 > 0.80 x 10000) stay apart
    vms2 = [
        vm("x", "a", cpu_mc=1000, cpu_history_mc=(5000, 1000, 1000, 1000)),
        vm("y", "b", cpu_mc=1000, cpu_history_mc=(5000, 1000, 1000, 1000)),
    ]
    assert make_plan(snap(hosts, vms2), pol, now=0.0, time_limit_s=0.5).empty


def test_a_host_inside_the_band_is_not_relieved_one_above_is_relieved_below_the_band() -> None:
    hosts = [
        host("a", power_curve=CURVE),
        host("b", power_curve=CURVE),
        host("c", power_curve=CURVE),
    ]
    # a at 0.83: between pack limit 0.80 and high 0.85 -> left alone; c keeps b company
    band = [vm(f"a{i}", "a", cpu_mc=c) for i, c in enumerate((4000, 3000, 1300))]
    busy = [vm(f"b{i}", "b", cpu_mc=3000) for i in range(2)] + [vm("c0", "c", cpu_mc=3500)]
    plan = make_plan(snap(hosts, band + busy), cons(), now=0.0, time_limit_s=0.5)
    assert not any(m.reason.kind is ReasonKind.HOTSPOT for m in plan.migrations)
    # a at 0.90: hot -> relieved to at most the pack limit (0.80), not just under 0.85
    hot = [vm(f"a{i}", "a", cpu_mc=c) for i, c in enumerate((4000, 3000, 1400, 600))]
    s = snap(hosts, hot + busy)
    plan = make_plan(s, cons(), now=0.0, time_limit_s=0.5)
    relief = [m for m in plan.migrations if m.reason.kind is ReasonKind.HOTSPOT]
    assert relief and all(m.source == "a" for m in relief)
    where = final(plan, hot + busy)
    load = {h.name: 0 for h in hosts}
    for v in hot + busy:
        load[where[v.name]] += v.cpu_used_mc
    assert load["a"] <= 8000
    assert all(x <= 8000 for x in load.values())  # targets stay under the pack limit too


def test_only_whole_hosts_are_emptied() -> None:
    # b's two VMs (3000 + 3000) cannot both fit on a (5000 used, room 3000 under 0.80): nothing
    # moves, although one of them alone would fit.
    hosts = [host("a", power_curve=CURVE), host("b", power_curve=CURVE)]
    vms = [vm("a0", "a", cpu_mc=5000), vm("b0", "b", cpu_mc=3000), vm("b1", "b", cpu_mc=3000)]
    assert make_plan(snap(hosts, vms), cons(), now=0.0, time_limit_s=0.5).empty


def test_hysteresis_is_per_host_so_large_clusters_still_consolidate() -> None:
    # 200 busy hosts and two light ones: emptying one light host saves ~100 W, well under 5 %
    # of the cluster's power but far above 5 % of that host's.
    hosts = [host(f"h{i:03d}", power_curve=CURVE) for i in range(202)]
    vms = [vm(f"v{i:03d}", f"h{i:03d}", cpu_mc=7000) for i in range(200)]
    vms += [vm("l0", "h200", cpu_mc=1000), vm("l1", "h201", cpu_mc=1000)]
    pol = cons(targets={"hysteresis": 0.05})
    plan = make_plan(snap(hosts, vms), pol, now=0.0, time_limit_s=0.5)
    assert [m.vm for m in plan.migrations] in (["l0"], ["l1"])
    # a hysteresis above the share a host's emptying saves blocks it
    pol_hi = cons(targets={"hysteresis": 0.99})
    assert make_plan(snap(hosts, vms), pol_hi, now=0.0, time_limit_s=0.5).empty


def test_relief_wakes_the_most_efficient_switched_off_host() -> None:
    big = PowerCurve((150.0, 250.0))  # 20 cores: 12.5 W per core at full load
    small = PowerCurve((100.0, 200.0))  # 10 cores: 20 W per core
    hosts = [
        host("hot", power_curve=small),
        host("off-small", power_curve=small),
        host("off-big", cores=20, power_curve=big),
    ]
    vms = [vm(f"v{i}", "hot", cpu_mc=3000) for i in range(3)]  # 0.90 > 0.85
    s = snap(hosts, vms)
    plan = make_plan(s, cons(), now=0.0, time_limit_s=0.5)
    assert plan.migrations[0].reason.kind is ReasonKind.HOTSPOT
    assert plan.migrations[0].target == "off-big"
    # then the rest of the (now 0.60) host follows onto the efficient one, and nothing wakes
    # the small host
    assert {m.target for m in plan.migrations} == {"off-big"}
    p = build_problem(apply_policy(cons(), s, 0.0), cons())
    assert p.cpu == [3000, 3000, 3000]  # consolidate: capacity checked on current use


def test_moves_are_interleaved_over_targets_within_a_priority() -> None:
    order = [1, 2, 3, 4, 5, 6]
    dest = {1: 10, 2: 10, 3: 10, 4: 11, 5: 11, 6: 12}
    prio = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3, 6: 3}
    out = interleave_targets(order, dest, lambda v: prio[v])
    assert out[:2] == [1, 2]  # the hotspot level first, in order
    assert out[2:] == [3, 4, 6, 5]  # then round-robin over targets 10, 11, 12, 11
    assert sorted(out) == order


def test_a_moderately_loaded_host_is_emptied_only_when_the_cluster_is_fragmented() -> None:
    hosts = [host(f"h{i}", power_curve=CURVE) for i in range(3)]
    # h0 at 0.30 (above the 0.20 low watermark); h1 and h2 at 0.30: on aggregate 0.45 of the
    # other two, well under pack limit - band (0.75): fragmented, h0 is emptied
    frag = [vm("a", "h0", cpu_mc=3000), vm("b", "h1", cpu_mc=3000), vm("c", "h2", cpu_mc=3000)]
    plan = make_plan(snap(hosts, frag), cons(), now=0.0, time_limit_s=0.5)
    assert plan.migrations and {m.reason.kind for m in plan.migrations} == {ReasonKind.ENERGY}
    # h0 at 0.60 (two VMs of 3000), h1 and h2 at 0.50: each of h0's VMs fits on h1 or h2 under
    # the pack limit (8000), but on aggregate the others would carry (6000 + 10000) / 20000 =
    # 0.80 > 0.75 (a band below the pack limit): not fragmented, nothing moves
    tight = [
        vm("a", "h0", cpu_mc=3000),
        vm("a2", "h0", cpu_mc=3000),
        vm("b", "h1", cpu_mc=5000),
        vm("c", "h2", cpu_mc=5000),
    ]
    assert make_plan(snap(hosts, tight), cons(), now=0.0, time_limit_s=0.5).empty
    # the same with h1 and h2 at 0.40: 0.70 on aggregate: h0 is emptied
    loose = [*tight[:2], vm("b", "h1", cpu_mc=4000), vm("c", "h2", cpu_mc=4000)]
    plan = make_plan(snap(hosts, loose), cons(), now=0.0, time_limit_s=0.5)
    assert plan.migrations and {m.reason.kind for m in plan.migrations} == {ReasonKind.ENERGY}
    assert len(set(final(plan, loose).values())) == 2
