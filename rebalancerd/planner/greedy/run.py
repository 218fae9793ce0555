"""run_greedy: the greedy phases in order (drains, rule fixes, then the mode's passes), and the
passes again after CP-SAT (repolish)."""

from __future__ import annotations

import math
import time

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.band import REBAND_MIN_HOSTS, reband
from rebalancerd.planner.greedy.context import GreedyContext, MoveCountState
from rebalancerd.planner.greedy.mandatory import drain, fix_rules
from rebalancerd.planner.greedy.polish import polish
from rebalancerd.planner.objectives.registry import objective_for
from rebalancerd.planner.problem import Problem

GREEDY_SHARE = 0.9
"""The optional greedy passes stop at this share of the time left to the deadline, so that
CP-SAT gets some of it even on a loaded machine (at 2,000 hosts / 25,000 VMs on a quiet
machine the greedy needs 2-3.5 s of a 5 s limit, the LNS 0.5-0.7 s)."""
REPOLISH_GRACE = 0.5
"""The passes after CP-SAT (repolish) may run until the deadline plus this share of the time
limit: they start only before the deadline, and on a quiet machine need ~2 s at 2,000 hosts."""


def run_greedy(p: Problem, deadline: float = math.inf) -> GreedyContext:
    """The greedy plan. `deadline` is a time.perf_counter() value (the plan's time limit):
    drains and rule fixes always run; the optional passes (opening, balance, polish, band)
    stop at GREEDY_SHARE of the time left, each leaving a valid placement, and say so in the
    notes. The returned ctx.deadline is the one for repolish (the deadline plus
    REPOLISH_GRACE of the time limit)."""
    start = time.perf_counter()
    limit = deadline - start
    stop = start + GREEDY_SHARE * limit if math.isfinite(limit) else math.inf
    ctx = _run_greedy(p, stop)
    ctx.deadline = deadline + REPOLISH_GRACE * max(0.0, limit) if math.isfinite(limit) else math.inf
    return ctx


def _run_greedy(p: Problem, stop: float) -> GreedyContext:
    objective = objective_for(p.mode)
    ctx = GreedyContext(p, MoveCountState(p), deadline=stop)
    drain(ctx, objective.pack)
    fix_rules(ctx, objective.pack)
    return objective.greedy_passes(ctx)


def repolish(ctx: GreedyContext, fixed: frozenset[int]) -> list[str]:
    """Band tightening and minimax polish again after CP-SAT changed ctx.s in place (its
    rounds minimise the weighted sum of the gaps, and may leave the worse gap a little higher
    than it could be, and a few hosts outside the band). The VMs in `fixed` stay where they
    are. Stops at ctx.deadline; returns the notes it added."""
    p, s = ctx.p, ctx.s
    ctx.fixed = fixed
    moves = s.moves()
    s.n_moves_cached = len(moves)
    ctx.moved_mib = sum(p.move_mib[v] for v, _, _ in moves)
    n_notes = len(ctx.notes)
    if len(obj.balancing(p)) > REBAND_MIN_HOSTS:
        reband(ctx)
    polish(ctx)
    return ctx.notes[n_notes:]
