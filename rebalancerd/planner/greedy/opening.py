"""Opening descent: a beam search over single moves that lower the worse weighted gap, before
the other balance passes."""

from __future__ import annotations

from typing import Any

import numpy as np

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.greedy.view import TOL

# -- phase 4a0: opening descent -----------------------------------------------------------------
OPENING_SOURCES = 4
"""Hottest hosts (on the worse resource) whose VMs the opening descent considers."""
OPENING_MAX = 512


def _top(x: Any, k: int, skip: int) -> list[int]:
    """Indices of the k largest entries of x other than `skip`, largest first (ties by index)."""
    idx = np.argsort(-x, kind="stable")[: k + 1]
    return [int(i) for i in idx if i != skip][:k]


def _max_without(x: Any, top: list[int], bs: Any) -> Any:
    """Per target b in bs: max of x over hosts other than b and the source (top excludes it)."""
    out = np.full(bs.shape, -np.inf)
    for t in reversed(top):
        out = np.where(bs != t, x[t], out)
    return out


def _children(
    ctx: GreedyContext, hs: list[int], wc: float, wm: float, k_best: int
) -> tuple[
    float, list[tuple[float, float, int, int, int]], tuple[float, float, int, int, int] | None
]:
    """Current worse weighted gap, and the best single moves (primary gap after, secondary
    gap after, -size, vm, target) that lower it strictly: the k_best steepest ones, plus the
    move of the largest VM from the hottest to the coldest host of the worse resource (the
    classic step), when it lowers the gap."""
    p, s = ctx.p, ctx.s
    n = len(hs)
    idx = np.array(hs)
    rc = np.array([p.raw_cpu[h] for h in hs], dtype=float)
    rm = np.array([p.raw_mem[h] for h in hs], dtype=float)
    c = np.array([s.cpu[h] for h in hs], dtype=float)
    m = np.array([s.mem[h] for h in hs], dtype=float)
    capc = np.array([p.cap_cpu[h] for h in hs], dtype=float)
    capm = np.array([p.cap_mem[h] for h in hs], dtype=float)
    lc, lm = c / rc, m / rm
    gc = wc * float(lc.max() - lc.min())
    gm = wm * float(lm.max() - lm.min())
    cur = max(gc, gm)
    worse = lm if gm >= gc else lc
    bs = np.arange(n)
    k = min(n, 3)
    found: list[tuple[float, float, int, int, int]] = []
    classic: tuple[float, float, int, int, int] | None = None
    # the classic step's hosts: hottest (last on ties), coldest (first on ties)
    hottest = int(np.nonzero(worse == worse.max())[0][-1])
    coldest = int(np.argmin(worse))
    sources = _top(worse, OPENING_SOURCES, -1)
    if hottest not in sources:
        sources.append(hottest)
    for a in sources:
        vms = [
            v
            for v in sorted(s.on[int(idx[a])])
            if p.movable[v] and v not in p.aff_of and v not in ctx.touched and ctx.can_spend([v])
        ]
        if not vms:
            continue
        dc = np.array([p.cpu[v] for v in vms], dtype=float)[:, None]
        dm = np.array([p.mem[v] for v in vms], dtype=float)[:, None]
        ok = (c[None, :] + dc <= capc[None, :]) & (m[None, :] + dm <= capm[None, :])
        ok[:, a] = False
        gaps = []
        for x, d, r in ((lc, dc, rc), (lm, dm, rm)):
            mx = _max_without(x, _top(x, k, a), bs)[None, :]
            mn = -_max_without(-x, _top(-x, k, a), bs)[None, :]
            va = x[a] - d / r[a]
            vb = x[None, :] + d / r[None, :]
            gaps.append(np.maximum(np.maximum(mx, vb), va) - np.minimum(np.minimum(mn, vb), va))
        ngc, ngm = wc * gaps[0], wm * gaps[1]
        prim = np.maximum(ngc, ngm)
        sec = ngc + ngm
        prim = np.where(ok & (prim < cur - TOL), prim, np.inf)
        flat_p, flat_s = prim.ravel(), sec.ravel()
        order = np.lexsort((flat_s, flat_p))
        taken = 0
        for f in order:
            if not np.isfinite(flat_p[f]) or taken >= k_best:
                break
            i, b = divmod(int(f), n)
            v, h = vms[i], int(idx[b])
            if not s.can_move(v, h):
                continue
            found.append((float(flat_p[f]), float(flat_s[f]), -(p.mem[v] + p.cpu[v]), v, h))
            taken += 1
        if a == hottest and coldest != a:
            size = dm[:, 0] if worse is lm else dc[:, 0]
            for i in sorted(range(len(vms)), key=lambda i: (-size[i], vms[i])):
                v, h = vms[i], int(idx[coldest])
                if not s.can_move(v, h):
                    continue
                if np.isfinite(prim[i, coldest]):
                    classic = (
                        float(prim[i, coldest]),
                        float(sec[i, coldest]),
                        -(p.mem[v] + p.cpu[v]),
                        v,
                        h,
                    )
                break
    found.sort()
    found = found[:k_best]
    if classic is not None and classic not in found:
        found.append(classic)
    return cur, found, classic


OPENING_BEAM = 6
"""States kept per depth by the opening beam search."""
OPENING_MAX_HOSTS = 256
OPENING_TOLERANCE = 0.5
"""The opening is kept if the final spread with it is at most this x hysteresis worse."""
"""No opening above this many balancing hosts: there many hosts tie at the extremes (a single
move rarely lowers max - min) and the moves it fixes cost the later passes more than they gain
(2,000 hosts: memory gap 0.090 -> 0.102)."""
OPENING_WORK = 60_000
"""Budget of the opening search, in states expanded x balancing hosts (~0.3 s)."""


def opening(ctx: GreedyContext) -> None:
    """Fast descent on the gap itself, before the other balance passes: a beam search over
    sequences of single moves (a movable VM on one of the hottest hosts of the worse weighted
    resource, to any host with room), each step lowering the worse weighted gap (max - min)
    strictly; children are a state's steepest moves and the classic largest-VM
    hottest-to-coldest move, whose path always stays in the beam. The path kept is the one
    with the smallest area under its gap trajectory (fastest descent). Its moves lead the plan,
    in order, and the later passes leave them in place."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if not 2 <= len(hs) <= OPENING_MAX_HOSTS or ctx.moves_left() <= 0:
        return
    wc, wm = obj.weights(p)
    top_w = max(wc, wm)
    if top_w <= 0:
        return
    wc, wm = wc / top_w, wm / top_w
    limit = min(OPENING_MAX, len(hs), ctx.moves_left())
    # node: (moves [(vm, target)], trajectory of the worse gap, on the classic path)
    start, _, _ = _children(ctx, hs, wc, wm, 0)
    beam: list[tuple[list[tuple[int, int]], list[float], bool]] = [([], [start], True)]
    width = OPENING_BEAM
    expanded = 0
    done: list[tuple[list[tuple[int, int]], list[float], bool]] = []
    depth = 0
    while beam and depth < limit and (expanded + len(beam)) * len(hs) <= OPENING_WORK:
        if ctx.out_of_time("opening descent"):
            break
        depth += 1
        expanded += len(beam)
        nxt: dict[frozenset[tuple[int, int]], tuple[Any, ...]] = {}
        for moves, traj, classic_path in beam:
            back = [(v, s.where[v]) for v, _ in moves]
            for v, h in moves:
                ctx.apply([v], h)
            _, kids, classic = _children(ctx, hs, wc, wm, width)
            for v, h in reversed(back):
                ctx.apply([v], h)
            ctx.touched.difference_update(v for v, _ in moves)
            if not kids:
                done.append((moves, traj, classic_path))
                continue
            for kid in kids:
                new = [*moves, (kid[3], kid[4])]
                key = frozenset(new)
                cl = classic_path and kid == classic
                old = nxt.get(key)
                cand = (kid[0], kid[1], kid[2], new, [*traj, kid[0]], cl)
                if old is None or cand[:3] < old[:3] or (cl and not old[5]):
                    nxt[key] = (*cand[:5], cl or (old is not None and old[5]))
        ranked = sorted(nxt.values(), key=lambda t: (t[0], t[1], t[2], t[3]))
        keep = ranked[:width]
        keep += [t for t in ranked[width:] if t[5]][:1]  # the classic path stays
        beam = [(t[3], t[4], bool(t[5])) for t in keep]
    done.extend(beam)
    if not done:
        return
    horizon = max(len(tr) for _, tr, _ in done)
    # No path may need more moves than the classic one to reach the classic one's final gap.
    goal = min((tr[-1] for _, tr, cl in done if cl), default=-1.0)

    def reach(tr: list[float]) -> int:
        return next((i for i, g in enumerate(tr) if g <= goal + TOL), horizon + 1)

    def area(tr: list[float]) -> float:
        return sum(tr) + tr[-1] * (horizon - len(tr))

    best = min(done, key=lambda d: (reach(d[1]), area(d[1]), len(d[0]), d[0]))
    for v, h in best[0]:
        ctx.apply([v], h)
        ctx.opening.append(v)
