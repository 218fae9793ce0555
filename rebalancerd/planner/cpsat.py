"""CP-SAT improvement of a greedy placement: one full model on small clusters, large
neighbourhood search (LNS) on big ones.

Each LNS round frees the movable VMs of a few hosts (the hottest and coldest hosts, or the hosts
touched by a handful of planned moves so the solver can undo moves that do not pay) and lets
CP-SAT re-place them on those hosts, hinted with the current placement; a round's answer is kept
only if the global score improves. Rounds, neighbourhoods and solver limits derive from the seed
and the time limit only (num_workers=1, a deterministic time limit per round), so the same input
gives the same plan; wall-clock limits are a safety net and are reported in the notes when hit.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from rebalancerd.planner import objective as obj
from rebalancerd.planner import terms as T
from rebalancerd.planner.objectives.base import Objective
from rebalancerd.planner.objectives.registry import objective_for
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

FULL_MAX_HOSTS = 12
FULL_MAX_VMS = 120
LNS_ROUND_DET = 0.15
"""Deterministic time per LNS round (about seconds of one core)."""
LNS_MAX_VMS = 120


@dataclass(slots=True)
class CpInfo:
    status: str = "SKIPPED"
    objective: float | None = None
    bound: float | None = None
    rounds: int = 0
    improved: int = 0
    notes: list[str] = field(default_factory=list)


def _free_vms(p: Problem, s: State, hosts: list[int], fixed: frozenset[int]) -> list[int]:
    """The VMs on `hosts` the model may re-place: movable, not in `fixed`, not in a hard
    affinity group, and on a host they may run on."""
    out: list[int] = []
    for h in hosts:
        for v in sorted(s.on[h]):
            if p.movable[v] and v not in fixed and v not in p.aff_of and p.may_host(v, s.where[v]):
                out.append(v)
    return out


def _solve_sub(
    objective: Objective,
    p: Problem,
    s: State,
    vms: list[int],
    hosts: list[int],
    seed: int,
    det: float,
    wall: float,
) -> T.SolveResult:
    sub = T.Sub(p, s, vms, hosts)
    for term in T.HARD_TERMS:
        term().add(sub)
    objs: list[Any] = [T.MigrationCost().add(sub), T.SoftRules().add(sub)]
    objs.extend(objective.cp_terms(sub))
    return T.solve(sub, objs, seed=seed, det_time=det, wall_time=wall)


def _apply(s: State, where: dict[int, int]) -> None:
    for v, h in sorted(where.items()):
        s.move(v, h)


def improve(
    p: Problem,
    s: State,
    *,
    time_limit_s: float,
    seed: int,
    deadline: float,
    fixed: frozenset[int] = frozenset(),
) -> CpInfo:
    """Improve `s` in place, leaving the VMs in `fixed` where they are. `deadline` is a
    time.perf_counter() value (safety net only)."""
    info = CpInfo()
    objective = objective_for(p.mode)
    hosts_all = [h for h in range(p.n_hosts) if p.receive[h] or s.on[h]]
    free_all = _free_vms(p, s, hosts_all, fixed)
    if not free_all or p.max_moves == 0 or not objective.has_cp_model:
        return info
    if p.n_hosts <= FULL_MAX_HOSTS and len(free_all) <= FULL_MAX_VMS:
        wall = deadline - time.perf_counter()
        if wall <= 0.05:
            info.notes.append("no time left for CP-SAT")
            return info
        before = objective.cp_score(p, s)
        res = _solve_sub(
            objective, p, s, free_all, hosts_all, seed, max(0.05, 0.1 * time_limit_s), wall
        )
        info.status, info.rounds = res.status, 1
        if res.status.endswith("_WALL_LIMIT"):
            info.status = res.status.removesuffix("_WALL_LIMIT")
            info.notes.append("CP-SAT stopped by the wall-clock limit: plan may vary between runs")
        if res.where:
            trial = s.copy()
            _apply(trial, res.where)
            if objective.cp_score(p, trial) < before - 1e-9:
                _apply(s, res.where)
                info.improved = 1
            div = objective.cp_objective_unit
            info.objective = res.objective / div if res.objective is not None else None
            info.bound = res.bound / div if res.bound is not None else None
        return info
    return _lns(
        objective, p, s, info, time_limit_s=time_limit_s, seed=seed, deadline=deadline, fixed=fixed
    )


def _lns(
    objective: Objective,
    p: Problem,
    s: State,
    info: CpInfo,
    *,
    time_limit_s: float,
    seed: int,
    deadline: float,
    fixed: frozenset[int],
) -> CpInfo:
    rng = random.Random(seed)
    rounds = max(1, int(0.1 * time_limit_s / LNS_ROUND_DET))
    info.status = "LNS"
    best = objective.cp_score(p, s)
    bal = obj.balancing(p)
    for r in range(rounds):
        wall = deadline - time.perf_counter()
        if wall <= 0.05:
            info.notes.append(f"LNS stopped at the time limit after {r} of {rounds} rounds")
            break
        hosts = objective.lns_hosts(p, s, r, bal, rng)
        vms = _free_vms(p, s, hosts, fixed)
        if len(vms) > LNS_MAX_VMS:
            vms = sorted(rng.sample(vms, LNS_MAX_VMS))
        if not vms:
            continue
        res = _solve_sub(objective, p, s, vms, hosts, seed + r, LNS_ROUND_DET, wall)
        info.rounds += 1
        if res.status.endswith("_WALL_LIMIT"):
            info.notes.append("CP-SAT stopped by the wall-clock limit: plan may vary between runs")
        if not res.where:
            continue
        trial = s.copy()
        _apply(trial, res.where)
        sc = objective.cp_score(p, trial)
        if sc < best - 1e-9:
            _apply(s, res.where)
            best = sc
            info.improved += 1
    info.objective = best
    return info
