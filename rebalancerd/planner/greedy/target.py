"""Target band, then the fewest moves (balance with `targets.max_gap` / `targets.band`).

The score of a placement is lexicographic: hard rules and capacity hold (every move is checked
with `State.can_move`, which runs `domain/rules`), then the *excursion* — the sum over balancing
hosts and targeted resources of how far the host's normalised load lies outside the band
mean +- half-width — then the number of moves, then the MiB moved (migration cost: memory, disk
and dirty rate). The mean of each resource over the balancing hosts does not change when VMs
move between them, so the band is fixed once drains and rule fixes are placed.

Worst host first: the host furthest outside the band gives (above it) or receives (below it) the
single move that lowers the excursion most (ties: the cheaper move); a host with no such move is
set aside. Each VM moves at most once. It stops when every host is inside the band, or when no
move lowers the excursion. A final pass puts back every optional move whose undoing does not
raise the excursion (so no move is made for nothing), and the optional moves are kept only if
they lower the excursion by at least `targets.hysteresis` x the excursion (relative gain).

Hosts over capacity (CPU or used memory + headroom above physical, or configured memory above
physical x `memory_overcommit`) are repaired first, worst first, within the move budget.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

TARGETS_PER_MOVE = 24
"""Candidate targets (sources) looked at for a host above (below) the band, per resource."""
EPS = 1e-9

Arr = npt.NDArray[np.float64]


def has_targets(p: Problem) -> bool:
    return any(b is not None for b in p.bands)


class Band:
    """Per-resource loads of the balancing hosts as arrays, and the band around the mean."""

    def __init__(self, p: Problem, s: State, hs: list[int]) -> None:
        self.p, self.hs = p, hs
        self.pos = {h: i for i, h in enumerate(hs)}
        net = [0] * p.n_hosts
        for v, h in enumerate(s.where):
            net[h] += p.net[v]
        self.res = [r for r in range(3) if p.bands[r] is not None]
        raw = (p.raw_cpu, p.raw_mem, p.raw_net)
        used = (s.cpu, s.mem, net)
        self.raw = [np.array([raw[r][h] for h in hs], dtype=np.float64) for r in range(3)]
        self.used = [np.array([used[r][h] for h in hs], dtype=np.float64) for r in range(3)]
        self.lo = [0.0] * 3
        self.hi = [0.0] * 3
        for r in range(3):
            b = p.bands[r]
            if b is None or not hs:
                continue
            mean = float(self.used[r].sum() / self.raw[r].sum())
            self.lo[r], self.hi[r] = mean - b, mean + b

    def vm_vec(self, v: int) -> tuple[int, int, int]:
        p = self.p
        return p.cpu[v], p.mem[v], p.net[v]

    def load(self, r: int) -> Arr:
        return self.used[r] / self.raw[r]

    def exc(self, r: int, load: Arr) -> Arr:
        return np.maximum(load - self.hi[r], 0.0) + np.maximum(self.lo[r] - load, 0.0)

    def host_exc(self) -> Arr:
        out = np.zeros(len(self.hs))
        for r in self.res:
            out += self.exc(r, self.load(r))
        return out

    def total(self) -> float:
        return float(self.host_exc().sum()) if self.hs else 0.0

    def move(self, v: int, a: int, b: int) -> None:
        d = self.vm_vec(v)
        for r in range(3):
            if a in self.pos:
                self.used[r][self.pos[a]] -= d[r]
            if b in self.pos:
                self.used[r][self.pos[b]] += d[r]

    def delta(self, vms: list[int], a: int, targets: list[int]) -> Arr:
        """Excursion change of moving each of `vms` (rows) from a to each target (columns)."""
        out = np.zeros((len(vms), len(targets)))
        ia = self.pos.get(a)
        it = np.array([self.pos[t] for t in targets], dtype=np.int64)
        for r in self.res:
            d = np.array([self.vm_vec(v)[r] for v in vms], dtype=np.float64)[:, None]
            if ia is not None:
                la = self.used[r][ia] / self.raw[r][ia]
                la2 = (self.used[r][ia] - d) / self.raw[r][ia]
                out += self.exc(r, la2) - self.exc(r, np.array([la]))
            lt = self.used[r][it] / self.raw[r][it]
            lt2 = (self.used[r][it][None, :] + d) / self.raw[r][it][None, :]
            out += self.exc(r, lt2) - self.exc(r, lt)[None, :]
        return out


def _candidates(band: Band, r: int, n: int, high: bool, skip: int) -> list[int]:
    load = band.load(r)
    k = min(len(load), n + 1)
    key = -load if high else load
    idx = np.argpartition(key, k - 1)[:k] if k < len(load) else np.arange(len(load))
    out = [band.hs[int(i)] for i in idx[np.argsort(key[idx], kind="stable")]]
    return [h for h in out if h != skip][:n]


def _free(ctx: GreedyContext, v: int) -> bool:
    p = ctx.p
    return ctx.may_move(v) and v not in p.aff_of and v not in ctx.touched and ctx.can_spend([v])


def _best(
    ctx: GreedyContext, band: Band, pairs: list[tuple[int, int, list[int]]]
) -> tuple[float, int, int] | None:
    """Best (delta, vm, target) over the given (source, vms, targets) blocks: lowest excursion
    change, then the cheapest migration."""
    p, s = ctx.p, ctx.s
    best: tuple[float, float, int, int] | None = None
    for a, _, targets in pairs:
        vms = [v for v in sorted(s.on[a]) if _free(ctx, v)]
        if not vms or not targets:
            continue
        d = band.delta(vms, a, targets)
        order = np.argsort(d, axis=None, kind="stable")
        for flat in order[: 4 * len(targets) + 16]:
            i, j = divmod(int(flat), len(targets))
            dv = float(d[i, j])
            if dv > -EPS:
                break
            if best is not None and dv > best[0] + EPS:
                break
            v, t = vms[i], targets[j]
            if not s.can_move(v, t):
                continue
            key = (round(dv, 9), p.cost_mib[v], v, t)
            if best is None or key < (round(best[0], 9), best[1], best[2], best[3]):
                best = (dv, p.cost_mib[v], v, t)
    return None if best is None else (best[0], best[2], best[3])


def _step(ctx: GreedyContext, band: Band, h: int) -> bool:
    """One move that lowers the excursion of host h (above or below the band)."""
    i = band.pos[h]
    pairs: list[tuple[int, int, list[int]]] = []
    for r in band.res:
        load = band.used[r][i] / band.raw[r][i]
        if load > band.hi[r] + EPS:
            pairs.append((h, r, _candidates(band, r, TARGETS_PER_MOVE, False, h)))
        elif load < band.lo[r] - EPS:
            for a in _candidates(band, r, TARGETS_PER_MOVE // 3, True, h):
                pairs.append((a, r, [h]))
    found = _best(ctx, band, pairs)
    if found is None:
        return False
    _, v, t = found
    a = ctx.s.where[v]
    ctx.apply([v], t)
    band.move(v, a, t)
    return True


def relieve(ctx: GreedyContext, band: Band, hs: list[int]) -> int:
    """Hosts over capacity (headroom) or over the overcommit ratio, worst first, within the
    budget; returns how many stay over."""
    p, s = ctx.p, ctx.s

    def over(h: int) -> float:
        return max(
            s.cpu[h] / p.cap_cpu[h] if p.cap_cpu[h] else math.inf,
            s.mem[h] / p.cap_mem[h] if p.cap_mem[h] else math.inf,
            s.cfg[h] / p.cap_cfg[h] if p.cap_cfg[h] else math.inf,
        )

    bad = sorted((h for h in hs if s.over_capacity(h)), key=lambda h: (-over(h), h))
    left = 0
    for h in bad:
        while s.over_capacity(h):
            vms = [v for v in sorted(s.on[h], key=lambda v: (-p.cfg[v], v)) if _free(ctx, v)]
            done = False
            for v in vms:
                ts = [t for t in hs if t != h and s.can_move(v, t)]
                if not ts:
                    continue
                d = band.delta([v], h, ts)[0] if band.res else np.zeros(len(ts))
                t = ts[int(np.argmin(d))]
                detail = (
                    f"host {p.hosts[h].name} configured memory {s.cfg[h]} MiB > "
                    f"{p.cap_cfg[h]} MiB (memory_overcommit)"
                    if s.cfg[h] > p.cap_cfg[h]
                    else f"host {p.hosts[h].name} over capacity with headroom"
                )
                ctx.apply([v], t, Mandatory(ReasonKind.HOTSPOT, detail))
                band.move(v, h, t)
                done = True
                break
            if not done:
                break
        if s.over_capacity(h):
            left += 1
    return left


def prune(ctx: GreedyContext, band: Band, mandatory: frozenset[int]) -> int:
    """Put back every optional move whose undoing does not raise the excursion (latest first).
    Returns how many were put back."""
    p, s = ctx.p, ctx.s
    back = 0
    for v in sorted((v for v, o, _ in s.moves() if v not in mandatory), reverse=True):
        o, h = p.origin[v], s.where[v]
        if not s.can_move(v, o):
            continue
        if float(band.delta([v], h, [o])[0, 0]) <= EPS:
            ctx.apply([v], o)
            band.move(v, h, o)
            back += 1
    return back


def target_passes(ctx: GreedyContext) -> None:
    """The band planner (see the module doc); notes what it did."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    band = Band(p, s, hs)
    over_ratio = sum(1 for h in range(p.n_hosts) if s.cfg[h] > p.cap_cfg[h])
    left = relieve(ctx, band, hs)
    if over_ratio:
        ctx.notes.append(
            f"{over_ratio} host(s) above memory_overcommit x physical: repaired worst first "
            f"within the move budget, {left} still over capacity after this plan"
        )
    mandatory = frozenset(v for v, _, _ in s.moves())
    start_exc = band.total()
    stuck: set[int] = set()
    while ctx.moves_left() > 0 and not ctx.out_of_time("target band"):
        exc = band.host_exc()
        order = np.argsort(-exc, kind="stable")
        h = next(
            (band.hs[int(i)] for i in order if exc[i] > EPS and band.hs[int(i)] not in stuck),
            None,
        )
        if h is None:
            break
        if not _step(ctx, band, h):
            stuck.add(h)
    back = prune(ctx, band, mandatory)
    end_exc = band.total()
    optional = [v for v, _, _ in s.moves() if v not in mandatory]
    if optional and start_exc - end_exc < p.hysteresis * start_exc and end_exc > EPS:
        for v in optional:
            if s.can_move(v, p.origin[v]):
                h = s.where[v]
                ctx.apply([v], p.origin[v])
                band.move(v, h, p.origin[v])
        ctx.notes.append(
            f"target band: {len(optional)} optional move(s) dropped, they lowered the excursion "
            f"by less than the hysteresis ({start_exc:.3f} -> {end_exc:.3f})"
        )
    if back:
        ctx.notes.append(f"target band: {back} move(s) put back that did not pay")
    if band.total() > EPS:
        ctx.notes.append(
            f"target band not reached: excursion {band.total():.4f} left "
            f"({len([x for x in band.host_exc() if x > EPS])} host(s) outside)"
        )


def lower_bounds(p: Problem, start: State, final: State) -> tuple[int, int, bool]:
    """(moves, MiB, band met): the fewest moves and MiB any plan needs to bring every balancing
    host inside the band from `start`. The band is the one of `final` (the mean after drains).
    A host above the band in some resource must lose VMs whose sum covers its excess: at least
    as many as its largest movable VMs need; a host below must gain at least as many as the
    cluster's largest movable VMs need to fill its shortfall. Each move leaves one host and
    reaches one, so the bound is max(sum over hosts above, sum over hosts below). MiB: the
    memory excess above the band (or shortfall below it), whichever is larger."""
    hs = obj.balancing(p)
    band = Band(p, final, hs)
    met = band.total() <= EPS
    if not band.res:
        return 0, 0, met
    big = [
        sorted((b.vm_vec(v)[r] for v in range(p.n_vms) if p.movable[v]), reverse=True)
        for b in (band,)
        for r in range(3)
    ]
    raw = (p.raw_cpu, p.raw_mem, p.raw_net)
    used = (start.cpu, start.mem, [0] * p.n_hosts)
    for v, h in enumerate(start.where):
        used[2][h] += p.net[v]
    above = below = 0
    mib_out = mib_in = 0.0

    def count(amount: float, sizes: list[int]) -> int:
        n, got = 0, 0
        for x in sizes:
            if got >= amount - EPS:
                break
            got += x
            n += 1
        return n if got >= amount - EPS else max(n, 1)

    for h in hs:
        need_out = need_in = 0
        for r in band.res:
            load = used[r][h] / raw[r][h]
            if load > band.hi[r] + EPS:
                excess = (load - band.hi[r]) * raw[r][h]
                mine = sorted(
                    (band.vm_vec(v)[r] for v in start.on[h] if p.movable[v]), reverse=True
                )
                need_out = max(need_out, count(excess, mine))
                if r == 1:
                    mib_out += excess
            elif load < band.lo[r] - EPS:
                short = (band.lo[r] - load) * raw[r][h]
                need_in = max(need_in, count(short, big[r]))
                if r == 1:
                    mib_in += short
        above += need_out
        below += need_in
    return max(above, below), int(max(mib_out, mib_in)), met
