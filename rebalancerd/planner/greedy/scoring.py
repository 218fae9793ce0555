"""Units (VMs that move together), whether they fit a host, and the best host for one (spread or
pack)."""

from __future__ import annotations

from rebalancerd.domain.rules import configured_fits
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State


def unit_of(ctx: GreedyContext, v: int) -> list[int] | None:
    """VMs that move with v (its hard affinity group on the same host); None if one is fixed."""
    p, s = ctx.p, ctx.s
    g = p.aff_of.get(v)
    if g is None:
        return [v] if p.movable[v] else None
    h = s.where[v]
    unit = [m for m in p.groups[g].vms if s.where[m] == h]
    if not all(p.movable[m] for m in unit):
        return None
    return unit


def unit_fits(ctx: GreedyContext, unit: list[int], h: int) -> bool:
    p, s = ctx.p, ctx.s
    if any(s.where[m] == h for m in unit):
        return False
    c = sum(p.cpu[m] for m in unit)
    mm = sum(p.mem[m] for m in unit)
    if s.cpu[h] + c > p.cap_cpu[h] or s.mem[h] + mm > p.cap_mem[h]:
        return False
    if not configured_fits(s.cfg[h], sum(p.cfg[m] for m in unit), p.cap_cfg[h]):
        return False
    return all(p.may_host(m, h) and s.anti_ok(m, h) for m in unit)


def weighted_load(p: Problem, s: State, h: int, dc: int = 0, dm: int = 0) -> float:
    wc, wm = obj.weights(p)
    return (wc * (s.cpu[h] + dc) / p.raw_cpu[h] + wm * (s.mem[h] + dm) / p.raw_mem[h]) / (wc + wm)


def peak_load(p: Problem, s: State, h: int, dc: int = 0, dm: int = 0) -> float:
    return max((s.cpu[h] + dc) / p.raw_cpu[h], (s.mem[h] + dm) / p.raw_mem[h])


def best_target(
    ctx: GreedyContext, unit: list[int], *, pack: bool, exclude: frozenset[int] = frozenset()
) -> int | None:
    """Coldest host that takes the unit (spread it), or with pack=True the fullest powered-on
    host that stays under the high watermark (consolidate), waking an empty host if needed."""
    p, s = ctx.p, ctx.s
    c = sum(p.cpu[m] for m in unit)
    mm = sum(p.mem[m] for m in unit)
    best: int | None = None
    best_key = 0.0
    fallback: int | None = None
    fb_key = 0.0
    for h in range(p.n_hosts):
        if h in exclude or not unit_fits(ctx, unit, h):
            continue
        if pack:
            after = peak_load(p, s, h, c, mm)
            if s.on[h]:
                if after <= p.high and (best is None or after > best_key):
                    best, best_key = h, after
            else:
                # An empty host: prefer the one drawing least at this load.
                watts = obj.curve(p, h).at((s.cpu[h] + c) / p.raw_cpu[h])
                if fallback is None or watts < fb_key:
                    fallback, fb_key = h, watts
        else:
            after = weighted_load(p, s, h, c, mm)
            if best is None or after < best_key:
                best, best_key = h, after
    if best is None and pack:
        return fallback
    return best
