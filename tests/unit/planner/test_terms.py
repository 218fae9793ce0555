"""Each CP-SAT term alone on tiny instances: feasible where it must be, infeasible where not."""

from __future__ import annotations

from typing import Any

from rebalancerd.domain.model import AffinityGroup, HostState, Pin
from rebalancerd.planner import terms as T
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy

from .helpers import host, loose_limits, policy, snap, vm


def problem(s: Any, pol: Any = None) -> Problem:
    pol = pol or policy(limits=loose_limits(), targets={"headroom": 0.0})
    return build_problem(apply_policy(pol, s, 0.0), pol)


def solve(p: Problem, terms: list[Any], objective: list[Any] | None = None) -> T.SolveResult:
    st = State(p)
    vms = [v for v in range(p.n_vms) if p.movable[v]]
    sub = T.Sub(p, st, vms, list(range(p.n_hosts)))
    objs = []
    for t in terms:
        objs.append(t().add(sub))
    for o in objective or []:
        objs.append(o().add(sub))
    return T.solve(sub, objs, seed=0, det_time=2.0, wall_time=10.0, hint=False)


def test_assign_once_feasible_and_every_vm_placed() -> None:
    p = problem(snap([host("a"), host("b")], [vm("v1", "a"), vm("v2", "b")]))
    r = solve(p, [T.AssignOnce])
    assert r.status in ("OPTIMAL", "FEASIBLE")
    assert set(r.where) == {0, 1}


def test_assign_once_infeasible_without_any_allowed_host() -> None:
    s = snap([host("a"), host("b")], [vm("v1", "a")], pins=(Pin("v1", frozenset({"zzz"})),))
    r = solve(problem(s), [T.AssignOnce])
    assert r.status == "INFEASIBLE"


def test_capacity_feasible_when_vms_fit() -> None:
    s = snap(
        [host("a", mem_gib=8), host("b", mem_gib=4)],
        [vm(f"v{i}", "a", 2) for i in range(4)],
        pins=tuple(Pin(f"v{i}", frozenset({"b"})) for i in range(2)),
    )
    r = solve(problem(s), [T.AssignOnce, T.Capacity])
    assert r.status in ("OPTIMAL", "FEASIBLE")
    assert r.where[0] == r.where[1] == 1


def test_capacity_infeasible_when_total_exceeds() -> None:
    # 3 x 2 GiB VMs on a 2-host cluster of 2 GiB each; a's current 6 GiB is the relaxed cap, so
    # move them to a host that cannot hold more than one: pin all to b.
    s = snap(
        [host("a", mem_gib=8), host("b", mem_gib=2)],
        [vm(f"v{i}", "a", 2) for i in range(3)],
        pins=tuple(Pin(f"v{i}", frozenset({"b"})) for i in range(3)),
    )
    r = solve(problem(s), [T.AssignOnce, T.Capacity])
    assert r.status == "INFEASIBLE"


def test_capacity_respects_headroom() -> None:
    s = snap(
        [host("a", mem_gib=10), host("b", mem_gib=10)],
        [vm("big", "a", 9)],
        pins=(Pin("big", frozenset({"b"})),),
    )
    tight = policy(limits=loose_limits(), targets={"headroom": 0.2})
    assert solve(problem(s, tight), [T.AssignOnce, T.Capacity]).status == "INFEASIBLE"
    loose = policy(limits=loose_limits(), targets={"headroom": 0.0})
    assert solve(problem(s, loose), [T.AssignOnce, T.Capacity]).status in ("OPTIMAL", "FEASIBLE")


def test_anti_affinity_feasible_with_enough_hosts() -> None:
    g = AffinityGroup("web", frozenset({"w1", "w2", "w3"}), anti=True)
    s = snap([host("a"), host("b"), host("c")], [vm(f"w{i}", "a") for i in (1, 2, 3)], (g,))
    p = problem(s)
    st = State(p)
    for v in range(3):  # start spread out so the relaxed "never worse than now" bound is 1
        st.move(v, v)
    sub = T.Sub(p, st, [0, 1, 2], [0, 1, 2])
    T.AssignOnce().add(sub)
    T.AntiAffinity().add(sub)
    r = T.solve(sub, [], seed=0, det_time=1, wall_time=5, hint=False)
    assert r.status in ("OPTIMAL", "FEASIBLE")
    assert len(set(r.where.values())) == 3


def test_anti_affinity_infeasible_with_too_few_hosts() -> None:
    g = AffinityGroup("web", frozenset({"w1", "w2", "w3"}), anti=True)
    s = snap([host("a"), host("b")], [vm("w1", "a"), vm("w2", "b"), vm("w3", "b")], (g,))
    p = problem(s)
    st = State(p)
    st.move(2, 0)  # now w1,w3 on a; w2 on b: current max per host is 2
    sub = T.Sub(p, st, [0, 1, 2], [0, 1])
    T.AssignOnce().add(sub)
    T.AntiAffinity().add(sub)
    # force strict: at most one per host is impossible for 3 VMs on 2 hosts
    for h in (0, 1):
        sub.model.add(sum(x for _, x in sub.xs_on(h)) <= 1)
    r = T.solve(sub, [], seed=0, det_time=1, wall_time=5, hint=False)
    assert r.status == "INFEASIBLE"


def test_affinity_keeps_members_together() -> None:
    g = AffinityGroup("pair", frozenset({"x", "y"}), anti=False)
    s = snap([host("a"), host("b")], [vm("x", "a"), vm("y", "b")], (g,))
    r = solve(problem(s), [T.AssignOnce, T.Affinity])
    assert r.status in ("OPTIMAL", "FEASIBLE")
    assert r.where[0] == r.where[1]


def test_affinity_infeasible_when_members_pinned_apart() -> None:
    g = AffinityGroup("pair", frozenset({"x", "y"}), anti=False)
    pins = (Pin("x", frozenset({"a"})), Pin("y", frozenset({"b"})))
    s = snap([host("a"), host("b")], [vm("x", "a"), vm("y", "b")], (g,), pins)
    r = solve(problem(s), [T.AssignOnce, T.Affinity])
    assert r.status == "INFEASIBLE"


def test_move_budget_zero_keeps_everything_in_place() -> None:
    s = snap([host("a"), host("b")], [vm("v1", "a"), vm("v2", "a")])
    p = problem(s, policy(limits={**loose_limits(), "max_per_cycle": 0}))
    r = solve(p, [T.AssignOnce, T.MoveBudget], [T.Spread])
    assert r.status in ("OPTIMAL", "FEASIBLE")
    assert r.where == {0: 0, 1: 0}


def test_move_budget_infeasible_when_a_drain_needs_more_moves() -> None:
    s = snap([host("a", state=HostState.MAINTENANCE), host("b")], [vm("v1", "a"), vm("v2", "a")])
    p = problem(s, policy(limits={**loose_limits(), "max_per_cycle": 1}))
    r = solve(p, [T.AssignOnce, T.MoveBudget])
    assert r.status == "INFEASIBLE"


def test_spread_objective_balances_memory() -> None:
    s = snap([host("a"), host("b")], [vm(f"v{i}", "a", 2, 0) for i in range(4)])
    p = problem(s, policy(limits=loose_limits(), targets={"weights": {"cpu": 0.0, "memory": 1.0}}))
    r = solve(p, [T.AssignOnce, T.Capacity], [T.Spread])
    assert r.status == "OPTIMAL"
    assert sorted(sum(1 for h in r.where.values() if h == x) for x in (0, 1)) == [2, 2]


def test_migration_cost_prefers_cheap_vm() -> None:
    # Moving either VM balances equally; the one with local disk costs more.
    s = snap(
        [host("a"), host("b")],
        [vm("cheap", "a", 2, 0), vm("disk", "a", 2, 0, local_disk_mib=50 * 1024)],
    )
    p = problem(s, policy(limits=loose_limits(), targets={"weights": {"cpu": 0.0, "memory": 1.0}}))
    r = solve(p, [T.AssignOnce, T.Capacity], [T.Spread, T.MigrationCost])
    assert r.status == "OPTIMAL"
    assert r.where == {0: 1, 1: 0}


def test_soft_anti_affinity_is_a_penalty_not_a_constraint() -> None:
    g = AffinityGroup("s", frozenset({"x", "y"}), anti=True, hard=False, weight=5.0)
    s = snap([host("a"), host("b")], [vm("x", "a", 1, 0), vm("y", "a", 1, 0)], (g,))
    p = problem(s, policy(limits=loose_limits(), targets={"weights": {"cpu": 0.0, "memory": 1.0}}))
    r = solve(p, [T.AssignOnce], [T.SoftRules, T.MigrationCost])
    assert r.status == "OPTIMAL"
    assert r.where[0] != r.where[1]
    # with a third VM pinned... both on one host stays feasible when forced
    r2 = solve(p, [T.AssignOnce, T.MoveBudget], [T.SoftRules])
    assert r2.status == "OPTIMAL"


def test_power_objective_empties_a_host() -> None:
    s = snap([host("a"), host("b")], [vm("x", "a", 1, 100), vm("y", "b", 1, 100)])
    p = problem(s, policy(mode="consolidate", limits=loose_limits()))
    r = solve(p, [T.AssignOnce, T.Capacity], [T.Power])
    assert r.status == "OPTIMAL"
    assert r.where[0] == r.where[1]


def test_min_active_hosts_keeps_hosts_on() -> None:
    s = snap([host("a"), host("b")], [vm("x", "a", 1, 100), vm("y", "b", 1, 100)])
    pol = policy(mode="consolidate", limits=loose_limits(), energy={"min_active_hosts": 2})
    r = solve(problem(s, pol), [T.AssignOnce, T.Capacity, T.MinActiveHosts], [T.Power])
    assert r.status == "OPTIMAL"
    assert r.where[0] != r.where[1]
    pol3 = policy(mode="consolidate", limits=loose_limits(), energy={"min_active_hosts": 3})
    r3 = solve(problem(s, pol3), [T.AssignOnce, T.Capacity, T.MinActiveHosts], [T.Power])
    assert r3.status == "INFEASIBLE"
