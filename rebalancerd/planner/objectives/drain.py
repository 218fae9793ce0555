"""Drain: only empty the hosts in maintenance (and degraded hosts), no balancing moves.

Like balance in how targets are chosen, scored and bounded, without any optional pass, CP-SAT
or reordering."""

from __future__ import annotations

from collections.abc import Sequence

from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.objectives.balance import BalanceObjective
from rebalancerd.planner.problem import Problem


class DrainObjective(BalanceObjective):
    uses_cpsat = False
    has_cp_model = False

    def greedy_passes(self, ctx: GreedyContext) -> GreedyContext:
        return ctx  # drains and rule fixes only

    def repolish_after_cpsat(self, p: Problem) -> bool:
        return False

    def order_moves(
        self,
        p: Problem,
        order: list[int],
        dest: dict[int, int],
        mandatory: dict[int, Mandatory],
        opening: Sequence[int],
    ) -> tuple[list[int], frozenset[int]]:
        return order, frozenset()


OBJECTIVE = DrainObjective()
