"""Minimax polish: attack the extreme hosts with single moves (or swaps, planner/greedy/swaps.py)
that lower the worst gap, then the weighted spread."""

from __future__ import annotations

from typing import Any

import numpy as np

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.greedy.swaps import SwapSearch
from rebalancerd.planner.greedy.view import EPS, TOL, HostLoadView, smallest

# -- phase 4a': minimax polish ----------------------------------------------------------------
POLISH_SHARE = 1.0
"""Polish moves allowed, as a share of the moves made so far (plus POLISH_MIN)."""
POLISH_MIN = 8
POLISH_STALL_MIN = 40
"""Stop after this many polish actions (or half the host count) without a better score."""
POLISH_STALL_SHARE = 0.25
SOURCES_PER_PULL = 24
POLISH_VM_MOVES = 6
"""A VM moves at most this many times in the polish (it stays one migration in the plan)."""
SWAPS = True


def polish(ctx: GreedyContext) -> None:
    """Attack the extremes directly: take the host furthest out on either side of the worst
    resource and make the single move, or failing that the swap of two VMs, that lowers the
    score (worst resource gap, then weighted spread) the most, or that pulls the extreme host
    in without a worse worst gap. The sum-of-squares pass leaves such hosts when CPU and memory
    disagree; this pass trades along the gaps themselves. Each VM moves at most POLISH_VM_MOVES
    times here (no endless cycles); the actions since the best score are undone at the end."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if len(hs) < 3:
        return
    env = HostLoadView(ctx, hs)
    pos = env.pos
    weight = env.weight
    raw, cap, used = env.raw, env.cap, env.used
    actions_left = int(POLISH_SHARE * s.n_moves_cached) + POLISH_MIN
    stall_limit = max(POLISH_STALL_MIN, int(POLISH_STALL_SHARE * len(hs)))
    log: list[tuple[int, int]] = []  # (vm, host before) per applied move, to undo a stall
    best_score = (float("inf"), float("inf"))
    best_at = 0
    best_primary_at = 0
    moved: dict[int, int] = {}  # times moved by this pass (bounded: no endless cycles)
    mean_mem = obj.mean_host_mem(p)
    done: set[tuple[int, int, int]] = set()
    hsarr = np.array(hs, dtype=np.int64)
    swaps = SwapSearch(ctx, env) if SWAPS else None

    while actions_left > 0 and s.n_moves_cached < p.max_moves:
        if ctx.out_of_time("minimax polish"):
            break
        env.refresh()
        load = env.load
        sc = (env.primary, env.spread)
        if sc[0] < best_score[0] - TOL:
            best_primary_at = len(log)
        if sc[0] < best_score[0] - TOL or (
            sc[0] <= best_score[0] + TOL and sc[1] < best_score[1] - TOL
        ):
            best_score, best_at = sc, len(log)
        if len(log) - best_primary_at > stall_limit:
            break  # sideways moves that no longer pay off
        cands: list[tuple[float, int, int, int]] = []
        for r in (0, 1):
            if weight[r] <= 0:
                continue
            for side, i in ((1, int(env.top[r][0])), (-1, int(env.bot[r][0]))):
                if (hs[i], r, side) not in done:
                    cands.append((weight[r] * (env.hi[r] - env.lo[r]), r, side, i))
        if not cands:
            break
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        _, r, side, i = cands[0]
        h = hs[i]
        cur = float(load[r][i])
        best: tuple[float, float, float, int, int] | None = None  # (prim, spr+cost, ext, v, b)
        if side == -1:
            order = smallest(-load[r], SOURCES_PER_PULL)
            sources = [int(j) for j in order[:SOURCES_PER_PULL] if int(j) != i]
            best = best_pull(ctx, env, moved, sources, i, r, cur, mean_mem)
        else:
            si = i
            a = hs[si]
            for v in sorted(s.on[a]):
                if not ctx.may_move(v) or v in p.aff_of or moved.get(v, 0) >= POLISH_VM_MOVES:
                    continue
                home = -1  # a VM moved for a must-do reason may move on, never back home
                if v in ctx.mandatory:
                    home = pos.get(p.origin[v], -1)
                if not ctx.can_spend([v]):
                    continue
                sz = (p.cpu[v], p.mem[v])
                a_after = [(used[q][si] - sz[q]) / raw[q][si] for q in (0, 1)]
                cost = obj.move_cost(p, v, mean_mem) * 0.01
                nb = [(used[q] + sz[q]) / raw[q] for q in (0, 1)]
                hq = [np.maximum(max(env.excl(q, (si,), True), a_after[q]), nb[q]) for q in (0, 1)]
                lq = [np.minimum(min(env.excl(q, (si,), False), a_after[q]), nb[q]) for q in (0, 1)]
                prim, spr = env.score(hq, lq)
                ext = np.maximum(nb[r], a_after[r])
                ok = (
                    (used[0] + sz[0] <= cap[0])
                    & (used[1] + sz[1] <= cap[1])
                    & env.acceptable(prim, spr, ext < cur - EPS, r)
                )
                ok[si] = False
                if home >= 0:
                    ok[home] = False
                idx = np.nonzero(ok)[0]
                if idx.size == 0:
                    continue
                keyv = prim[idx] * 1e6 + spr[idx] * 1000.0 + ext[idx]
                for j in idx[np.argsort(keyv, kind="stable")][:4]:
                    b = int(hsarr[j])
                    if s.can_move(v, b):
                        cand = (float(prim[j]), float(spr[j]) + cost, float(ext[j]), v, b)
                        if best is None or cand[:3] < best[:3]:
                            best = cand
                        break
        pairs: list[tuple[int, int]] = []
        if best is not None:
            pairs = [(best[3], best[4])]
        elif swaps is not None:
            pairs = swaps.best(ctx, i, r, side)
        if not pairs:
            done.add((h, r, side))
            continue
        touched_hosts: set[int] = set()
        actions_left -= 1
        for v, b in pairs:
            a = s.where[v]
            log.append((v, a))
            ctx.apply([v], b)
            moved[v] = moved.get(v, 0) + 1
            env.move(a, b, p.cpu[v], p.mem[v])
            if swaps is not None:
                swaps.ok[v] = moved[v] < POLISH_VM_MOVES
                swaps.pos[v] = pos[b]
            touched_hosts.update((a, b))
        done = {d for d in done if d[0] not in touched_hosts}
    env.refresh()
    better = env.primary < best_score[0] - TOL or (
        env.primary <= best_score[0] + TOL and env.spread < best_score[1] - TOL
    )
    if not better:
        # Undo the sideways moves made since the best score (they bought nothing).
        for v, a in reversed(log[best_at:]):
            ctx.apply([v], a)


def best_pull(
    ctx: GreedyContext,
    env: HostLoadView,
    moved: dict[int, int],
    sources: list[int],
    i: int,
    r: int,
    cur: float,
    mean_mem: float,
) -> tuple[float, float, float, int, int] | None:
    """The polish's best single move into the attacked low host (position i on resource r)
    from one of the `sources` (positions of the hottest hosts), vectorised over their VMs:
    (primary after, spread after + cost, -new extreme, vm, host), lowest first, ties to the
    first VM in source order then VM index; None if no acceptable move fits."""
    p, s = ctx.p, ctx.s
    hs, pos = env.hs, env.pos
    h = hs[i]
    vs: list[int] = []
    src: list[int] = []
    for k, si in enumerate(sources):
        for v in sorted(s.on[hs[si]]):
            if not ctx.may_move(v) or v in p.aff_of or moved.get(v, 0) >= POLISH_VM_MOVES:
                continue
            # a VM moved for a must-do reason may move on, never back home
            if v in ctx.mandatory and pos.get(p.origin[v], -1) == i:
                continue
            vs.append(v)
            src.append(k)
    if not vs:
        return None
    va = np.array(vs, dtype=np.int64)
    ka = np.array(src, dtype=np.int64)
    sia = np.array(sources, dtype=np.int64)[ka]
    sz = (np.array([p.cpu[v] for v in vs], dtype=np.int64), np.array([p.mem[v] for v in vs]))
    hq: list[Any] = []
    lq: list[Any] = []
    a_after: list[Any] = []
    nb_s: list[Any] = []
    for q in (0, 1):
        ex_hi = np.array([env.excl(q, (si, i), True) for si in sources])[ka]
        ex_lo = np.array([env.excl(q, (si, i), False) for si in sources])[ka]
        aa = (env.used[q][sia] - sz[q]) / env.raw[q][sia]
        nb = (env.used[q][i] + sz[q]) / env.raw[q][i]
        a_after.append(aa)
        nb_s.append(nb)
        hq.append(np.maximum(np.maximum(ex_hi, aa), nb))
        lq.append(np.minimum(np.minimum(ex_lo, aa), nb))
    prim, spr = env.score(hq, lq)
    ext = -np.minimum(nb_s[r], a_after[r])
    ok = env.acceptable(prim, spr, -ext > cur + EPS, r)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return None
    cost = np.array([obj.move_cost(p, v, mean_mem) * 0.01 for v in va[idx].tolist()])
    sprc = spr[idx] + cost
    order = np.lexsort((idx, ext[idx], sprc, prim[idx]))
    for k in order.tolist():
        v = vs[int(idx[k])]
        if ctx.can_spend([v]) and s.can_move(v, h):
            return (float(prim[idx[k]]), float(sprc[k]), float(ext[idx[k]]), v, h)
    return None
