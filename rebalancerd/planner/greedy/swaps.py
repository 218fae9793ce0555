"""Two-move exchanges and chains for the minimax polish, when no single move pulls an extreme
host in."""

from __future__ import annotations

from typing import Any

import numpy as np

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.greedy.view import EPS, HostLoadView, smallest

SWAP_KEEP = 3
"""Best swap candidates kept per VM of the attacked host (checked in order for rules)."""
SWAP_HOSTS = 64
"""Partner hosts searched first per swap (then, if none fits, every host)."""


class SwapSearch:
    """Two-move exchanges for the minimax polish: when no single move pulls an extreme host in
    (CPU and memory disagree: a host high in memory but low in CPU can give nothing away
    without leaving the CPU range), swap one of its VMs with a VM on another host so that the
    score does not get worse and the attacked extreme improves. Vectorised over the partner
    VMs: first those on the hosts furthest on the other side of the attacked resource and the
    most complementary hosts, then, if none fits, every VM of the cluster."""

    def __init__(self, ctx: GreedyContext, env: HostLoadView) -> None:
        p, s = ctx.p, ctx.s
        self.env = env
        pos = env.pos
        self.size = (np.array(p.cpu, dtype=np.int64), np.array(p.mem, dtype=np.int64))
        self.pos = np.array([pos.get(s.where[v], -1) for v in range(p.n_vms)], dtype=np.int64)
        self.ok = np.array(
            [ctx.may_move(v) and v not in p.aff_of for v in range(p.n_vms)], dtype=bool
        )
        # A VM moved for a must-do reason (drain, rule, capacity) never goes back home.
        self.home = np.array(
            [pos.get(p.origin[v], -1) if v in ctx.mandatory else -2 for v in range(p.n_vms)],
            dtype=np.int64,
        )
        mean_mem = obj.mean_host_mem(p)
        self.cost = np.array([obj.move_cost(p, v, mean_mem) for v in range(p.n_vms)]) * 0.01

    def best(self, ctx: GreedyContext, i: int, r: int, side: int) -> list[tuple[int, int]]:
        """[(u, b), (w, a)]: u leaves the attacked host a (position i) for b, w comes back."""
        s = ctx.s
        env = self.env
        a = env.hs[i]
        us = [u for u in sorted(s.on[a]) if self.ok[u]]
        if not us or not ctx.can_spend(us[:1]):
            return []
        load = env.load
        o = 1 - r
        sel: set[int] = set()
        keys = [load[r] * side]
        if env.weight[o] > 0:
            keys.append((load[r] - load[o]) * side)
        for key in keys:
            order = smallest(key, SWAP_HOSTS + 1)
            sel.update(int(j) for j in order[: SWAP_HOSTS + 1])
        sel.discard(i)
        ws = np.array(sorted(v for j in sel for v in s.on[env.hs[j]] if self.ok[v]), dtype=np.int64)
        found = self._search(ctx, i, r, side, us, ws)
        if not found:
            found = self._chain(ctx, i, r, side, us, ws)
        if not found:
            wall = np.nonzero(self.ok & (self.pos >= 0) & (self.pos != i))[0]
            found = self._search(ctx, i, r, side, us, wall)
            if not found:
                found = self._chain(ctx, i, r, side, us, wall)
        return found

    def _chain(
        self, ctx: GreedyContext, i: int, r: int, side: int, us: list[int], ws: Any
    ) -> list[tuple[int, int]]:
        """u leaves a for the host b that takes it best, and w comes to a from a third host
        c: the attacked host may dip past the other resource's range after u leaves, as long
        as w brings it back."""
        p, s = ctx.p, ctx.s
        env = self.env
        a = env.hs[i]
        if ws.size == 0:
            return []
        mean = [float(env.load[q].mean()) for q in (0, 1)]
        hi_a = [env.excl(q, (i,), True) for q in (0, 1)]
        found: list[tuple[float, float, float, int, int, int]] = []
        cur = float(env.load[r][i])
        for u in us:
            # b: stays inside the current range on both resources, as central as possible.
            nb = [(env.used[q] + self.size[q][u]) / env.raw[q] for q in (0, 1)]
            fit = (env.used[0] + self.size[0][u] <= env.cap[0]) & (
                env.used[1] + self.size[1][u] <= env.cap[1]
            )
            fit &= (nb[0] <= hi_a[0]) & (nb[1] <= hi_a[1])
            fit[i] = False
            if self.home[u] >= 0:
                fit[self.home[u]] = False
            cand_b = np.nonzero(fit)[0]
            if cand_b.size == 0:
                continue
            key = np.maximum(
                env.weight[0] * (nb[0][cand_b] - mean[0]), env.weight[1] * (nb[1][cand_b] - mean[1])
            )
            bi = -1
            for j in cand_b[np.argsort(key, kind="stable")][:4]:
                if s.can_move(u, env.hs[int(j)]):
                    bi = int(j)
                    break
            if bi < 0:
                continue
            sel = ws[(self.pos[ws] != bi) & (self.home[ws] != i)]
            if sel.size == 0:
                continue
            cpos = self.pos[sel]
            b_new = [float(nb[q][bi]) for q in (0, 1)]
            hq: list[Any] = []
            lq: list[Any] = []
            a_l: list[Any] = []
            c_l: list[Any] = []
            ok = np.ones(sel.size, dtype=bool)
            for q in (0, 1):
                t = [int(j) for j in env.top[q] if int(j) != i][:2]
                lo = [int(j) for j in env.bot[q] if int(j) != i][:2]
                ex_hi = np.where(cpos == t[0], env.load[q][t[1]], env.load[q][t[0]])
                ex_lo = np.where(cpos == lo[0], env.load[q][lo[1]], env.load[q][lo[0]])
                an = env.used[q][i] - self.size[q][u] + self.size[q][sel]
                cn = env.used[q][cpos] - self.size[q][sel]
                ok &= an <= env.cap[q][i]
                al = an / env.raw[q][i]
                cl = cn / env.raw[q][cpos]
                a_l.append(al)
                c_l.append(cl)
                hq.append(np.maximum(np.maximum(np.maximum(ex_hi, al), cl), b_new[q]))
                lq.append(np.minimum(np.minimum(np.minimum(ex_lo, al), cl), b_new[q]))
            prim, spr = env.score(hq, lq)
            if side == 1:
                ext = np.maximum(np.maximum(a_l[r], c_l[r]), b_new[r])
                better = ext < cur - EPS
            else:
                ext = -np.minimum(np.minimum(a_l[r], c_l[r]), b_new[r])
                better = -ext > cur + EPS
            ok &= env.acceptable(prim, spr, better, r)
            idx = np.nonzero(ok)[0]
            if idx.size == 0:
                continue
            cost = spr[idx] + self.cost[sel[idx]] + self.cost[u]
            order = np.argsort(prim[idx] * 1e6 + cost * 1000.0 + ext[idx], kind="stable")
            for k in order[:SWAP_KEEP]:
                j = idx[k]
                found.append(
                    (float(prim[j]), float(cost[k]), float(ext[j]), u, env.hs[bi], int(sel[j]))
                )
        found.sort()
        for *_, u, b, w in found:
            if not ctx.can_spend([u, w]) or not p.may_host(w, a):
                continue
            if not s.can_move(u, b):
                continue
            s.move(u, b)
            good = s.can_move(w, a)
            s.move(u, a)
            if good:
                return [(u, b), (w, a)]
        return []

    def _search(
        self, ctx: GreedyContext, i: int, r: int, side: int, us: list[int], ws: Any
    ) -> list[tuple[int, int]]:
        p, s = ctx.p, ctx.s
        env = self.env
        a = env.hs[i]
        if ws.size == 0:
            return []
        bpos = self.pos[ws]
        wsize = (self.size[0][ws], self.size[1][ws])
        excl_hi: list[Any] = []
        excl_lo: list[Any] = []
        for q in (0, 1):
            t = [int(j) for j in env.top[q] if int(j) != i][:2]
            lo = [int(j) for j in env.bot[q] if int(j) != i][:2]
            excl_hi.append(np.where(bpos == t[0], env.load[q][t[1]], env.load[q][t[0]]))
            excl_lo.append(np.where(bpos == lo[0], env.load[q][lo[1]], env.load[q][lo[0]]))
        b_used = (env.used[0][bpos], env.used[1][bpos])
        b_raw = (env.raw[0][bpos], env.raw[1][bpos])
        b_cap = (env.cap[0][bpos], env.cap[1][bpos])
        cur = float(env.load[r][i])
        ok0 = self.home[ws] != i
        found: list[tuple[float, float, float, int, int]] = []
        for u in us:
            d = (wsize[0] - p.cpu[u], wsize[1] - p.mem[u])  # a gains w - u, b loses it
            ok = ok0 & (bpos != self.home[u])
            a_l: list[Any] = []
            b_l: list[Any] = []
            hq: list[Any] = []
            lq: list[Any] = []
            for q in (0, 1):
                an = env.used[q][i] + d[q]
                bn = b_used[q] - d[q]
                ok &= (an <= env.cap[q][i]) & (bn <= b_cap[q])
                al = an / env.raw[q][i]
                bl = bn / b_raw[q]
                a_l.append(al)
                b_l.append(bl)
                hq.append(np.maximum(np.maximum(excl_hi[q], al), bl))
                lq.append(np.minimum(np.minimum(excl_lo[q], al), bl))
            prim, spr = env.score(hq, lq)
            if side == 1:
                ext = np.maximum(a_l[r], b_l[r])
                better = ext < cur - EPS
            else:
                ext = -np.minimum(a_l[r], b_l[r])
                better = -ext > cur + EPS
            ok &= env.acceptable(prim, spr, better, r)
            idx = np.nonzero(ok)[0]
            if idx.size == 0:
                continue
            cost = spr[idx] + self.cost[ws[idx]] + self.cost[u]
            order = np.argsort(prim[idx] * 1e6 + cost * 1000.0 + ext[idx], kind="stable")
            for k in order[:SWAP_KEEP]:
                j = idx[k]
                found.append((float(prim[j]), float(cost[k]), float(ext[j]), u, int(ws[j])))
        found.sort()
        for *_, u, w in found:
            b = s.where[w]
            if not ctx.can_spend([u, w]):
                continue
            if not (p.may_host(u, b) and p.may_host(w, a)):
                continue
            # One order of the two moves must be feasible on its own (no temporary hop).
            for first, second in (((u, b), (w, a)), ((w, a), (u, b))):
                if not s.can_move(*first):
                    continue
                src = s.where[first[0]]
                s.move(*first)
                good = s.can_move(*second)
                s.move(first[0], src)
                if good:
                    return [first, second]
        return []
