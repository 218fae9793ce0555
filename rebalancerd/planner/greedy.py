"""Fast greedy plans: always an answer, in milliseconds to a couple of seconds at 25,000 VMs.

Phases, in priority order (each spends the shared move/MiB budget):
1. drain / evacuate hosts that must be emptied;
2. hard-rule fixes (pins, anti-affinity, affinity);
3. capacity relief (host above capacity with headroom) and, in consolidate mode, hotspot relief;
4. the mode's objective: balance (hottest -> coldest best-fit moves that reduce the weighted sum of
   squared load deviations by more than the move costs) or consolidate (empty the least loaded
   hosts into the fullest ones that stay under the high watermark).

VMs of one hard affinity group that share a host move together (a "unit").
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

COLD_CANDIDATES = 6
CONSOLIDATE_FAIL_LIMIT = 12


@dataclass(slots=True)
class Mandatory:
    kind: ReasonKind
    detail: str
    rule: str | None = None


class GState(State):
    """State with a cached move count (the greedy checks the budget on every move)."""

    __slots__ = ("n_moves_cached",)

    def __init__(self, p: Problem, where: list[int] | None = None) -> None:
        super().__init__(p, where)
        self.n_moves_cached = self.n_moves()


@dataclass(slots=True)
class Ctx:
    p: Problem
    s: GState
    moved_mib: int = 0
    mandatory: dict[int, Mandatory] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    """VMs the greedy already moved (never moved twice)."""
    notes: list[str] = field(default_factory=list)
    received: set[int] = field(default_factory=set)
    """Hosts that received a VM (consolidate never empties them afterwards)."""

    def moves_left(self) -> int:
        return self.p.max_moves - self.s.n_moves_cached

    def can_spend(self, units: list[int]) -> bool:
        p = self.p
        new = [v for v in units if self.s.where[v] == p.origin[v]]
        if self.s.n_moves_cached + len(new) > p.max_moves:
            return False
        if p.max_mib is not None:
            add = sum(p.move_mib[v] for v in new)
            if self.moved_mib + add > p.max_mib:
                return False
        return True

    def apply(self, units: list[int], h: int, why: Mandatory | None = None) -> None:
        p, s = self.p, self.s
        for v in units:
            was_home = s.where[v] == p.origin[v]
            s.move(v, h)
            now_home = s.where[v] == p.origin[v]
            if was_home and not now_home:
                s.n_moves_cached += 1
                self.moved_mib += p.move_mib[v]
            elif now_home and not was_home:
                s.n_moves_cached -= 1
                self.moved_mib -= p.move_mib[v]
            self.touched.add(v)
            if why is not None:
                self.mandatory[v] = why
        self.received.add(h)


def unit_of(ctx: Ctx, v: int) -> list[int] | None:
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


def unit_fits(ctx: Ctx, unit: list[int], h: int) -> bool:
    p, s = ctx.p, ctx.s
    if any(s.where[m] == h for m in unit):
        return False
    c = sum(p.cpu[m] for m in unit)
    mm = sum(p.mem[m] for m in unit)
    if s.cpu[h] + c > p.cap_cpu[h] or s.mem[h] + mm > p.cap_mem[h]:
        return False
    return all(p.may_host(m, h) and s.anti_ok(m, h) for m in unit)


def _wload(p: Problem, s: State, h: int, dc: int = 0, dm: int = 0) -> float:
    wc, wm = obj.weights(p)
    return (wc * (s.cpu[h] + dc) / p.raw_cpu[h] + wm * (s.mem[h] + dm) / p.raw_mem[h]) / (wc + wm)


def _peak(p: Problem, s: State, h: int, dc: int = 0, dm: int = 0) -> float:
    return max((s.cpu[h] + dc) / p.raw_cpu[h], (s.mem[h] + dm) / p.raw_mem[h])


def best_target(
    ctx: Ctx, unit: list[int], *, pack: bool, exclude: frozenset[int] = frozenset()
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
            after = _peak(p, s, h, c, mm)
            if s.on[h]:
                if after <= p.high and (best is None or after > best_key):
                    best, best_key = h, after
            else:
                # An empty host: prefer the one drawing least at this load.
                watts = obj.curve(p, h).at((s.cpu[h] + c) / p.raw_cpu[h])
                if fallback is None or watts < fb_key:
                    fallback, fb_key = h, watts
        else:
            after = _wload(p, s, h, c, mm)
            if best is None or after < best_key:
                best, best_key = h, after
    if best is None and pack:
        return fallback
    return best


# -- phase 1: drains ---------------------------------------------------------------------------
def drain(ctx: Ctx, pack: bool) -> None:
    p, s = ctx.p, ctx.s
    for h in range(p.n_hosts):
        kind = p.empty_reason[h]
        if kind is None:
            continue
        state = "in maintenance" if kind is ReasonKind.DRAIN else "degraded"
        for v in sorted(s.on[h], key=lambda v: (-p.mem[v], v)):
            if s.where[v] != h:
                continue  # moved with its affinity unit
            if not p.movable[v]:
                ctx.notes.append(f"vm {p.vms[v].name} stays on {p.hosts[h].name}: {p.why_fixed[v]}")
                continue
            unit = unit_of(ctx, v) or [v]
            if not ctx.can_spend(unit):
                ctx.notes.append(
                    f"vm {p.vms[v].name} stays on {p.hosts[h].name}: move budget spent"
                )
                continue
            t = best_target(ctx, unit, pack=pack)
            if t is None:
                ctx.notes.append(
                    f"vm {p.vms[v].name} cannot leave {p.hosts[h].name}: no host has room "
                    f"({p.mem[v]} MiB, {p.cpu[v]} mc) within headroom and rules"
                )
                continue
            ctx.apply(unit, t, Mandatory(kind, f"host {p.hosts[h].name} {state}"))


# -- phase 2: hard rules -----------------------------------------------------------------------
def fix_rules(ctx: Ctx, pack: bool) -> None:
    p, s = ctx.p, ctx.s
    # Pins and CPU compatibility.
    for v in range(p.n_vms):
        allowed = p.allowed[v]
        if allowed is None or s.where[v] in allowed or p.empty_reason[s.where[v]] is not None:
            continue
        name = p.vms[v].name
        if not p.movable[v]:
            ctx.notes.append(f"vm {name} breaks its pin but {p.why_fixed[v]}")
            continue
        if not ctx.can_spend([v]):
            ctx.notes.append(f"vm {name} breaks its pin: move budget spent")
            continue
        t = best_target(ctx, [v], pack=pack)
        if t is None:
            ctx.notes.append(f"vm {name} breaks its pin and no allowed host has room")
            continue
        ctx.apply(
            [v],
            t,
            Mandatory(ReasonKind.RULE, f"vm {name} must run on a pinned/compatible host", "pin"),
        )
    for g in p.groups:
        if not g.hard:
            continue
        if g.anti:
            by_host: dict[int, list[int]] = {}
            for m in g.vms:
                by_host.setdefault(s.where[m], []).append(m)
            for h, members in sorted(by_host.items()):
                if len(members) < 2:
                    continue
                # Keep the member that is costliest to move (or fixed); move the others.
                members.sort(key=lambda m: (not p.movable[m], p.cost_mib[m], -m), reverse=True)
                for m in members[1:]:
                    name = p.vms[m].name
                    if not p.movable[m]:
                        ctx.notes.append(
                            f"anti-affinity {g.name}: {name} cannot move ({p.why_fixed[m]})"
                        )
                        continue
                    if not ctx.can_spend([m]):
                        ctx.notes.append(f"anti-affinity {g.name}: move budget spent")
                        continue
                    t = best_target(ctx, [m], pack=pack)
                    if t is None:
                        ctx.notes.append(f"anti-affinity {g.name}: no host can take {name}")
                        continue
                    ctx.apply(
                        [m],
                        t,
                        Mandatory(
                            ReasonKind.RULE,
                            f"anti-affinity group {g.name}: shares host {p.hosts[h].name}",
                            g.name,
                        ),
                    )
        else:
            hosts_of = [s.where[m] for m in g.vms]
            if len(set(hosts_of)) < 2:
                continue
            counts: dict[int, int] = {}
            for h in hosts_of:
                counts[h] = counts.get(h, 0) + 1
            for home, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                out = [m for m in g.vms if s.where[m] != home]
                if not all(p.movable[m] for m in out) or not ctx.can_spend(out):
                    continue
                if not unit_fits(ctx, out, home):
                    continue
                ctx.apply(
                    out,
                    home,
                    Mandatory(
                        ReasonKind.RULE,
                        f"affinity group {g.name}: join host {p.hosts[home].name}",
                        g.name,
                    ),
                )
                break
            else:
                ctx.notes.append(f"affinity group {g.name} is split and cannot be joined")


# -- phase 3: relief ---------------------------------------------------------------------------
def relieve(ctx: Ctx, pack: bool, limit: float | None) -> None:
    """Move VMs off hosts above capacity-with-headroom (or, with `limit`, above that peak load)
    smallest-first until they are below it."""
    p, s = ctx.p, ctx.s
    for h in range(p.n_hosts):
        if not p.receive[h] or p.empty_reason[h] is not None:
            continue

        def hot(h: int = h) -> bool:
            if s.over_capacity(h):
                return True
            return limit is not None and _peak(p, s, h) > limit

        if not hot():
            continue
        before = _peak(p, s, h)
        what = (
            "over capacity with headroom"
            if s.over_capacity(h)
            else f"above high watermark {limit:.2f}"
        )
        detail = f"host {p.hosts[h].name} load {before:.2f} {what}"
        for v in sorted(s.on[h], key=lambda v: (p.cost_mib[v], v)):
            if not hot():
                break
            if s.where[v] != h or v in ctx.touched:
                continue
            unit = unit_of(ctx, v)
            if unit is None or not ctx.can_spend(unit):
                continue
            t = best_target(ctx, unit, pack=pack, exclude=frozenset({h}))
            if t is None or (
                pack
                and _peak(p, s, t, sum(p.cpu[m] for m in unit), sum(p.mem[m] for m in unit))
                > p.high
            ):
                continue
            ctx.apply(unit, t, Mandatory(ReasonKind.HOTSPOT, detail))


# -- phase 4a: balance -------------------------------------------------------------------------
def balance(ctx: Ctx) -> None:
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
            if v in ctx.touched or not p.movable[v] or v in p.aff_of:
                continue
            if not ctx.can_spend([v]):
                continue
            sc_a, sm_a = p.cpu[v] / ra_c, p.mem[v] / ra_m
            threshold = 2.0 * obj.move_cost(p, v, mean_mem)
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


# -- phase 4a': minimax polish ----------------------------------------------------------------
POLISH_SHARE = 0.25
"""Polish moves allowed, as a share of the moves made so far (plus POLISH_MIN)."""
POLISH_MIN = 8
SOURCES_PER_PULL = 24


def polish(ctx: Ctx) -> None:
    """Attack the extremes directly: take the host furthest out on either side and make the
    one move that lowers the weighted spread (max - min of CPU and memory) the most, or that
    pulls the extreme host in without widening either resource's range. The sum-of-squares pass
    leaves such hosts when CPU and memory disagree; this pass trades along the spread itself."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if len(hs) < 3:
        return
    pos = {h: i for i, h in enumerate(hs)}
    wc, wm = obj.weights(p)
    wsum = wc + wm
    raw = (
        np.array([p.raw_cpu[h] for h in hs], dtype=np.float64),
        np.array([p.raw_mem[h] for h in hs], dtype=np.float64),
    )
    cap = (
        np.array([p.cap_cpu[h] for h in hs], dtype=np.int64),
        np.array([p.cap_mem[h] for h in hs], dtype=np.int64),
    )
    used = (
        np.array([s.cpu[h] for h in hs], dtype=np.int64),
        np.array([s.mem[h] for h in hs], dtype=np.int64),
    )
    weight = (wc, wm)
    limit = s.n_moves_cached + int(POLISH_SHARE * s.n_moves_cached) + POLISH_MIN
    mean_mem = obj.mean_host_mem(p)
    done: set[tuple[int, int, int]] = set()
    hsarr = np.array(hs, dtype=np.int64)
    eps = 1e-12

    while s.n_moves_cached < min(p.max_moves, limit):
        load = (used[0] / raw[0], used[1] / raw[1])
        top = [np.argsort(-load[q], kind="stable")[:3] for q in (0, 1)]
        bot = [np.argsort(load[q], kind="stable")[:3] for q in (0, 1)]
        hi = (float(load[0][top[0][0]]), float(load[1][top[1][0]]))
        lo = (float(load[0][bot[0][0]]), float(load[1][bot[1][0]]))
        spread = sum(weight[q] * (hi[q] - lo[q]) for q in (0, 1)) / wsum

        def excl(
            q: int,
            skip: set[int],
            high: bool,
            top: list[Any] = top,
            bot: list[Any] = bot,
            load: tuple[Any, Any] = load,
        ) -> float:
            """Highest (lowest) load of resource q over hosts not in skip."""
            for j in top[q] if high else bot[q]:
                if int(j) not in skip:
                    return float(load[q][j])
            return float(load[q][top[q][0] if high else bot[q][0]])

        cands: list[tuple[float, int, int, int]] = []
        for r in (0, 1):
            if weight[r] <= 0:
                continue
            for side, i in ((1, int(top[r][0])), (-1, int(bot[r][0]))):
                if (hs[i], r, side) not in done:
                    cands.append((weight[r] * (hi[r] - lo[r]), r, side, i))
        if not cands:
            break
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        _, r, side, i = cands[0]
        h = hs[i]
        best: tuple[float, float, int, int] | None = None  # (spread', extreme', vm, target)
        if side == 1:
            sources = [i]
        else:
            order = np.argsort(-load[r], kind="stable")
            sources = [int(j) for j in order[:SOURCES_PER_PULL] if int(j) != i]
        for si in sources:
            a = hs[si]
            for v in sorted(s.on[a]):
                if not p.movable[v] or v in p.aff_of or v in ctx.mandatory:
                    continue
                if not ctx.can_spend([v]):
                    continue
                sz = (p.cpu[v], p.mem[v])
                a_after = [(used[q][si] - sz[q]) / raw[q][si] for q in (0, 1)]
                cost = obj.move_cost(p, v, mean_mem) * 0.01
                if side == 1:
                    nb = [(used[q] + sz[q]) / raw[q] for q in (0, 1)]
                    new_spread = np.zeros(len(hs))
                    for q in (0, 1):
                        hq = np.maximum(np.maximum(excl(q, {si}, True), a_after[q]), nb[q])
                        lq = np.minimum(np.minimum(excl(q, {si}, False), a_after[q]), nb[q])
                        new_spread = new_spread + weight[q] * (hq - lq)
                    new_spread = new_spread / wsum
                    ext = np.maximum(nb[r], a_after[r])
                    ok = (
                        (used[0] + sz[0] <= cap[0])
                        & (used[1] + sz[1] <= cap[1])
                        & (
                            (new_spread < spread - 1e-9)
                            | ((new_spread <= spread + eps) & (ext < load[r][i] - eps))
                        )
                    )
                    ok[si] = False
                    idx = np.nonzero(ok)[0]
                    if idx.size == 0:
                        continue
                    keyv = new_spread[idx] * 1000.0 + ext[idx]
                    for j in idx[np.argsort(keyv, kind="stable")][:4]:
                        b = int(hsarr[j])
                        if s.can_move(v, b):
                            cand = (float(new_spread[j]) + cost, float(ext[j]), v, b)
                            if best is None or cand[:2] < best[:2]:
                                best = cand
                            break
                else:
                    if not s.can_move(v, h):
                        continue
                    nb_s = [(used[q][i] + sz[q]) / raw[q][i] for q in (0, 1)]
                    new_spread_f = 0.0
                    for q in (0, 1):
                        hq = max(excl(q, {si, i}, True), a_after[q], nb_s[q])
                        lq = min(excl(q, {si, i}, False), a_after[q], nb_s[q])
                        new_spread_f += weight[q] * (hq - lq)
                    new_spread_f /= wsum
                    ext_f = -min(nb_s[r], a_after[r])
                    if not (
                        new_spread_f < spread - 1e-9
                        or (new_spread_f <= spread + eps and -ext_f > load[r][i] + eps)
                    ):
                        continue
                    cand = (new_spread_f + cost, ext_f, v, h)
                    if best is None or cand[:2] < best[:2]:
                        best = cand
        if best is None:
            done.add((h, r, side))
            continue
        _, _, v, b = best
        a = s.where[v]
        ctx.apply([v], b)
        for q, amount in ((0, p.cpu[v]), (1, p.mem[v])):
            used[q][pos[a]] -= amount
            used[q][pos[b]] += amount
        done = {d for d in done if d[0] not in (a, b)}


# -- phase 4b: consolidate ---------------------------------------------------------------------
def consolidate(ctx: Ctx) -> None:
    """Empty the least loaded powered-on hosts, each VM to the fullest powered-on host that
    stays under the high watermark (first fit over hosts ranked fullest first), keeping
    min_active_hosts and spare capacity; an emptying is kept only if it saves power."""
    p, s = ctx.p, ctx.s
    active = [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None]
    tot_c = sum(s.cpu[h] for h in active)
    tot_m = sum(s.mem[h] for h in active)
    keep = 1.0 - p.spare_capacity
    on = {h for h in active if s.on[h]}
    cap_on_c = sum(p.cap_cpu[h] for h in on)
    cap_on_m = sum(p.cap_mem[h] for h in on)
    order = sorted(on, key=lambda h: (_wload(p, s, h), h))
    rank_key = {h: (-_peak(p, s, h), h) for h in on}
    ranked_keys = sorted(rank_key.values())
    ranked = [h for _, h in ranked_keys]
    fails = 0
    for a in order:
        if fails >= CONSOLIDATE_FAIL_LIMIT or s.n_moves_cached >= p.max_moves:
            break
        if a not in on or a in ctx.received or not s.on[a]:
            continue
        if len(on) - 1 < max(1, p.min_active_hosts):
            break
        if tot_c > (cap_on_c - p.cap_cpu[a]) * keep or tot_m > (cap_on_m - p.cap_mem[a]) * keep:
            fails += 1
            continue
        vms = sorted(s.on[a], key=lambda v: (-p.mem[v], v))
        if any(not p.movable[v] for v in vms):
            fails += 1
            continue
        power_before = obj.host_power(p, s, a)
        log: list[tuple[int, int]] = []
        pw: dict[int, float] = {}
        ok = True
        room_moves = p.max_moves - s.n_moves_cached
        room_mib = None if p.max_mib is None else p.max_mib - ctx.moved_mib
        for v in vms:
            if s.where[v] != a:
                continue
            unit = unit_of(ctx, v)
            if unit is None or len(log) + len(unit) > room_moves:
                ok = False
                break
            if room_mib is not None:
                spent = sum(p.move_mib[m] for m, _ in log) + sum(p.move_mib[m] for m in unit)
                if spent > room_mib:
                    ok = False
                    break
            tgt = _pack_target(ctx, unit, ranked, on, a)
            if tgt is None:
                ok = False
                break
            if tgt not in pw:
                pw[tgt] = obj.host_power(p, s, tgt)
            for m in unit:
                log.append((m, s.where[m]))
                s.move(m, tgt)
        saved = 0.0
        if ok:
            saved = power_before - sum(obj.host_power(p, s, x) - w for x, w in pw.items())
        targets = {m: s.where[m] for m, _ in log}
        for m, frm in reversed(log):
            s.move(m, frm)
        if not ok or saved <= 0:
            fails += 1
            continue
        fails = 0
        for v, tgt in sorted(targets.items()):
            ctx.apply(
                [v],
                tgt,
                Mandatory(
                    ReasonKind.ENERGY,
                    f"empty {p.hosts[a].name} so it can be switched off (saves {saved:.0f} W)",
                ),
            )
        on.discard(a)
        cap_on_c -= p.cap_cpu[a]
        cap_on_m -= p.cap_mem[a]
        for x in {a, *targets.values()}:
            ranked_keys.pop(bisect.bisect_left(ranked_keys, rank_key[x]))
            if x in on:
                rank_key[x] = (-_peak(p, s, x), x)
                bisect.insort(ranked_keys, rank_key[x])
        ranked = [h for _, h in ranked_keys]


def _pack_target(
    ctx: Ctx, unit: list[int], ranked: list[int], on: set[int], source: int
) -> int | None:
    """First host, fullest first, that takes the unit and stays under the high watermark."""
    p, s = ctx.p, ctx.s
    c = sum(p.cpu[m] for m in unit)
    mm = sum(p.mem[m] for m in unit)
    for h in ranked:
        if h == source or h not in on:
            continue
        if _peak(p, s, h, c, mm) <= p.high and unit_fits(ctx, unit, h):
            return h
    return None


def run_greedy(p: Problem) -> Ctx:
    from rebalancerd.policy.schema import Mode

    ctx = Ctx(p, GState(p))
    pack = p.mode is Mode.CONSOLIDATE
    drain(ctx, pack)
    fix_rules(ctx, pack)
    if p.mode is Mode.DRAIN:
        return ctx
    if pack:
        from rebalancerd.planner.consolidate import consolidate_mode

        consolidate_mode(ctx)  # hotspot relief into a band, then whole-host emptying
    else:
        balance(ctx)  # hosts above capacity with headroom go first
        polish(ctx)
    return ctx
