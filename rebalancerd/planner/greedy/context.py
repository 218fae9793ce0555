"""The greedy's working state: the problem, a state with a cached move count, the move/MiB
budget spent so far, why each VM moved, and the wall-clock stop for the optional passes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State


@dataclass(slots=True)
class Mandatory:
    """Why a VM had to move (drain, evacuation, hard rule, capacity relief; consolidate also
    records its energy moves here): the reason its migration gives."""

    kind: ReasonKind
    detail: str
    rule: str | None = None


class MoveCountState(State):
    """State with a cached move count (the greedy checks the budget on every move)."""

    __slots__ = ("n_moves_cached",)

    def __init__(self, p: Problem, where: list[int] | None = None) -> None:
        super().__init__(p, where)
        self.n_moves_cached = self.n_moves()


@dataclass(slots=True)
class GreedyContext:
    """One greedy run: the problem, the placement being built, the budget it has spent, why
    each VM moved, and its notes. Every pass reads and extends it."""

    p: Problem
    s: MoveCountState
    moved_mib: int = 0
    mandatory: dict[int, Mandatory] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    """VMs the greedy already moved (never moved twice)."""
    notes: list[str] = field(default_factory=list)
    received: set[int] = field(default_factory=set)
    """Hosts that received a VM (consolidate never empties them afterwards)."""
    opening: list[int] = field(default_factory=list)
    """VMs moved by the opening descent, in order (kept in place by later passes)."""
    deadline: float = math.inf
    """time.perf_counter() value at which the optional passes stop (a safety net, like
    CP-SAT's wall-clock limit: every move made so far is valid, so the placement always is)."""
    stopped: list[str] = field(default_factory=list)
    """Passes stopped by the deadline."""
    fixed: frozenset[int] = frozenset()
    """VMs the balance passes (balance, polish, band) must leave where they are now, on top of
    the problem's immovable ones: the opening's moves, and in repolish the drained VMs too."""

    def may_move(self, v: int) -> bool:
        """v is movable in the problem and not held in place by `fixed`."""
        return self.p.movable[v] and v not in self.fixed

    def out_of_time(self, phase: str) -> bool:
        """True (and noted once per phase) once the deadline has passed."""
        if time.perf_counter() < self.deadline:
            return False
        if phase not in self.stopped:
            self.stopped.append(phase)
            self.notes.append(
                f"greedy {phase} stopped by the wall-clock limit: plan may vary between runs"
            )
        return True

    def moves_left(self) -> int:
        return self.p.max_moves - self.s.n_moves_cached

    def can_spend(self, units: list[int]) -> bool:
        p = self.p
        new = [v for v in units if self.s.where[v] == p.origin[v]]
        if self.s.n_moves_cached + len(new) > p.max_moves:
            return False
        if p.max_mib is not None:
            add = sum(p.move_mib[v] for v in new)
            if self.moved_mib + add > p.max_mib:
                return False
        return True

    def apply(self, units: list[int], h: int, why: Mandatory | None = None) -> None:
        p, s = self.p, self.s
        for v in units:
            was_home = s.where[v] == p.origin[v]
            s.move(v, h)
            now_home = s.where[v] == p.origin[v]
            if was_home and not now_home:
                s.n_moves_cached += 1
                self.moved_mib += p.move_mib[v]
            elif now_home and not was_home:
                s.n_moves_cached -= 1
                self.moved_mib -= p.move_mib[v]
            self.touched.add(v)
            if why is not None:
                self.mandatory[v] = why
        self.received.add(h)
