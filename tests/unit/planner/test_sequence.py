"""Sequencing: safe order, concurrency limits, a cycle broken through a temporary host, and an
unsequenceable cycle reported with why."""

from __future__ import annotations

from typing import Any

from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.sequence import sequence
from rebalancerd.policy.resolve import apply_policy

from .helpers import host, loose_limits, policy, snap, vm


def problem(s: Any, **limits: Any) -> Problem:
    pol = policy(limits={**loose_limits(), **limits}, targets={"headroom": 0.0})
    return build_problem(apply_policy(pol, s, 0.0), pol)


def test_dependent_moves_are_ordered() -> None:
    # b is full; its VM must leave to c before a's VM can arrive.
    s = snap(
        [host("a", mem_gib=4), host("b", mem_gib=4), host("c", mem_gib=4)],
        [vm("x", "a", 4), vm("y", "b", 4)],
    )
    p = problem(s)
    steps, blocked = sequence(p, {0: 1, 1: 2}, [0, 1], budget_moves=10, budget_mib=None)
    assert not blocked
    assert [[h.vm for h in st] for st in steps] == [[1], [0]]


def test_concurrency_limits_split_steps() -> None:
    s = snap(
        [host("a", mem_gib=40), host("b", mem_gib=40), host("c", mem_gib=40)],
        [vm(f"v{i}", "a", 1) for i in range(4)],
    )
    p = problem(s, max_concurrent=2, max_per_source=1, max_per_target=1)
    dest = {0: 1, 1: 2, 2: 1, 3: 2}
    steps, blocked = sequence(p, dest, [0, 1, 2, 3], budget_moves=10, budget_mib=None)
    assert not blocked
    assert all(len(st) == 1 for st in steps)  # one source: one migration at a time
    assert sum(len(st) for st in steps) == 4


def test_swap_cycle_goes_through_a_temporary_host() -> None:
    s = snap(
        [host("a", mem_gib=4), host("b", mem_gib=4), host("t", mem_gib=4)],
        [vm("x", "a", 4), vm("y", "b", 4)],
    )
    p = problem(s)
    steps, blocked = sequence(p, {0: 1, 1: 0}, [0, 1], budget_moves=10, budget_mib=None)
    assert not blocked
    flat = [h for st in steps for h in st]
    assert flat[0].temporary and flat[0].target == 2 and flat[0].final_target is not None
    assert len(flat) == 3
    # final positions: x on b, y on a
    last = {h.vm: h.target for h in flat}
    assert last == {0: 1, 1: 0}


def test_cycle_without_room_is_unsequenced_with_reason() -> None:
    s = snap([host("a", mem_gib=4), host("b", mem_gib=4)], [vm("x", "a", 4), vm("y", "b", 4)])
    p = problem(s)
    steps, blocked = sequence(p, {0: 1, 1: 0}, [0, 1], budget_moves=10, budget_mib=None)
    assert steps == []
    assert {b.vm for b in blocked} == {0, 1}
    assert all("lacks" in b.why for b in blocked)


def test_cycle_hop_refused_when_budget_spent() -> None:
    s = snap(
        [host("a", mem_gib=4), host("b", mem_gib=4), host("t", mem_gib=4)],
        [vm("x", "a", 4), vm("y", "b", 4)],
    )
    p = problem(s)
    steps, blocked = sequence(p, {0: 1, 1: 0}, [0, 1], budget_moves=2, budget_mib=None)
    assert steps == [] and len(blocked) == 2
    assert all("budget" in b.why for b in blocked)
