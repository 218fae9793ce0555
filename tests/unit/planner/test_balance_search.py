"""Balance search: swaps where no single move helps, the minimax score, the band pass, the plan's
steepest-descent order and the sequencer keeping that order."""

from __future__ import annotations

import itertools
from typing import Any

from rebalancerd.planner import make_plan, verify_plan
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.band import band
from rebalancerd.planner.greedy.context import GreedyContext, MoveCountState
from rebalancerd.planner.greedy.polish import polish
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.sequence import _build_step, sequence
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import host, loose_limits, policy, snap, vm


def _problem(s: Any, **targets: Any) -> Problem:
    pol = policy(limits=loose_limits(), targets={"headroom": 0.0, **targets})
    return build_problem(apply_policy(pol, s, 0.0), pol)


def _worst_gap(p: Problem, st: State) -> float:
    return max(obj.gaps(p, st))


def _crossed() -> Any:
    """h1 heavy in memory and light in CPU, h2 the opposite, h3 in between."""
    return snap(
        [host("h1"), host("h2"), host("h3")],
        [
            vm("a", "h1", 3, 100),
            vm("b", "h1", 1, 1000),
            vm("c", "h2", 1, 3000),
            vm("d", "h2", 1, 1000),
            vm("e", "h3", 2, 1500),
            vm("f", "h3", 1, 1000),
        ],
    )


def test_polish_swaps_when_no_single_move_helps() -> None:
    p = _problem(_crossed())
    start = State(p)
    before = _worst_gap(p, start)
    # Precondition, checked by brute force: no single move lowers the worst gap, a swap does.
    for v, h in itertools.product(range(p.n_vms), range(p.n_hosts)):
        if start.can_move(v, h):
            trial = start.copy()
            trial.move(v, h)
            assert _worst_gap(p, trial) >= before - 1e-9, (p.vms[v].name, p.hosts[h].name)
    ctx = GreedyContext(p, MoveCountState(p))
    polish(ctx)
    moves = {(p.vms[v].name, p.hosts[o].name, p.hosts[h].name) for v, o, h in ctx.s.moves()}
    assert _worst_gap(p, ctx.s) < before - 0.05, moves
    assert len(moves) == 2
    assert {(o, t) for _, o, t in moves} == {("h1", "h2"), ("h2", "h1")}  # an exchange


def test_polish_and_band_never_break_capacity_or_worsen_the_worst_gap() -> None:
    for seed in range(3):
        s = skewed_snapshot(24, 300, seed, anti_affinity_groups=3)
        p = _problem(s, headroom=0.1)
        ctx = GreedyContext(p, MoveCountState(p))
        start = _worst_gap(p, ctx.s)
        polish(ctx)
        after_polish = _worst_gap(p, ctx.s)
        band(ctx)
        after_band = _worst_gap(p, ctx.s)
        assert after_band <= after_polish + 1e-9 <= start + 2e-9
        for h in range(p.n_hosts):
            if ctx.s.mem[h] > p.cap_mem[h] or ctx.s.cpu[h] > p.cap_cpu[h]:
                assert State(p).over_capacity(h)  # only hosts that started over stay over
        for h in range(p.n_hosts):
            assert all(ctx.s.anti_ok(v, h) for v in ctx.s.on[h])


def test_default_policy_balances_both_resources() -> None:
    s = skewed_snapshot(64, 800, 3)
    pol = policy(limits={**loose_limits(), "max_per_cycle": 10_000, "max_concurrent": 20})
    plan = make_plan(s, pol, now=0.0, time_limit_s=1.0)
    assert verify_plan(s, pol, plan, now=0.0) == []
    p = build_problem(apply_policy(pol, s, 0.0), pol)
    end = State(p)
    for m in plan.migrations:
        end.move(p.vm_index[m.vm], p.host_index[m.target])
    gc0, gm0 = obj.gaps(p, State(p))
    gc, gm = obj.gaps(p, end)
    # Neither resource is left far behind (minimax): both gaps end at a fraction of the start.
    assert gc < 0.25 * gc0 and gm < 0.25 * gm0, (gc0, gm0, gc, gm)


def test_plan_order_front_loads_the_improvement() -> None:
    s = skewed_snapshot(40, 500, 11)
    pol = policy(
        limits={**loose_limits(), "max_per_cycle": 10_000, "max_concurrent": 8},
        targets={"headroom": 0.0},  # no capacity relief: every move is an optional balance move
    )
    plan = make_plan(s, pol, now=0.0, time_limit_s=1.0)
    migs = plan.migrations
    assert len(migs) >= 20
    first = migs[0].score_before
    scores = [m.score_after for m in migs]
    assert first is not None and all(x is not None for x in scores)
    total = first - scores[-1]  # type: ignore[operator]
    half = first - scores[len(scores) // 2 - 1]  # type: ignore[operator]
    # Steepest descent: the first half of the plan does most of the work.
    assert total > 0 and half >= 0.75 * total, (first, half, total)


def test_steps_keep_the_priority_order() -> None:
    s = skewed_snapshot(12, 150, 5)
    pol = policy(limits={**loose_limits(), "max_concurrent": 4}, targets={"headroom": 0.0})
    p = build_problem(apply_policy(pol, s, 0.0), pol)
    # Every VM of the first host goes to the next host (round robin): many independent moves.
    vms = [v for v in range(p.n_vms) if p.origin[v] in (0, 1, 2, 3)]
    dest = {v: (p.origin[v] + 4 + (v % 8)) % p.n_hosts for v in vms}
    order = sorted(vms, key=lambda v: (-p.mem[v], v))
    steps, blocked = sequence(p, dest, order, budget_moves=1000, budget_mib=None)
    flat = [hp.vm for st in steps for hp in st if not hp.temporary]
    assert sorted(flat + [b.vm for b in blocked]) == sorted(vms)
    # A step looks only max_concurrent moves down the order; it reaches further only when none
    # of those can go yet (then a later move that frees their room goes first, instead of a
    # cycle being declared). Replay the steps and check exactly that.
    window = p.max_concurrent
    cur = State(p)
    pending = [v for v in order if dest[v] != cur.where[v]]
    for st in steps:
        real = [hp for hp in st if not hp.temporary]
        idx = [pending.index(hp.vm) for hp in real]
        if real and max(idx) >= window:
            head, _ = _build_step(
                p,
                cur,
                pending,
                dest,
                frozenset(),
                window,
                p.max_concurrent,
                p.max_per_source,
                p.max_per_target,
            )
            assert not head, "a move beyond the window went while one within it could"
        for hp in st:
            cur.move(hp.vm, hp.target)
        for hp in real:
            pending.remove(hp.vm)
    assert not pending or blocked
