"""Scores of a whole placement that CP-SAT compares and the plan reports: the balance score
(spread + migration cost + soft-rule penalty) and the power score (consolidate)."""

from __future__ import annotations

from rebalancerd.planner import objective as obj
from rebalancerd.planner import terms as T
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State


def soft_penalty(p: Problem, s: State) -> float:
    """Python value of terms.SoftRules, in spread units."""
    unit = T.SoftRules.PENALTY / (100 * T.SCALE)
    pen = 0.0
    for g in p.groups:
        if g.hard:
            continue
        hosts: dict[int, int] = {}
        for v in g.vms:
            hosts[s.where[v]] = hosts.get(s.where[v], 0) + 1
        if g.anti:
            pen += g.weight * unit * sum(n - 1 for n in hosts.values() if n > 1)
        else:
            pen += g.weight * unit * (len(hosts) - 1)
    for v, hs, w, _ in p.soft_pins:
        if s.where[v] not in hs:
            pen += w * unit
    return pen


def balance_score(p: Problem, s: State) -> float:
    return obj.spread(p, s) + obj.total_move_cost(p, s) + soft_penalty(p, s)


def power_score(p: Problem, s: State) -> float:
    mm = obj.mean_host_mem(p)
    cost = sum(obj.move_cost(p, v, mm) for v, _, _ in s.moves())
    return obj.power(p, s) + 100.0 * cost + 100.0 * soft_penalty(p, s)
