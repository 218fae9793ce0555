"""Baseline planners for the benchmark (not used by the daemon).

- first-fit decreasing (FFD): VMs by memory, largest first, each on the first active host (in
  inventory order) that stays under the cluster's mean memory load + 5 % and within capacity with
  headroom; if none, the first host with room; if none, it stays.
- largest-hottest-coldest: first empty the hosts that must be emptied (maintenance, degraded),
  largest VM first, each to the host with the lowest memory load that has room (a plan that
  leaves VMs on a host in maintenance is not a valid plan, so the baseline pays for the drain as
  ours does); then repeatedly move the largest VM of the host with the highest memory load to
  the host with the lowest, while that lowers the memory gap (max - min).

Both respect movability and capacity with headroom; neither knows about anti-affinity (the
benchmark counts what they break). Moves are returned in order: (vm, source, target).
"""

from __future__ import annotations

import bisect

from rebalancerd.planner import objective as obj
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

Move = tuple[int, int, int]


def ffd(p: Problem) -> list[Move]:
    hs = obj.balancing(p)
    s = State(p)
    movable = [v for v in range(p.n_vms) if p.movable[v]]
    for v in movable:  # take every movable VM out, keep the fixed ones
        s.cpu[s.where[v]] -= p.cpu[v]
        s.mem[s.where[v]] -= p.mem[v]
    tot = sum(p.mem) - sum(p.mem[v] for v in range(p.n_vms) if p.origin[v] not in set(hs))
    fill = tot / max(1, sum(p.raw_mem[h] for h in hs)) + 0.05
    where = list(p.origin)
    for v in sorted(movable, key=lambda v: (-p.mem[v], v)):
        chosen = None
        for limit in (fill, None):
            for h in hs:
                if not p.may_host(v, h):
                    continue
                if s.cpu[h] + p.cpu[v] > p.cap_cpu[h] or s.mem[h] + p.mem[v] > p.cap_mem[h]:
                    continue
                if limit is not None and (s.mem[h] + p.mem[v]) / p.raw_mem[h] > limit:
                    continue
                chosen = h
                break
            if chosen is not None:
                break
        h = chosen if chosen is not None else p.origin[v]
        s.cpu[h] += p.cpu[v]
        s.mem[h] += p.mem[v]
        where[v] = h
    return [(v, p.origin[v], where[v]) for v in range(p.n_vms) if where[v] != p.origin[v]]


def largest_hottest_coldest(p: Problem, max_moves: int = 1_000_000) -> list[Move]:
    hs = obj.balancing(p)
    if len(hs) < 2:
        return []
    s = State(p)
    val = {h: s.mem[h] / p.raw_mem[h] for h in hs}
    order = sorted((val[h], h) for h in hs)
    moves: list[Move] = []
    for src in range(p.n_hosts):
        if p.empty_reason[src] is None:
            continue
        for v in sorted((v for v in s.on[src] if p.movable[v]), key=lambda v: (-p.mem[v], v)):
            if len(moves) >= max_moves:
                return moves
            dst = next((h for _, h in order if p.may_host(v, h) and s.fits(v, h)), None)
            if dst is None:
                continue  # no room anywhere: it stays (our planner reports such a VM too)
            _update(order, val, p, s, v, dst)
            moves.append((v, src, dst))
    tried: set[int] = set()
    while len(moves) < max_moves:
        gap = order[-1][0] - order[0][0]
        hot = next((h for _, h in reversed(order) if h not in tried), None)
        if hot is None:
            break
        cold = order[0][1]
        cands = sorted((v for v in s.on[hot] if p.movable[v]), key=lambda v: (-p.mem[v], v))
        done = False
        for v in cands:
            if not (p.may_host(v, cold) and s.fits(v, cold)):
                continue
            _update(order, val, p, s, v, cold)
            new_gap = order[-1][0] - order[0][0]
            if new_gap < gap - 1e-12:
                moves.append((v, hot, cold))
                done = True
            else:
                _update(order, val, p, s, v, hot)
            break
        if not done:
            if hot == order[-1][1]:
                break  # the hottest host cannot improve: no gain left
            tried.add(hot)
    return moves


def _update(
    order: list[tuple[float, int]], val: dict[int, float], p: Problem, s: State, v: int, to: int
) -> None:
    a = s.where[v]
    hosts = [h for h in (a, to) if h in val]  # a host being emptied is not in the order
    for h in hosts:
        i = bisect.bisect_left(order, (val[h], h))
        order.pop(i)
    s.move(v, to)
    for h in hosts:
        val[h] = s.mem[h] / p.raw_mem[h]
        bisect.insort(order, (val[h], h))
