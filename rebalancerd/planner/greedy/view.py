"""Per-host loads of the balancing hosts as arrays, and the lexicographic score of a candidate
change (worst weighted gap, then weighted spread): shared by the polish, swaps and band passes."""

from __future__ import annotations

from typing import Any

import numpy as np

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext

EPS = 1e-12
TOL = 1e-9


def smallest(x: Any, k: int, below: float | None = None) -> Any:
    """Indices of the k smallest entries of x (ties by index), only entries < below if given;
    without sorting the whole array."""
    if below is not None:
        idx = np.nonzero(x < below)[0]
    elif x.size > 4 * k:
        idx = np.sort(np.argpartition(x, k - 1)[:k])
        kth = x[idx].max()
        idx = np.nonzero(x <= kth)[0]  # every tie of the k-th value, in index order
    else:
        idx = np.arange(x.size)
    return idx[np.argsort(x[idx], kind="stable")][:k]


class HostLoadView:
    """Per-host loads of the balancing hosts as arrays, and the score of a candidate change.

    The score is lexicographic: first the *worst* weighted resource gap (minimax over CPU and
    memory, so neither resource is left far behind), then the weighted spread (the policy's
    objective). A move is acceptable when it lowers the score, or when it pulls the attacked
    extreme host in without raising the worst gap (sideways moves through ties: when 40 hosts
    share the maximum, the gap falls only after the last one is fixed)."""

    def __init__(self, ctx: GreedyContext, hs: list[int]) -> None:
        p, s = ctx.p, ctx.s
        self.hs = hs
        self.pos = {h: i for i, h in enumerate(hs)}
        wc, wm = obj.weights(p)
        self.weight = (wc, wm)
        self.wsum = wc + wm
        self.wmax = max(wc, wm)
        self.raw = (
            np.array([p.raw_cpu[h] for h in hs], dtype=np.float64),
            np.array([p.raw_mem[h] for h in hs], dtype=np.float64),
        )
        self.cap = (
            np.array([p.cap_cpu[h] for h in hs], dtype=np.int64),
            np.array([p.cap_mem[h] for h in hs], dtype=np.int64),
        )
        self.used = (
            np.array([s.cpu[h] for h in hs], dtype=np.int64),
            np.array([s.mem[h] for h in hs], dtype=np.int64),
        )
        self.refresh()

    def refresh(self) -> None:
        self.load = (self.used[0] / self.raw[0], self.used[1] / self.raw[1])
        self.top = [smallest(-self.load[q], 3) for q in (0, 1)]
        self.bot = [smallest(self.load[q], 3) for q in (0, 1)]
        self.hi = tuple(float(self.load[q][self.top[q][0]]) for q in (0, 1))
        self.lo = tuple(float(self.load[q][self.bot[q][0]]) for q in (0, 1))
        g = [self.weight[q] * (self.hi[q] - self.lo[q]) for q in (0, 1)]
        self.primary = max(g) / self.wmax
        self.spread = (g[0] + g[1]) / self.wsum

    def excl(self, q: int, skip: tuple[int, ...], high: bool) -> float:
        """Highest (lowest) load of resource q over hosts not in skip (skip has <= 2)."""
        for j in self.top[q] if high else self.bot[q]:
            if int(j) not in skip:
                return float(self.load[q][j])
        return float(self.load[q][self.top[q][0] if high else self.bot[q][0]])

    def score(self, hq: list[Any], lq: list[Any]) -> tuple[Any, Any]:
        g0 = self.weight[0] * (hq[0] - lq[0])
        g1 = self.weight[1] * (hq[1] - lq[1])
        return np.maximum(g0, g1) / self.wmax, (g0 + g1) / self.wsum

    def acceptable(self, prim: Any, spr: Any, ext_better: Any, r: int) -> Any:
        """Lower score, or the attacked host pulled in without a worse worst gap (and, when
        r is not the worst resource, without a worse spread)."""
        not_worse = prim <= self.primary + EPS
        lower = (prim < self.primary - TOL) | (not_worse & (spr < self.spread - TOL))
        gr = self.weight[r] * (self.hi[r] - self.lo[r]) / self.wmax
        sideways = not_worse & ext_better
        if gr < self.primary - TOL:
            sideways = sideways & (spr <= self.spread + EPS)
        return lower | sideways

    def move(self, a: int, b: int, cpu: int, mem: int) -> None:
        for q, amount in ((0, cpu), (1, mem)):
            self.used[q][self.pos[a]] -= amount
            self.used[q][self.pos[b]] += amount
