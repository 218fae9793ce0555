"""Balance (and advisory): even out the weighted CPU and memory load of the active hosts.

Greedy: the opening descent (unless soft rules are broken), then the balance passes (heap
balance, minimax polish, band); the same without the opening to compare. CP-SAT minimises the
spread plus migration cost and soft-rule penalty; the polish runs again after it where no soft
rules weigh in. Moves are ordered as a steepest descent on the spread.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rebalancerd.planner import objective as obj
from rebalancerd.planner import terms as T
from rebalancerd.planner.greedy.balance import balance
from rebalancerd.planner.greedy.band import band
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory, MoveCountState
from rebalancerd.planner.greedy.mandatory import drain, fix_rules
from rebalancerd.planner.greedy.opening import OPENING_TOLERANCE, opening
from rebalancerd.planner.greedy.polish import polish
from rebalancerd.planner.greedy.target import has_targets, target_passes
from rebalancerd.planner.neighbourhoods import extreme_hosts, moved_hosts
from rebalancerd.planner.objectives.demand import CpuDemand
from rebalancerd.planner.ordering import descent_order
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.scores import balance_score
from rebalancerd.planner.state import State


def has_soft_rules(p: Problem) -> bool:
    return bool(p.soft_pins) or any(not g.hard for g in p.groups)


def soft_rules_broken(p: Problem, s: State) -> bool:
    """True if a soft pin or a soft (anti-)affinity group is broken in state `s`."""
    if any(s.where[v] not in hosts for v, hosts, _w, _n in p.soft_pins):
        return True
    for g in p.groups:
        if g.hard:
            continue
        homes = [s.where[v] for v in g.vms]
        if g.anti and len(set(homes)) < len(homes):
            return True
        if not g.anti and len(set(homes)) > 1:
            return True
    return False


def balance_passes(ctx: GreedyContext) -> None:
    balance(ctx)  # hosts above capacity with headroom go first
    polish(ctx)
    band(ctx)


class BalanceObjective:
    cpu_demand = CpuDemand.PREDICTED
    pack = False
    uses_cpsat = True
    has_cp_model = True
    cp_objective_unit: float = 100 * T.SCALE
    whole_plan_hysteresis = True
    steps_scored_by_power = False
    energy_reasons = False

    def greedy_passes(self, ctx: GreedyContext) -> GreedyContext:
        p = ctx.p
        if has_targets(p):  # a target band: reach it with the fewest moves
            target_passes(ctx)
            return ctx
        plain = None
        if not soft_rules_broken(p, ctx.s):
            # The opening only sees the gap; where soft rules are broken (e.g. VMs asked to move
            # back home), the passes and CP-SAT, which weigh them, choose which VMs move.
            opening(ctx)
        if ctx.opening:  # the same without the opening, to compare
            plain = GreedyContext(p, MoveCountState(p), deadline=ctx.deadline)
            drain(plain, self.pack)
            fix_rules(plain, self.pack)
            balance_passes(plain)
        ctx.fixed = frozenset(ctx.opening)  # the later passes leave the opening's moves in place
        balance_passes(ctx)
        if plain is not None:
            # A faster start may cost a little final spread, at most half the hysteresis.
            loss = obj.spread(p, ctx.s) - obj.spread(p, plain.s)
            if loss > OPENING_TOLERANCE * p.hysteresis:
                plain.notes.append(
                    f"opening descent dropped: its final spread is {loss:.3f} worse "
                    f"than without it (> {OPENING_TOLERANCE} x hysteresis)"
                )
                return plain
        return ctx

    def cp_terms(self, sub: T.Sub) -> list[Any]:
        return [T.Spread().add(sub)]

    def cp_score(self, p: Problem, s: State) -> float:
        return balance_score(p, s)

    def lns_hosts(
        self, p: Problem, s: State, round_index: int, balancing: list[int], rng: random.Random
    ) -> list[int]:
        """Even rounds: the hottest and coldest hosts; odd rounds: the hosts of a few planned
        moves (so the solver can undo moves that do not pay), or the extremes if none."""
        if round_index % 2 == 0:
            return extreme_hosts(p, s, balancing, rng)
        return moved_hosts(p, s, rng) or extreme_hosts(p, s, balancing, rng)

    def repolish_after_cpsat(self, p: Problem) -> bool:
        # The polish only evens the gap and is blind to soft rules: where there are some,
        # CP-SAT's answer (which weighs them) stands.
        return not has_soft_rules(p)

    def bound(self, p: Problem, cp_bound: float | None) -> float | None:
        return cp_bound if cp_bound is not None else obj.spread_lower_bound(p)

    def order_moves(
        self,
        p: Problem,
        order: list[int],
        dest: dict[int, int],
        mandatory: dict[int, Mandatory],
        opening: Sequence[int],
    ) -> tuple[list[int], frozenset[int]]:
        # The opening descent's moves lead, in the order they were made.
        lead = [v for v in opening if v in dest]
        return descent_order(p, order, dest, mandatory, lead), frozenset(lead)

    def plan_value(self, p: Problem, s: State) -> float:
        return balance_score(p, s)


OBJECTIVE = BalanceObjective()
