"""Consolidate mode respects the time limit: hotspot relief always runs, whole-host emptying stops
at the greedy's deadline between hosts (a host is emptied completely or not at all), the stop is
noted, and a plan that has time is unchanged."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rebalancerd.domain.plan import MigrationPlan, ReasonKind
from rebalancerd.planner import make_plan, verify_plan
from rebalancerd.planner.consolidate import consolidate_mode
from rebalancerd.planner.greedy import context as greedy_context
from rebalancerd.planner.greedy.context import GreedyContext, MoveCountState
from rebalancerd.planner.greedy.mandatory import drain, fix_rules
from rebalancerd.planner.greedy.run import run_greedy
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Policy
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import loose_limits, policy

STOP_NOTE = "greedy host emptying stopped by the wall-clock limit"


def _cons() -> Policy:
    return policy(mode="consolidate", limits=loose_limits())


def _snapshot(seed: int = 0) -> Any:
    return skewed_snapshot(24, 300, seed=seed)


def _problem(s: Any, pol: Policy) -> Problem:
    return build_problem(apply_policy(pol, s, 0.0), pol)


def _moves(plan: MigrationPlan, kind: ReasonKind) -> set[tuple[str, str, str]]:
    return {(m.vm, m.source, m.target) for m in plan.migrations if m.reason.kind is kind}


def _final_hosts(s: Any, plan: MigrationPlan) -> dict[str, str]:
    where = {v.name: v.host for v in s.vms}
    for m in plan.migrations:
        where[m.vm] = m.target
    return where


def _half_emptied(ctx: GreedyContext) -> list[int]:
    """Hosts that lost a VM to an energy move but still carry VMs."""
    sources = {
        o
        for v, o, _h in ctx.s.moves()
        if v in ctx.mandatory and ctx.mandatory[v].kind is ReasonKind.ENERGY
    }
    return sorted(h for h in sources if ctx.s.on[h])


def _energy(ctx: GreedyContext) -> dict[int, int]:
    return {
        v: h
        for v, _o, h in ctx.s.moves()
        if v in ctx.mandatory and ctx.mandatory[v].kind is ReasonKind.ENERGY
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_expired_time_limit_relieves_hotspots_and_empties_no_host(seed: int) -> None:
    s = _snapshot(seed)
    pol = _cons()
    full = make_plan(s, pol, now=0.0, time_limit_s=60.0)
    assert _moves(full, ReasonKind.HOTSPOT) and _moves(full, ReasonKind.ENERGY)  # not vacuous

    cut = make_plan(s, pol, now=0.0, time_limit_s=1e-6)
    assert verify_plan(s, pol, cut, now=0.0) == []
    # relief always runs, and it is the same relief as with time to spare
    assert _moves(cut, ReasonKind.HOTSPOT) == _moves(full, ReasonKind.HOTSPOT)
    assert not _moves(cut, ReasonKind.ENERGY)
    assert sum(STOP_NOTE in n for n in cut.stats.notes) == 1
    assert not any("wall-clock" in n for n in full.stats.notes)
    # no host was half-emptied: every VM that left a host left it for relief, and the relieved
    # hosts keep VMs
    relieved = {src for _vm, src, _t in _moves(cut, ReasonKind.HOTSPOT)}
    assert {m.source for m in cut.migrations} == relieved
    assert relieved <= set(_final_hosts(s, cut).values())


class _TickClock:
    """A fake clock for the greedy's deadline checks: each reading is one tick later."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def _cut_after(p: Problem, ticks: float, monkeypatch: pytest.MonkeyPatch) -> GreedyContext:
    clock = _TickClock()
    with monkeypatch.context() as m:
        m.setattr(greedy_context, "time", clock)
        ctx = GreedyContext(p, MoveCountState(p), deadline=ticks)
        drain(ctx, True)
        fix_rules(ctx, True)
        consolidate_mode(ctx)
    return ctx


def test_a_cut_in_the_middle_of_the_emptying_leaves_whole_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = _snapshot(0)
    pol = _cons()
    p = _problem(s, pol)
    full = _cut_after(p, float("inf"), monkeypatch)
    full_energy = _energy(full)
    n_full = len({p.origin[v] for v in full_energy})
    assert n_full >= 3
    assert _half_emptied(full) == []

    partial = 0
    prev = -1
    for ticks in range(0, len(p.hosts) + 2):
        ctx = _cut_after(_problem(s, pol), float(ticks), monkeypatch)
        energy = _energy(ctx)
        n = len({ctx.p.origin[v] for v in energy})
        assert _half_emptied(ctx) == [], ticks
        # the hosts emptied before the cut are emptied exactly as without a deadline
        assert all(full_energy.get(v) == h for v, h in energy.items()), ticks
        assert n >= prev  # a later cut never empties fewer hosts
        prev = n
        # relief is the same whatever the cut
        hot = {v: h for v, _o, h in ctx.s.moves() if ctx.mandatory[v].kind is ReasonKind.HOTSPOT}
        assert hot == {
            v: h for v, _o, h in full.s.moves() if full.mandatory[v].kind is ReasonKind.HOTSPOT
        }
        assert all(
            ctx.s.cpu[h] <= p.cap_cpu[h] and ctx.s.mem[h] <= p.cap_mem[h]
            for h in range(p.n_hosts)
            if ctx.s.on[h]
        )
        stopped = [x for x in ctx.notes if STOP_NOTE in x]
        if n < n_full:
            assert len(stopped) == 1, ticks
            partial += n > 0
    assert prev == n_full  # enough ticks: the whole emptying
    assert partial >= 2  # some cuts did land in the middle of the emptying


def test_the_deadline_does_not_change_a_consolidate_plan_that_has_time() -> None:
    s = _snapshot(1)
    pol = _cons()
    a = run_greedy(_problem(s, pol))
    b = run_greedy(_problem(s, pol), deadline=time.perf_counter() + 600.0)
    assert _energy(a)  # consolidation does move VMs here
    assert a.s.where == b.s.where
    assert not any("wall-clock" in n for n in b.notes)
    p1 = make_plan(s, pol, now=0.0, time_limit_s=30.0)
    p2 = make_plan(s, pol, now=0.0, time_limit_s=60.0)
    assert [(m.vm, m.source, m.target) for m in p1.migrations] == [
        (m.vm, m.source, m.target) for m in p2.migrations
    ]
