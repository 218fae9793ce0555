"""make_plan behaviour on small hand-built clusters: greedy phases, modes, budgets, reasons."""

from __future__ import annotations

from rebalancerd.domain.model import AffinityGroup, HostState, Pin, PowerCurve
from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import make_plan, verify_plan

from .helpers import host, loose_limits, policy, snap, vm


def hot_cluster() -> tuple:
    hosts = [host("h1"), host("h2"), host("h3")]
    vms = [vm(f"v{i}", "h1", 2, 1500) for i in range(4)] + [vm("w", "h2", 1, 500)]
    return snap(hosts, vms), policy(limits=loose_limits())


def test_balance_moves_off_the_hot_host_and_explains() -> None:
    s, pol = hot_cluster()
    plan = make_plan(s, pol, now=0.0, time_limit_s=1.0)
    assert plan.migrations, plan.stats
    assert all(m.source == "h1" for m in plan.migrations)
    assert plan.stats.imbalance_after < plan.stats.imbalance_before
    for m in plan.migrations:
        assert m.reason.kind in (ReasonKind.HOTSPOT, ReasonKind.BALANCE)
        assert "h1" in m.reason.detail
        assert m.score_before is not None and m.score_after is not None
    assert verify_plan(s, pol, plan, now=0.0) == []
    assert plan.stats.mode == "balance" and plan.stats.wall_s > 0


def test_hysteresis_blocks_small_gains() -> None:
    hosts = [host("h1"), host("h2")]
    vms = [vm("a", "h1", 3, 0), vm("b", "h2", 2, 0), vm("c", "h1", 1, 0)]
    s = snap(hosts, vms)
    strict = policy(limits=loose_limits(), targets={"hysteresis": 0.5})
    assert make_plan(s, strict, now=0.0, time_limit_s=0.5).empty
    lax = policy(limits=loose_limits(), targets={"hysteresis": 0.0})
    assert not make_plan(s, lax, now=0.0, time_limit_s=0.5).empty


def test_drain_mode_only_drains() -> None:
    hosts = [host("h1", state=HostState.MAINTENANCE), host("h2"), host("h3")]
    vms = [vm("a", "h1"), vm("b", "h1"), vm("c", "h2", 5, 5000)]
    s = snap(hosts, vms)
    pol = policy(mode="drain", limits=loose_limits())
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    assert sorted(m.vm for m in plan.migrations) == ["a", "b"]
    assert all(m.reason.kind is ReasonKind.DRAIN for m in plan.migrations)
    assert all(m.target != "h1" for m in plan.migrations)


def test_maintenance_from_policy_schedule_drains() -> None:
    s = snap([host("h1"), host("h2")], [vm("a", "h1")])
    pol = policy(limits=loose_limits(), rules={"maintenance": [{"host": "h1"}]})
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    assert [(m.vm, m.target, m.reason.kind) for m in plan.migrations] == [
        ("a", "h2", ReasonKind.DRAIN)
    ]


def test_degraded_host_evacuated_only_when_policy_says() -> None:
    s = snap([host("h1", state=HostState.DEGRADED), host("h2")], [vm("a", "h1")])
    on = make_plan(s, policy(limits=loose_limits()), now=0.0, time_limit_s=0.5)
    assert [m.reason.kind for m in on.migrations] == [ReasonKind.EVACUATE]
    off = policy(limits=loose_limits(), rules={"evacuate_degraded": False})
    assert make_plan(s, off, now=0.0, time_limit_s=0.5).empty


def test_excluded_frozen_pinned_and_stale_never_move() -> None:
    hosts = [host("h1"), host("h2"), host("h3"), host("h4", state=HostState.STALE)]
    vms = [vm(f"v{i}", "h1", 2, 1800) for i in range(4)] + [vm("s", "h4", 2, 2000)]
    s = snap(hosts, vms, pins=(Pin("v1", frozenset({"h1"})),), exclusions=frozenset({"v2"}))
    pol = policy(limits=loose_limits(), rules={"exclusions": ["v3"]})
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5, frozen=frozenset({"v0"}))
    assert plan.empty, plan.explain()
    assert all(m.target != "h4" for m in plan.migrations)


def test_hard_anti_affinity_violation_is_fixed_with_rule_reason() -> None:
    g = AffinityGroup("web", frozenset({"a", "b"}), anti=True)
    s = snap([host("h1"), host("h2")], [vm("a", "h1"), vm("b", "h1")], (g,))
    pol = policy(limits=loose_limits(), targets={"hysteresis": 1.0})
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    assert len(plan.migrations) == 1
    m = plan.migrations[0]
    assert m.reason.kind is ReasonKind.RULE and m.reason.rule == "web"


def test_budget_moves_and_mib() -> None:
    s, pol = hot_cluster()
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5, max_moves=1)
    assert len(plan.migrations) <= 1
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5, max_mib=1024)
    assert plan.memory_mib <= 1024  # every VM there is 2 GiB: nothing fits the byte budget
    assert plan.empty


def test_consolidate_empties_a_host_and_reports_power() -> None:
    curve = PowerCurve((100.0, 200.0))
    hosts = [host(f"h{i}", power_curve=curve) for i in range(3)]
    vms = [vm("a", "h0", 1, 500), vm("b", "h1", 1, 500), vm("c", "h2", 1, 500)]
    s = snap(hosts, vms)
    pol = policy(mode="consolidate", limits=loose_limits())
    plan = make_plan(s, pol, now=0.0, time_limit_s=1.0)
    assert len({m.source for m in plan.migrations}) == 2
    assert all(m.reason.kind is ReasonKind.ENERGY for m in plan.migrations)
    first, last = plan.migrations[0], plan.migrations[-1]
    assert last.score_after is not None and first.score_before is not None
    assert last.score_after < first.score_before
    assert verify_plan(s, pol, plan, now=0.0) == []


def test_consolidate_keeps_min_active_hosts() -> None:
    hosts = [host(f"h{i}") for i in range(3)]
    vms = [vm("a", "h0", 1, 100), vm("b", "h1", 1, 100), vm("c", "h2", 1, 100)]
    pol = policy(mode="consolidate", limits=loose_limits(), energy={"min_active_hosts": 3})
    assert make_plan(snap(hosts, vms), pol, now=0.0, time_limit_s=0.5).empty


def test_advisory_plans_like_balance() -> None:
    s, pol = hot_cluster()
    adv = pol.model_copy(update={"mode": "advisory"})
    a = make_plan(s, adv, now=0.0, time_limit_s=0.5)
    b = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    assert [(m.vm, m.target) for m in a.migrations] == [(m.vm, m.target) for m in b.migrations]
    assert a.stats.mode == "advisory"


def test_plan_round_trips_through_json() -> None:
    s, pol = hot_cluster()
    plan = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    d = plan.to_dict()
    assert {"migrations", "steps", "stats", "unsequenced"} <= set(d)
    assert d["stats"]["status"] and d["stats"]["wall_s"] >= 0
    assert [m["vm"] for m in d["migrations"]] == [m.vm for m in plan.migrations]
