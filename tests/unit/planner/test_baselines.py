"""The benchmark's baselines make valid plans: capacity kept, hosts in maintenance emptied."""

from __future__ import annotations

from rebalancerd.domain.model import HostState
from rebalancerd.planner import baselines
from rebalancerd.planner.problem import build_problem
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy

from .helpers import host, loose_limits, policy, snap, vm


def _replay(p, moves):  # type: ignore[no-untyped-def]
    st = State(p)
    for v, a, b in moves:
        assert st.where[v] == a
        assert st.fits(v, b), f"{p.vms[v].name} -> {p.hosts[b].name} breaks capacity"
        st.move(v, b)
    return st


def test_lhc_empties_the_host_in_maintenance_first_then_balances() -> None:
    hosts = [host("h0"), host("h1"), host("h2"), host("m", state=HostState.MAINTENANCE)]
    vms = [vm(f"a{i}", "h0", mem_gib=2) for i in range(4)]  # h0 hot, h1 and h2 cold
    vms += [vm("m-big", "m", mem_gib=3), vm("m-small", "m", mem_gib=1)]
    pol = policy(limits=loose_limits())
    s = snap(hosts, vms)
    p = build_problem(apply_policy(pol, s, 0.0), pol)
    moves = baselines.largest_hottest_coldest(p)
    m = p.host_index["m"]
    # the drain comes first, largest VM first, each to the coldest host with room
    assert [p.vms[v].name for v, a, _ in moves[:2]] == ["m-big", "m-small"]
    assert all(a == m for _, a, _ in moves[:2])
    assert all(a != m and b != m for _, a, b in moves[2:])
    st = _replay(p, moves)
    assert not st.on[m]
    assert moves[2:], "then it balances h0 against the others"


def test_lhc_leaves_a_vm_that_fits_nowhere() -> None:
    hosts = [host("h0", mem_gib=4), host("h1", mem_gib=4)]
    hosts.append(host("m", state=HostState.MAINTENANCE, mem_gib=16))
    vms = [vm("big", "m", mem_gib=8), vm("small", "m", mem_gib=1), vm("x", "h0", mem_gib=1)]
    pol = policy(limits=loose_limits())
    s = snap(hosts, vms)
    p = build_problem(apply_policy(pol, s, 0.0), pol)
    moves = baselines.largest_hottest_coldest(p)
    moved = [p.vms[v].name for v, _, _ in moves]
    assert "big" not in moved and moved[0] == "small"
    assert p.hosts[moves[0][2]].name == "h1"  # the coldest host
    st = _replay(p, moves)
    assert st.where[p.vm_index["big"]] == p.host_index["m"]
