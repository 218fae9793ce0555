"""The Objective protocol: what differs between the planner's modes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.objectives.demand import CpuDemand
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State
from rebalancerd.planner.terms import Sub


class Objective(Protocol):
    """One planning mode's objective. The planner (greedy, CP-SAT, make_plan) asks it instead of
    testing the mode."""

    cpu_demand: CpuDemand
    """Which CPU figure per VM the problem holds."""
    pack: bool
    """Drains and rule fixes send a VM to the fullest host that stays under the high watermark
    (True) instead of the coldest one."""
    uses_cpsat: bool
    """make_plan runs CP-SAT on the greedy's placement."""
    has_cp_model: bool
    """CP-SAT can model this objective at all (cpsat.improve does nothing otherwise)."""
    cp_objective_unit: float
    """Divisor from the CP-SAT model's objective and bound to the objective's own units."""
    whole_plan_hysteresis: bool
    """make_plan drops the optional moves when together they gain less than the hysteresis
    (False: the objective applies the hysteresis itself, e.g. per emptied host)."""
    steps_scored_by_power: bool
    """The per-migration score before/after is the cluster's power draw (else the imbalance)."""
    energy_reasons: bool
    """Moves off a host that ends empty are explained as energy moves."""

    def greedy_passes(self, ctx: GreedyContext) -> GreedyContext:
        """The greedy's passes after drains and rule fixes; the context whose placement is kept
        (`ctx`, or another one the objective built and preferred)."""
        ...

    def cp_terms(self, sub: Sub) -> list[Any]:
        """Add the objective's own CP-SAT terms to `sub` (after the hard terms, migration cost and
        soft rules); the terms to minimise."""
        ...

    def cp_score(self, p: Problem, s: State) -> float:
        """Score of a placement that CP-SAT must lower for its answer to be kept."""
        ...

    def lns_hosts(
        self, p: Problem, s: State, round_index: int, balancing: list[int], rng: random.Random
    ) -> list[int]:
        """Hosts the LNS round `round_index` reopens."""
        ...

    def repolish_after_cpsat(self, p: Problem) -> bool:
        """Run the greedy's polish again after CP-SAT improved the placement."""
        ...

    def bound(self, p: Problem, cp_bound: float | None) -> float | None:
        """Lower bound reported with the plan (`cp_bound`: CP-SAT's proven one, if any)."""
        ...

    def order_moves(
        self,
        p: Problem,
        order: list[int],
        dest: dict[int, int],
        mandatory: dict[int, Mandatory],
        opening: Sequence[int],
    ) -> tuple[list[int], frozenset[int]]:
        """The planned moves (given by priority) in the order to sequence them, and the VMs whose
        relative order the sequencer must keep."""
        ...

    def plan_value(self, p: Problem, s: State) -> float:
        """The objective value reported for the final placement."""
        ...
