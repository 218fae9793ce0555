"""Objective values shared by greedy, CP-SAT, hysteresis and the benchmark.

balance: spread = weighted mean over resources of (max - min) normalised load on active hosts,
plus a migration cost per move. consolidate: watts from host power curves (hosts without VMs are
off and draw 0 W). A lower bound on the spread is computed from what cannot move.
"""

from __future__ import annotations

from rebalancerd.domain.model import PowerCurve
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

COST_WEIGHT = 0.01
"""Spread units charged per move of a VM the size of an average host's memory."""
MOVE_BASE = 0.1
"""Fixed part of a move's cost, as a fraction of an average host's memory."""
DEFAULT_CURVE = PowerCurve(
    (120.0, 150.0, 170.0, 190.0, 210.0, 230.0, 250.0, 270.0, 290.0, 310.0, 330.0)
)
"""Used for hosts without a power curve in the snapshot or the policy."""


def weights(p: Problem) -> tuple[float, float]:
    """(CPU, memory) weights: the policy's, as policy.resolve.policy_weights maps them."""
    return p.w_cpu, p.w_mem


def balancing(p: Problem) -> list[int]:
    """Hosts that take part in balancing: active hosts that are not being emptied."""
    return [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None]


def gaps(p: Problem, s: State, hosts: list[int] | None = None) -> tuple[float, float]:
    hs = balancing(p) if hosts is None else hosts
    if len(hs) < 2:
        return 0.0, 0.0
    c = [s.cpu[h] / p.raw_cpu[h] for h in hs]
    m = [s.mem[h] / p.raw_mem[h] for h in hs]
    return max(c) - min(c), max(m) - min(m)


def spread(p: Problem, s: State) -> float:
    wc, wm = weights(p)
    gc, gm = gaps(p, s)
    return (wc * gc + wm * gm) / (wc + wm)


def worst_gap(p: Problem, s: State) -> float:
    """The worse of the weighted CPU and memory gaps, normalised by the larger weight (a gap
    of resource r counts w_r / max(w_cpu, w_mem) of itself)."""
    wc, wm = weights(p)
    gc, gm = gaps(p, s)
    top = max(wc, wm)
    return max(wc * gc, wm * gm) / top


def mean_host_mem(p: Problem) -> float:
    hs = balancing(p) or list(range(p.n_hosts))
    return sum(p.raw_mem[h] for h in hs) / max(1, len(hs))


def move_cost(p: Problem, v: int, mean_mem: float) -> float:
    """Cost of migrating v, in spread units."""
    return COST_WEIGHT * (MOVE_BASE + p.cost_mib[v] / mean_mem)


def total_move_cost(p: Problem, s: State) -> float:
    mm = mean_host_mem(p)
    return sum(move_cost(p, v, mm) for v, _, _ in s.moves())


def curve(p: Problem, h: int) -> PowerCurve:
    return p.hosts[h].power_curve or DEFAULT_CURVE


def host_power(p: Problem, s: State, h: int) -> float:
    if not s.on[h]:
        return 0.0
    return curve(p, h).at(s.cpu[h] / p.raw_cpu[h])


def power(p: Problem, s: State) -> float:
    return sum(host_power(p, s, h) for h in range(p.n_hosts))


def spread_lower_bound(p: Problem) -> float:
    """No placement has a smaller spread: fixed VMs pin some hosts above the capacity mean."""
    hs = balancing(p)
    if len(hs) < 2:
        return 0.0
    hset = set(hs)
    fixed_c = dict.fromkeys(hs, 0)
    fixed_m = dict.fromkeys(hs, 0)
    tot_c = tot_m = 0
    for v in range(p.n_vms):
        o = p.origin[v]
        stays = not p.movable[v]
        if stays and o not in hset:
            continue  # fixed on a host outside balancing: never lands on an active host
        tot_c += p.cpu[v]
        tot_m += p.mem[v]
        if stays:
            fixed_c[o] += p.cpu[v]
            fixed_m[o] += p.mem[v]
    mc = tot_c / sum(p.raw_cpu[h] for h in hs)
    mm = tot_m / sum(p.raw_mem[h] for h in hs)
    lc = max(0.0, max(fixed_c[h] / p.raw_cpu[h] for h in hs) - mc)
    lm = max(0.0, max(fixed_m[h] / p.raw_mem[h] for h in hs) - mm)
    wc, wm = weights(p)
    return (wc * lc + wm * lm) / (wc + wm)
