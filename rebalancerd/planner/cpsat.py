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
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State
from rebalancerd.policy.schema import Mode

FULL_MAX_HOSTS = 12
FULL_MAX_VMS = 120
LNS_ROUND_DET = 0.15
"""Deterministic time per LNS round (about seconds of one core)."""
LNS_HOSTS = 8
"""Hot and cold hosts per extremes round (each side)."""
LNS_MOVES = 6
"""Planned moves reopened per undo round."""
LNS_MAX_VMS = 120


@dataclass(slots=True)
class CpInfo:
    status: str = "SKIPPED"
    objective: float | None = None
    bound: float | None = None
    rounds: int = 0
    improved: int = 0
    notes: list[str] = field(default_factory=list)


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
    p: Problem, s: State, vms: list[int], hosts: list[int], seed: int, det: float, wall: float
) -> T.SolveResult:
    sub = T.Sub(p, s, vms, hosts)
    for term in T.HARD_TERMS:
        term().add(sub)
    objs: list[Any] = [T.MigrationCost().add(sub), T.SoftRules().add(sub)]
    if p.mode is Mode.CONSOLIDATE:
        objs.append(T.Power().add(sub))
        T.MinActiveHosts().add(sub)
    else:
        objs.append(T.Spread().add(sub))
    return T.solve(sub, objs, seed=seed, det_time=det, wall_time=wall)


def _score(p: Problem, s: State) -> float:
    if p.mode is Mode.CONSOLIDATE:
        return _power_score(p, s)
    return balance_score(p, s)


def _power_score(p: Problem, s: State) -> float:
    mm = obj.mean_host_mem(p)
    cost = sum(obj.move_cost(p, v, mm) for v, _, _ in s.moves())
    return obj.power(p, s) + 100.0 * cost + 100.0 * soft_penalty(p, s)


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
    hosts_all = [h for h in range(p.n_hosts) if p.receive[h] or s.on[h]]
    free_all = _free_vms(p, s, hosts_all, fixed)
    if not free_all or p.max_moves == 0 or p.mode is Mode.DRAIN:
        return info
    if p.n_hosts <= FULL_MAX_HOSTS and len(free_all) <= FULL_MAX_VMS:
        wall = deadline - time.perf_counter()
        if wall <= 0.05:
            info.notes.append("no time left for CP-SAT")
            return info
        before = _score(p, s)
        res = _solve_sub(p, s, free_all, hosts_all, seed, max(0.05, 0.1 * time_limit_s), wall)
        info.status, info.rounds = res.status, 1
        if res.status.endswith("_WALL_LIMIT"):
            info.status = res.status.removesuffix("_WALL_LIMIT")
            info.notes.append("CP-SAT stopped by the wall-clock limit: plan may vary between runs")
        if res.where:
            trial = s.copy()
            _apply(trial, res.where)
            if _score(p, trial) < before - 1e-9:
                _apply(s, res.where)
                info.improved = 1
            div = 100 * T.SCALE if p.mode is not Mode.CONSOLIDATE else 100.0
            info.objective = res.objective / div if res.objective is not None else None
            info.bound = res.bound / div if res.bound is not None else None
        return info
    return _lns(p, s, info, time_limit_s=time_limit_s, seed=seed, deadline=deadline, fixed=fixed)


def _lns(
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
    best = _score(p, s)
    bal = obj.balancing(p)
    for r in range(rounds):
        wall = deadline - time.perf_counter()
        if wall <= 0.05:
            info.notes.append(f"LNS stopped at the time limit after {r} of {rounds} rounds")
            break
        if p.mode is Mode.CONSOLIDATE:
            hosts = _consolidate_hosts(p, s, rng)
        elif r % 2 == 0:
            hosts = _extreme_hosts(p, s, bal, rng)
        else:
            hosts = _moved_hosts(p, s, rng)
            if not hosts:
                hosts = _extreme_hosts(p, s, bal, rng)
        vms = _free_vms(p, s, hosts, fixed)
        if len(vms) > LNS_MAX_VMS:
            vms = sorted(rng.sample(vms, LNS_MAX_VMS))
        if not vms:
            continue
        res = _solve_sub(p, s, vms, hosts, seed + r, LNS_ROUND_DET, wall)
        info.rounds += 1
        if res.status.endswith("_WALL_LIMIT"):
            info.notes.append("CP-SAT stopped by the wall-clock limit: plan may vary between runs")
        if not res.where:
            continue
        trial = s.copy()
        _apply(trial, res.where)
        sc = _score(p, trial)
        if sc < best - 1e-9:
            _apply(s, res.where)
            best = sc
            info.improved += 1
    info.objective = best
    return info


def _extreme_hosts(p: Problem, s: State, bal: list[int], rng: random.Random) -> list[int]:
    nc = [(s.cpu[h] / p.raw_cpu[h], h) for h in bal]
    nm = [(s.mem[h] / p.raw_mem[h], h) for h in bal]
    nc.sort()
    nm.sort()
    k = LNS_HOSTS // 2
    pick: set[int] = set()
    for lst in (nc, nm):
        pick.update(h for _, h in lst[:k])
        pick.update(h for _, h in lst[-k:])
    # a few random hosts give the solver room for swaps
    rest = [h for h in bal if h not in pick]
    pick.update(rng.sample(rest, min(len(rest), 2)))
    return sorted(pick)


def _moved_hosts(p: Problem, s: State, rng: random.Random) -> list[int]:
    moves = s.moves()
    if not moves:
        return []
    chosen = rng.sample(moves, min(len(moves), LNS_MOVES))
    hosts = {o for _, o, _ in chosen} | {h for _, _, h in chosen}
    return sorted(h for h in hosts if p.receive[h] or s.on[h])


def _consolidate_hosts(p: Problem, s: State, rng: random.Random) -> list[int]:
    on = [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None and s.on[h]]
    on.sort(key=lambda h: (max(s.cpu[h] / p.raw_cpu[h], s.mem[h] / p.raw_mem[h]), h))
    k = LNS_HOSTS
    pick = set(on[:k]) | set(on[-k:])
    mid = on[k:-k]
    pick.update(rng.sample(mid, min(len(mid), k)))
    return sorted(pick)
