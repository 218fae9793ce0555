"""Balance pass: capacity relief first, then hottest -> coldest best-fit moves that reduce the
weighted sum of squared load deviations by more than the move costs (heaps of hosts)."""

from __future__ import annotations

import heapq

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory

COLD_CANDIDATES = 6


BALANCE_COST_FACTOR = 0.5
"""A balance move must cut the sum of squared deviations by this many times its cost."""


# -- phase 4a: balance -------------------------------------------------------------------------
def balance(ctx: GreedyContext) -> None:
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if len(hs) < 2:
        return
    wc, wm = obj.weights(p)
    wsum = wc + wm
    wc, wm = wc / wsum, wm / wsum
    wmax = max(wc, wm)
    mean_c = sum(s.cpu[h] for h in hs) / sum(p.raw_cpu[h] for h in hs)
    mean_m = sum(s.mem[h] for h in hs) / sum(p.raw_mem[h] for h in hs)
    mean_mem = obj.mean_host_mem(p)
    ver = [0] * p.n_hosts

    def dc(h: int) -> float:
        return s.cpu[h] / p.raw_cpu[h] - mean_c

    def dm(h: int) -> float:
        return s.mem[h] / p.raw_mem[h] - mean_m

    def hotkey(h: int) -> float:
        k = max(wc * dc(h), wm * dm(h)) / wmax
        return k + 10.0 if s.over_capacity(h) else k

    hot: list[tuple[float, int, int]] = [(-hotkey(h), h, 0) for h in hs]
    cold_c: list[tuple[float, int, int]] = [(dc(h), h, 0) for h in hs]
    cold_m: list[tuple[float, int, int]] = [(dm(h), h, 0) for h in hs]
    cold_w: list[tuple[float, int, int]] = [(wc * dc(h) + wm * dm(h), h, 0) for h in hs]
    for heap in (hot, cold_c, cold_m, cold_w):
        heapq.heapify(heap)

    def push(h: int) -> None:
        ver[h] += 1
        v = ver[h]
        heapq.heappush(hot, (-hotkey(h), h, v))
        heapq.heappush(cold_c, (dc(h), h, v))
        heapq.heappush(cold_m, (dm(h), h, v))
        heapq.heappush(cold_w, (wc * dc(h) + wm * dm(h), h, v))

    def coldest(heap: list[tuple[float, int, int]], k: int, skip: int) -> list[int]:
        out: list[tuple[float, int, int]] = []
        res: list[int] = []
        while heap and len(res) < k:
            e = heapq.heappop(heap)
            if e[2] != ver[e[1]]:
                continue
            out.append(e)
            if e[1] != skip:
                res.append(e[1])
        for e in out:
            heapq.heappush(heap, e)
        return res

    exhausted: set[int] = set()
    while hot and s.n_moves_cached < p.max_moves:
        key, a, v_a = heapq.heappop(hot)
        if v_a != ver[a] or a in exhausted:
            continue
        # Capacity relief (hosts over capacity come first) is a must-do: past the deadline.
        if not s.over_capacity(a) and ctx.out_of_time("balance pass"):
            break
        if -key <= 0:
            break
        heap = cold_c if wc * dc(a) >= wm * dm(a) else cold_m
        cands = coldest(heap, COLD_CANDIDATES, a)
        for b in coldest(cold_w, COLD_CANDIDATES // 2, a):
            if b not in cands:
                cands.append(b)
        best: tuple[float, int, int] | None = None
        ca, ma = dc(a), dm(a)
        ra_c, ra_m = p.raw_cpu[a], p.raw_mem[a]
        over = s.over_capacity(a)
        for v in s.on[a]:
            if v in ctx.touched or not ctx.may_move(v) or v in p.aff_of:
                continue
            if not ctx.can_spend([v]):
                continue
            sc_a, sm_a = p.cpu[v] / ra_c, p.mem[v] / ra_m
            threshold = BALANCE_COST_FACTOR * obj.move_cost(p, v, mean_mem)
            for b in cands:
                if not s.can_move(v, b):
                    continue
                cb, mb = dc(b), dm(b)
                sc_b, sm_b = p.cpu[v] / p.raw_cpu[b], p.mem[v] / p.raw_mem[b]
                gain = wc * (ca * ca + cb * cb - (ca - sc_a) ** 2 - (cb + sc_b) ** 2) + wm * (
                    ma * ma + mb * mb - (ma - sm_a) ** 2 - (mb + sm_b) ** 2
                )
                if not over:
                    gain -= threshold
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, v, b)
        if best is None:
            exhausted.add(a)
            continue
        _, v, b = best
        why = None
        if over:
            why = Mandatory(
                ReasonKind.HOTSPOT,
                f"host {p.hosts[a].name} over capacity with headroom "
                f"(cpu {s.cpu[a] / ra_c:.2f}, mem {s.mem[a] / ra_m:.2f}, "
                f"headroom {p.headroom:.2f})",
            )
        ctx.apply([v], b, why)
        push(a)
        push(b)
