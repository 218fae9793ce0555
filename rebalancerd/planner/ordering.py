"""The order of a plan's moves before sequencing: by priority (drains first, then rule fixes,
capacity relief, the rest), within a priority the moves touching the most extreme hosts first;
balance plans then as a steepest descent on the spread."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import Mandatory
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

PRIORITY = {
    ReasonKind.DRAIN: 0,
    ReasonKind.EVACUATE: 0,
    ReasonKind.RULE: 1,
    ReasonKind.HOTSPOT: 2,
}


def priority_of(v: int, mandatory: dict[int, Mandatory]) -> int:
    """Sequencing priority of VM v's move: drains 0, rule fixes 1, capacity relief 2, others 3."""
    return PRIORITY.get(mandatory[v].kind, 3) if v in mandatory else 3


def by_priority(p: Problem, s: State, mandatory: dict[int, Mandatory]) -> list[int]:
    """The VMs moved in `s` by priority; within a priority the moves that touch the most
    extreme hosts go first, so a plan cut short (budget, next cycle) has already done the most
    useful part."""
    ext = extremeness(p, State(p))
    return sorted(
        (v for v, _, _ in s.moves()),
        key=lambda v: (
            priority_of(v, mandatory),
            -max(ext[p.origin[v]], ext[s.where[v]]),
            min(p.groups[p.aff_of[v]].vms) if v in p.aff_of else v,  # affinity mates adjacent
            v,
        ),
    )


def descent_order(
    p: Problem,
    order: list[int],
    dest: dict[int, int],
    mandatory: dict[int, Mandatory],
    opening: Sequence[int] = (),
) -> list[int]:
    """Order the balance and capacity-relief moves as a steepest descent on the spread:
    replaying from the current placement (after drains and rule fixes), always serve the host
    furthest from the mean (weighted CPU or memory, either side) with the one of its planned
    moves that pulls it in the most (the biggest effective VM first), among moves whose target
    has room right now.
    So every prefix of the plan has already cut the gap as far as it can: a plan cut short
    (budget, next cycle, operator) keeps its most useful part.
    The opening descent's moves (greedy.opening) come right after drains and rule fixes, in
    the order they were made."""
    lead = set(opening)

    def first(v: int) -> bool:  # drains and rule fixes keep their place at the head
        return v in mandatory and mandatory[v].kind is not ReasonKind.HOTSPOT

    head = [v for v in order if first(v) and v not in lead]
    head += [v for v in opening if v not in head]
    order = [v for v in order if v not in lead]
    optional = [v for v in order if not first(v) and v not in p.aff_of]
    if len(optional) < 2:
        return head + [v for v in order if not first(v)]
    hs = obj.balancing(p)
    hset = set(hs)
    if len(hs) < 2:
        return head + [v for v in order if not first(v)]
    cur = State(p)
    for v in head:
        cur.move(v, dest[v])
    wc, wm = obj.weights(p)
    wc, wm = wc / max(wc, wm), wm / max(wc, wm)
    final = cur.copy()
    for v in optional:
        final.move(v, dest[v])
    mc = sum(final.cpu[h] for h in hs) / sum(p.raw_cpu[h] for h in hs)
    mm = sum(final.mem[h] for h in hs) / sum(p.raw_mem[h] for h in hs)

    def dev(h: int, dc: int = 0, dm: int = 0) -> tuple[float, float]:
        return (
            wc * ((cur.cpu[h] + dc) / p.raw_cpu[h] - mc),
            wm * ((cur.mem[h] + dm) / p.raw_mem[h] - mm),
        )

    def key(h: int, dc: int = 0, dm: int = 0) -> float:
        c, m = dev(h, dc, dm)
        return max(abs(c), abs(m))

    out_of: dict[int, list[int]] = {}
    into: dict[int, list[int]] = {}
    for v in optional:
        out_of.setdefault(p.origin[v], []).append(v)
        into.setdefault(dest[v], []).append(v)
    ver = dict.fromkeys(hs, 0)
    heap = [(-key(h), h, 0) for h in hs]
    heapq.heapify(heap)
    placed: set[int] = set()
    out: list[int] = []
    while heap:
        k, h, ver_h = heapq.heappop(heap)
        if ver_h != ver[h]:
            continue
        c, m = dev(h)
        hot = (c if abs(c) >= abs(m) else m) > 0
        best: tuple[float, int, int] | None = None  # (key after, -size, vm)
        for v in out_of.get(h, []) if hot else into.get(h, []):
            if v in placed or not cur.fits(v, dest[v]):
                continue
            sign = -1 if hot else 1
            after = key(h, sign * p.cpu[v], sign * p.mem[v])
            cand = (after, -(p.cpu[v] + p.mem[v]), v)
            if best is None or cand < best:
                best = cand
        if best is None or best[0] >= -k:
            continue  # nothing here pulls the host in now
        v = best[2]
        a, b = cur.where[v], dest[v]
        cur.move(v, b)
        placed.add(v)
        out.append(v)
        for x in (a, b):
            if x in hset:
                ver[x] += 1
                heapq.heappush(heap, (-key(x), x, ver[x]))
    rest = [v for v in order if not first(v) and v not in placed]
    mates = [v for v in rest if v in p.aff_of]  # affinity units stay together, at the end
    rest = least_damage([v for v in rest if v not in p.aff_of], p, cur, dest, hs, wc, wm)
    return head + out + rest + mates


LEAST_DAMAGE_MAX = 400
"""Most moves least_damage orders (it is quadratic: ~0.3 s at this size)."""


def least_damage(
    rest: list[int],
    p: Problem,
    cur: State,
    dest: dict[int, int],
    hs: list[int],
    wc: float,
    wm: float,
) -> list[int]:
    """Order the moves the descent left (none of them pulls a host in on its own: swap halves,
    chains where a host sends a big VM and takes another) so the gap stays low between them:
    always the move after which the worse weighted gap (then the sum of both) is smallest,
    among those whose target has room now. A host that sends a big VM gets its replacement
    next, instead of standing half empty until the end of the plan. Quadratic in len(rest),
    which stays small (175 of 5,523 moves at 2,000 hosts); above LEAST_DAMAGE_MAX moves the order
    is kept (the sequencer still makes every step safe)."""
    if len(rest) < 2 or len(rest) > LEAST_DAMAGE_MAX:
        return rest
    hset = set(hs)
    res = ((cur.cpu, p.raw_cpu, wc, p.cpu), (cur.mem, p.raw_mem, wm, p.mem))
    val = [{h: w * load[h] / raw[h] for h in hs} for load, raw, w, _ in res]
    srt = [sorted((x, h) for h, x in val[i].items()) for i in range(2)]

    def after(v: int) -> tuple[float, float]:
        a, b = cur.where[v], dest[v]
        gs = []
        for i, (_load, raw, w, size) in enumerate(res):
            d = w * size[v]
            new = [val[i][h] + (d if h == b else -d) / raw[h] for h in (a, b) if h in hset]
            hi = next((x for x, h in reversed(srt[i]) if h != a and h != b), None)
            lo = next((x for x, h in srt[i] if h != a and h != b), None)
            both = new + [x for x in (hi, lo) if x is not None]
            gs.append(max(both) - min(both) if both else 0.0)
        return max(gs), gs[0] + gs[1]

    left = list(rest)
    out: list[int] = []
    while left:
        fits = [v for v in left if cur.fits(v, dest[v])]
        if not fits:
            return out + left  # the sequencer finds the order that makes room
        v = min(fits, key=lambda v: (*after(v), v))
        a, b = cur.where[v], dest[v]
        cur.move(v, b)
        for i, (load, raw, w, _) in enumerate(res):
            for h in (a, b):
                if h in hset:
                    srt[i].pop(bisect.bisect_left(srt[i], (val[i][h], h)))
                    val[i][h] = w * load[h] / raw[h]
                    bisect.insort(srt[i], (val[i][h], h))
        left.remove(v)
        out.append(v)
    return out


def extremeness(p: Problem, s: State) -> list[float]:
    """Per host: how far its CPU or memory load is from the cluster mean (either side)."""
    hs = obj.balancing(p) or list(range(p.n_hosts))
    mc = sum(s.cpu[h] for h in hs) / max(1, sum(p.raw_cpu[h] for h in hs))
    mm = sum(s.mem[h] for h in hs) / max(1, sum(p.raw_mem[h] for h in hs))
    return [
        max(abs(s.cpu[h] / p.raw_cpu[h] - mc), abs(s.mem[h] / p.raw_mem[h] - mm))
        for h in range(p.n_hosts)
    ]
