"""Neighbourhoods of the CP-SAT large neighbourhood search: which hosts a round reopens."""

from __future__ import annotations

import random

from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

LNS_HOSTS = 8
"""Hot and cold hosts per extremes round (each side)."""
LNS_MOVES = 6
"""Planned moves reopened per undo round."""


def extreme_hosts(p: Problem, s: State, bal: list[int], rng: random.Random) -> list[int]:
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


def moved_hosts(p: Problem, s: State, rng: random.Random) -> list[int]:
    moves = s.moves()
    if not moves:
        return []
    chosen = rng.sample(moves, min(len(moves), LNS_MOVES))
    hosts = {o for _, o, _ in chosen} | {h for _, _, h in chosen}
    return sorted(h for h in hosts if p.receive[h] or s.on[h])


def consolidate_hosts(p: Problem, s: State, rng: random.Random) -> list[int]:
    on = [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None and s.on[h]]
    on.sort(key=lambda h: (max(s.cpu[h] / p.raw_cpu[h], s.mem[h] / p.raw_mem[h]), h))
    k = LNS_HOSTS
    pick = set(on[:k]) | set(on[-k:])
    mid = on[k:-k]
    pick.update(rng.sample(mid, min(len(mid), k)))
    return sorted(pick)
