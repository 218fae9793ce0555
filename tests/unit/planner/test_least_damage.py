"""The moves the descent leaves (chains, swap halves) are ordered so the gap stays low between
them: a host that sends a big VM gets its replacement next, not at the end of the plan."""

from __future__ import annotations

from rebalancerd.planner import objective as obj
from rebalancerd.planner.ordering import least_damage
from rebalancerd.planner.problem import build_problem
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy

from .helpers import host, loose_limits, policy, snap, vm


def test_the_replacement_follows_the_big_departure() -> None:
    hosts = [host(n, mem_gib=100) for n in ("A", "B", "C", "D", "E")]
    vms = [vm("a1", "A", mem_gib=60), vm("b1", "B", mem_gib=20)]
    vms += [vm("c1", "C", mem_gib=50), vm("c2", "C", mem_gib=40)]
    vms += [vm("d1", "D", mem_gib=50), vm("e1", "E", mem_gib=50)]
    vms += [vm(f"x{i}", "D", mem_gib=1) for i in range(3)]
    pol = policy(limits=loose_limits(), targets={"weights": {"cpu": 0.0}})
    s = snap(hosts, vms)
    p = build_problem(apply_policy(pol, s, 0.0), pol)
    ix, hx = p.vm_index, p.host_index
    # a chain: a1 leaves A for B (A empty: the gap jumps), c1 refills A (it only fits once a1
    # left); the x moves barely change anything
    dest = {ix["a1"]: hx["B"], ix["c1"]: hx["A"]}
    dest |= {ix[f"x{i}"]: hx["E"] for i in range(3)}
    given = [ix["a1"], ix["x0"], ix["x1"], ix["x2"], ix["c1"]]
    out = least_damage(given, p, State(p), dest, obj.balancing(p), 0.0, 1.0)
    assert sorted(out) == sorted(given)
    assert out.index(ix["c1"]) == out.index(ix["a1"]) + 1

    def area(order: list[int]) -> float:  # memory gap summed over the moves
        st, total = State(p), 0.0
        for v in order:
            assert st.fits(v, dest[v])
            st.move(v, dest[v])
            total += obj.gaps(p, st)[1]
        return total

    assert area(out) < area(given)
