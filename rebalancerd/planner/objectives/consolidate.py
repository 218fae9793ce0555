"""Consolidate: pack VMs onto few hosts so that empty hosts can be switched off (energy).

In make_plan the greedy (hotspot relief into a band, whole-host emptying:
planner/consolidate.py), then, within the greedy's deadline, CP-SAT bin-packing by LNS over it
(planner/consolidate_cpsat.py: only answers that switch whole hosts off are kept). The generic
CP-SAT step of make_plan is not used: its partial moves would save little and fill hosts past
the packing band, though its model (power, minimum active hosts) is kept. The hysteresis applies
per emptied host, moves off emptied hosts are energy moves, and the plan reports watts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rebalancerd.planner import consolidate_cpsat
from rebalancerd.planner import objective as obj
from rebalancerd.planner import terms as T
from rebalancerd.planner.consolidate import consolidate_mode, interleave_targets
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.neighbourhoods import consolidate_hosts
from rebalancerd.planner.objectives.demand import CpuDemand
from rebalancerd.planner.ordering import priority_of
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.scores import power_score
from rebalancerd.planner.state import State


class ConsolidateObjective:
    cpu_demand = CpuDemand.CURRENT
    pack = True
    uses_cpsat = False
    has_cp_model = True
    cp_objective_unit = 100.0
    whole_plan_hysteresis = False
    steps_scored_by_power = True
    energy_reasons = True

    def greedy_passes(self, ctx: GreedyContext) -> GreedyContext:
        consolidate_mode(ctx)  # hotspot relief into a band, then whole-host emptying
        ctx.notes.extend(consolidate_cpsat.improve(ctx).notes)  # CP-SAT LNS repack
        return ctx

    def cp_terms(self, sub: T.Sub) -> list[Any]:
        terms = [T.Power().add(sub)]
        T.MinActiveHosts().add(sub)
        return terms

    def cp_score(self, p: Problem, s: State) -> float:
        return power_score(p, s)

    def lns_hosts(
        self, p: Problem, s: State, round_index: int, balancing: list[int], rng: random.Random
    ) -> list[int]:
        return consolidate_hosts(p, s, rng)

    def repolish_after_cpsat(self, p: Problem) -> bool:
        return False

    def bound(self, p: Problem, cp_bound: float | None) -> float | None:
        return None

    def order_moves(
        self,
        p: Problem,
        order: list[int],
        dest: dict[int, int],
        mandatory: dict[int, Mandatory],
        opening: Sequence[int],
    ) -> tuple[list[int], frozenset[int]]:
        return interleave_targets(order, dest, lambda v: priority_of(v, mandatory)), frozenset()

    def plan_value(self, p: Problem, s: State) -> float:
        return obj.power(p, s)


OBJECTIVE = ConsolidateObjective()
