"""Fast greedy plans: always an answer, in milliseconds to a couple of seconds at 25,000 VMs.

Phases, in priority order (each spends the shared move/MiB budget):
1. drain / evacuate hosts that must be emptied;
2. hard-rule fixes (pins, anti-affinity, affinity);
3. the mode's objective: balance (capacity relief first, then hottest -> coldest best-fit moves
   that reduce the weighted sum of squared load deviations by more than the move costs, polish,
   band) or consolidate (hotspot relief into a band, whole-host emptying: planner/consolidate.py).

VMs of one hard affinity group that share a host move together (a "unit").
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

COLD_CANDIDATES = 6
CONSOLIDATE_FAIL_LIMIT = 12
BALANCE_COST_FACTOR = 0.5
"""A balance move must cut the sum of squared deviations by this many times its cost."""


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
    opening: list[int] = field(default_factory=list)
    """VMs moved by the opening descent, in order (kept in place by later passes)."""
    deadline: float = math.inf
    """time.perf_counter() value at which the optional passes stop (a safety net, like
    CP-SAT's wall-clock limit: every move made so far is valid, so the placement always is)."""
    stopped: list[str] = field(default_factory=list)
    """Passes stopped by the deadline."""

    def out_of_time(self, phase: str) -> bool:
        """True (and noted once per phase) once the deadline has passed."""
        if time.perf_counter() < self.deadline:
            return False
        if phase not in self.stopped:
            self.stopped.append(phase)
            self.notes.append(
                f"greedy {phase} stopped by the wall-clock limit: plan may vary between runs"
            )
        return True

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
def _rule_move(
    ctx: Ctx, v: int, pack: bool, reason: Mandatory, *, fixed: str, spent: str, full: str
) -> None:
    """Move one VM that breaks a hard rule to the best host that takes it, or note why not
    (`fixed`: it cannot move; `spent`: the budget is spent; `full`: no host has room)."""
    if not ctx.p.movable[v]:
        ctx.notes.append(fixed)
    elif not ctx.can_spend([v]):
        ctx.notes.append(spent)
    elif (t := best_target(ctx, [v], pack=pack)) is None:
        ctx.notes.append(full)
    else:
        ctx.apply([v], t, reason)


def fix_rules(ctx: Ctx, pack: bool) -> None:
    p, s = ctx.p, ctx.s
    # Pins and CPU compatibility.
    for v in range(p.n_vms):
        allowed = p.allowed[v]
        if allowed is None or s.where[v] in allowed or p.empty_reason[s.where[v]] is not None:
            continue
        name = p.vms[v].name
        _rule_move(
            ctx,
            v,
            pack,
            Mandatory(ReasonKind.RULE, f"vm {name} must run on a pinned/compatible host", "pin"),
            fixed=f"vm {name} breaks its pin but {p.why_fixed.get(v)}",
            spent=f"vm {name} breaks its pin: move budget spent",
            full=f"vm {name} breaks its pin and no allowed host has room",
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
                    _rule_move(
                        ctx,
                        m,
                        pack,
                        Mandatory(
                            ReasonKind.RULE,
                            f"anti-affinity group {g.name}: shares host {p.hosts[h].name}",
                            g.name,
                        ),
                        fixed=f"anti-affinity {g.name}: {name} cannot move ({p.why_fixed.get(m)})",
                        spent=f"anti-affinity {g.name}: move budget spent",
                        full=f"anti-affinity {g.name}: no host can take {name}",
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
            if v in ctx.touched or not p.movable[v] or v in p.aff_of:
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


def _smallest(x: Any, k: int, below: float | None = None) -> Any:
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
SWAP_KEEP = 3
"""Best swap candidates kept per VM of the attacked host (checked in order for rules)."""
SWAP_HOSTS = 64
"""Partner hosts searched first per swap (then, if none fits, every host)."""
EPS = 1e-12
TOL = 1e-9


class _Env:
    """Per-host loads of the balancing hosts as arrays, and the score of a candidate change.

    The score is lexicographic: first the *worst* weighted resource gap (minimax over CPU and
    memory, so neither resource is left far behind), then the weighted spread (the policy's
    objective). A move is acceptable when it lowers the score, or when it pulls the attacked
    extreme host in without raising the worst gap (sideways moves through ties: when 40 hosts
    share the maximum, the gap falls only after the last one is fixed)."""

    def __init__(self, ctx: Ctx, hs: list[int]) -> None:
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
        self.top = [_smallest(-self.load[q], 3) for q in (0, 1)]
        self.bot = [_smallest(self.load[q], 3) for q in (0, 1)]
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


def polish(ctx: Ctx) -> None:
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
    env = _Env(ctx, hs)
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
    swaps = _Swaps(ctx, env) if SWAPS else None

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
            order = _smallest(-load[r], SOURCES_PER_PULL)
            sources = [int(j) for j in order[:SOURCES_PER_PULL] if int(j) != i]
            best = _best_pull(ctx, env, moved, sources, i, r, cur, mean_mem)
        else:
            si = i
            a = hs[si]
            for v in sorted(s.on[a]):
                if not p.movable[v] or v in p.aff_of or moved.get(v, 0) >= POLISH_VM_MOVES:
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


def _best_pull(
    ctx: Ctx,
    env: _Env,
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
            if not p.movable[v] or v in p.aff_of or moved.get(v, 0) >= POLISH_VM_MOVES:
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


# -- phase 4a'': band tightening ------------------------------------------------------------
BAND_SHRINK = 0.005
"""Each band pass asks every host to sit within (worst gap / 2 - this) of the mean."""
BAND_PASSES = 12
BAND_VM_MOVES = 2
"""A VM moves at most this many times across the band passes."""
REBAND_PASSES = 40
REBAND_VM_MOVES = 4
"""Band passes and moves per VM after CP-SAT (repolish): the LNS rounds leave a few hosts
out of the band that longer chains of band repairs bring in (2,000 hosts, one in
maintenance: memory gap 0.102 -> 0.090, then the polish 0.078)."""
REBAND_MIN_HOSTS = 256
"""Only above this many balancing hosts (ties at the extremes are a large-cluster effect; on
small clusters CP-SAT's placement already weighs each move's cost, and the band's extra moves
would only buy spread)."""


def _phi_fn(w_n: tuple[float, float], mean: list[float]) -> Any:
    """The band potential of hosts with `c` / `m` used out of `rc` / `rm` raw capacity: the
    weighted sum of squared excursions outside (mean +- t). Elementwise, so evaluating it on
    any subset of candidates gives bit-identical values."""

    def phi(c: Any, m: Any, rc: Any, rm: Any, t: float) -> Any:
        out = 0.0
        for q, used_q, raw_q in ((0, c, rc), (1, m, rm)):
            if w_n[q] > 0:
                x = np.maximum(np.abs(used_q / raw_q - mean[q]) - t, 0.0)
                out = out + w_n[q] * x * x
        return out

    return phi


class _BandVms:
    """Per-VM copies of the band pass's per-host figures (the VM's host: used, raw, capacity,
    potential, and the used/potential once the VM has left), kept up to date for the VMs of the
    two hosts each move touches instead of being gathered across all VMs for every repair."""

    def __init__(
        self,
        ctx: Ctx,
        env: _Env,
        vpos: Any,
        phi: Any,
        w_n: tuple[float, float],
        mean: list[float],
    ) -> None:
        self.p, self.s, self.env, self.vpos, self.phi = ctx.p, ctx.s, env, vpos, phi
        self.w_n, self.mean = w_n, mean
        n = ctx.p.n_vms
        self.size = (np.array(ctx.p.cpu, dtype=np.int64), np.array(ctx.p.mem, dtype=np.int64))
        self.rem = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        """Used on the VM's host without the VM."""
        self.raw = (np.ones(n, dtype=np.float64), np.ones(n, dtype=np.float64))
        self.cap = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        self.cphi = np.zeros(n, dtype=np.float64)
        """Potential of the VM's host now."""
        self.nc = np.zeros(n, dtype=np.float64)
        """Potential of the VM's host once the VM has left."""
        self.by_size = [np.argsort(self.size[q], kind="stable") for q in (0, 1)]
        # as floats (exact for any size) so that bisection with a float key does not
        # convert the whole array on every call
        self.sorted_size = [self.size[q][self.by_size[q]].astype(np.float64) for q in (0, 1)]

    def candidates(
        self, elig: Any, base: tuple[int, int], win: list[tuple[float, float] | None]
    ) -> Any:
        """The eligible VMs, in index order, whose size added to `base` may fall inside the
        window, found by bisection on the sizes of the resource whose window holds fewer VMs
        (the other resource's window is left to the caller)."""
        pick: tuple[int, int, int] | None = None
        for q in (0, 1):
            lim = win[q]
            if lim is None:
                continue
            lo = int(np.searchsorted(self.sorted_size[q], lim[0] - base[q], side="right"))
            hi = int(np.searchsorted(self.sorted_size[q], lim[1] - base[q], side="left"))
            if pick is None or hi - lo < pick[2] - pick[1]:
                pick = (q, lo, hi)
        if pick is None:
            return np.nonzero(elig)[0]
        q, lo, hi = pick
        c = self.by_size[q][lo:hi]
        return np.sort(c[elig[c]])

    def reset(self, cur_phi: Any, t: float) -> None:
        """Everything from scratch (each pass: new band, moves undone)."""
        on = self.vpos >= 0
        idx = np.nonzero(on)[0]
        self._fill(idx, self.vpos[idx], cur_phi, t)

    def update(self, hosts: tuple[int, ...], cur_phi: Any, t: float) -> None:
        """After a move: the VMs now on the given host positions."""
        vs = [v for y in hosts for v in self.s.on[self.env.hs[y]]]
        if vs:
            idx = np.array(vs, dtype=np.int64)
            self._fill(idx, self.vpos[idx], cur_phi, t)

    def _fill(self, idx: Any, hp: Any, cur_phi: Any, t: float) -> None:
        env = self.env
        for q in (0, 1):
            self.rem[q][idx] = env.used[q][hp] - self.size[q][idx]
            self.raw[q][idx] = env.raw[q][hp]
            self.cap[q][idx] = env.cap[q][hp]
        self.cphi[idx] = cur_phi[hp]
        self.nc[idx] = self.phi(
            self.rem[0][idx], self.rem[1][idx], self.raw[0][idx], self.raw[1][idx], t
        )


def _band_window(
    w_n: tuple[float, float], mean: list[float], t: float, raw_a: Any, bound: float
) -> list[tuple[float, float] | None]:
    """Per resource, the used amounts (exclusive bounds, widened by a safety margin) that a
    host with raw capacity raw_a may reach while its potential stays below `bound`: each
    resource's term alone must stay below it. None where the resource has no weight. A
    conservative pre-filter: the exact potential is still computed for what passes."""
    out: list[tuple[float, float] | None] = []
    for q in (0, 1):
        if w_n[q] <= 0:
            out.append(None)
            continue
        r = math.sqrt(max(bound, 0.0) / w_n[q]) * (1 + 1e-6) + 1e-9
        out.append(
            (float(raw_a[q]) * (mean[q] - t - r) - 1.0, float(raw_a[q]) * (mean[q] + t + r) + 1.0)
        )
    return out


def _in_window(amount: tuple[Any, Any], win: list[tuple[float, float] | None]) -> Any:
    ok: Any = True
    for q in (0, 1):
        lim = win[q]
        if lim is not None:
            ok = ok & (amount[q] > lim[0]) & (amount[q] < lim[1])
    return ok


def band(ctx: Ctx, passes: int = BAND_PASSES, vm_moves: int = BAND_VM_MOVES) -> None:
    """Tighten the gaps with a per-host potential instead of the global max - min: each pass
    sets a band around the mean, a little narrower than the worst gap, and repairs the hosts
    outside it worst first (single moves out or in, then swaps), each action lowering the sum
    of squared excursions outside the band. Hosts tied at an extreme no longer block each
    other (every host that gets inside counts at once), and one stuck host does not end the
    pass. A pass is kept only if the score (worst gap, then weighted spread) improves.

    Candidate VMs are scored from per-VM copies of their host's figures (_BandVms), updated
    for the two hosts a move touches, so a repair does no gathering across all VMs; the
    choices are exactly those of scoring every VM afresh (same arithmetic per candidate, same
    order and ties)."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if len(hs) < 3:
        return
    env = _Env(ctx, hs)
    pos = env.pos
    w_n = (env.weight[0] / env.wmax, env.weight[1] / env.wmax)
    vpos = np.array([pos.get(s.where[v], -1) for v in range(p.n_vms)], dtype=np.int64)
    okv = np.array([p.movable[v] and v not in p.aff_of for v in range(p.n_vms)], dtype=bool)
    home = np.array(
        [pos.get(p.origin[v], -1) if v in ctx.mandatory else -2 for v in range(p.n_vms)],
        dtype=np.int64,
    )
    times = np.zeros(p.n_vms, dtype=np.int64)
    mean = [float(env.used[q].sum() / env.raw[q].sum()) for q in (0, 1)]
    phi = _phi_fn(w_n, mean)
    vms = _BandVms(ctx, env, vpos, phi, w_n, mean)

    env.refresh()
    shrink = BAND_SHRINK
    for _ in range(passes):
        if ctx.out_of_time("band tightening"):
            break
        t = env.primary / 2 - shrink
        if t <= 0:
            break
        start = (env.primary, env.spread)
        log: list[tuple[int, int]] = []
        used, raw = env.used, env.raw
        cur_phi = phi(used[0], used[1], raw[0], raw[1], t)
        vms.reset(cur_phi, t)
        # VMs that may move in this pass (not yet excluded per attacked host)
        free = okv & (vpos >= 0) & (times < vm_moves)
        stuck: set[int] = set()
        while s.n_moves_cached < p.max_moves and not ctx.out_of_time("band tightening"):
            order = _smallest(-cur_phi, 64)
            i = next((int(j) for j in order[:64] if int(j) not in stuck), -1)
            if i < 0 or cur_phi[i] <= 0:
                break
            best = _band_repair(ctx, env, vms, phi, t, cur_phi, free, vpos, home, i)
            if best is None:
                stuck.add(i)
                continue
            for v, b in best[1]:
                x = s.where[v]
                log.append((v, x))
                ctx.apply([v], b)
                times[v] += 1
                env.move(x, b, p.cpu[v], p.mem[v])
                vpos[v] = pos[b]
                free[v] = okv[v] and times[v] < vm_moves
                for y in (pos[x], pos[b]):
                    stuck.discard(y)
                    cur_phi[y] = phi(used[0][y], used[1][y], raw[0][y], raw[1][y], t)
                vms.update((pos[x], pos[b]), cur_phi, t)
        env.refresh()
        after = (env.primary, env.spread)
        if not (
            after[0] < start[0] - TOL or (after[0] <= start[0] + TOL and after[1] < start[1] - TOL)
        ):
            for v, x in reversed(log):
                b = s.where[v]
                ctx.apply([v], x)
                times[v] -= 1
                env.move(b, x, p.cpu[v], p.mem[v])
                vpos[v] = pos[x]
            env.refresh()
            if not log or shrink <= BAND_SHRINK / 4:
                break
            shrink /= 2  # a narrower step may still go through


def _band_repair(
    ctx: Ctx,
    env: _Env,
    vms: _BandVms,
    phi: Any,
    t: float,
    cur_phi: Any,
    free: Any,
    vpos: Any,
    home: Any,
    i: int,
) -> tuple[float, list[tuple[int, int]]] | None:
    """The band pass's best action for the host at position i (outside the band): a single
    move out or in, else a swap, else a chain; (potential change, moves) or None."""
    p, s = ctx.p, ctx.s
    hs = env.hs
    used, raw, cap = env.used, env.raw, env.cap
    size = vms.size
    a = hs[i]
    on_a = sorted(s.on[a])
    best: tuple[float, list[tuple[int, int]]] | None = None
    # single moves out of a: one row per VM of a, one column per host
    outs = [v for v in on_a if free[v] and ctx.can_spend([v])]
    if outs:
        ov = np.array(outs, dtype=np.int64)
        osz = (size[0][ov], size[1][ov])
        na_all = phi(used[0][i] - osz[0], used[1][i] - osz[1], raw[0][i], raw[1][i], t)
        nused = (used[0][None, :] + osz[0][:, None], used[1][None, :] + osz[1][:, None])
        nb_all = phi(nused[0], nused[1], raw[0][None, :], raw[1][None, :], t)
        d_all = (na_all - cur_phi[i])[:, None] + nb_all - cur_phi[None, :]
        fit_all = (nused[0] <= cap[0][None, :]) & (nused[1] <= cap[1][None, :])
        d_all = np.where(fit_all, d_all, np.inf)
        d_all[:, i] = np.inf
        for row, v in enumerate(outs):
            if home[v] >= 0:
                d_all[row, home[v]] = np.inf
        gains: Any = (d_all < -1e-12).any(axis=1)
    for row, v in enumerate(outs):
        if not gains[row]:
            continue  # no host takes v with a lower potential
        d = d_all[row]
        for j in _smallest(d, 3, below=-1e-12):
            if d[j] >= -1e-12:
                break
            if s.can_move(v, hs[int(j)]):
                if best is None or d[j] < best[0]:
                    best = (float(d[j]), [(v, hs[int(j)])])
                break
    # single moves into a from anywhere; every candidate list below is in VM order
    elig = free & (vpos != i) & (home != i)
    if not elig.any():
        return best
    u_a = (int(used[0][i]), int(used[1][i]))
    c_a = (cap[0][i], cap[1][i])
    r_a = (raw[0][i], raw[1][i])
    phi_a = cur_phi[i]
    # A candidate can only lower the potential if a's new potential stays below its own plus
    # the largest one its partner host can give up (every potential is >= 0).
    phi_max = float(cur_phi.max())
    win = _band_window(vms.w_n, vms.mean, t, r_a, float(phi_a) + phi_max + 1e-9)
    k_in = vms.candidates(elig, u_a, win)
    ain = (u_a[0] + size[0][k_in], u_a[1] + size[1][k_in])
    k_in = k_in[(ain[0] <= c_a[0]) & (ain[1] <= c_a[1]) & _in_window(ain, win)]
    if k_in.size:
        na = phi(u_a[0] + size[0][k_in], u_a[1] + size[1][k_in], r_a[0], r_a[1], t)
        d = na - phi_a + vms.nc[k_in] - vms.cphi[k_in]
        for k in _smallest(d, 6, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(k_in[k])
            if ctx.can_spend([w]) and s.can_move(w, a):
                best = (float(d[k]), [(w, a)])
                break
    if best is not None:
        return best
    us = [u for u in on_a if free[u]]
    if not us:
        return None
    # swaps: one of a's VMs for one elsewhere (half the gain per move counts)
    for u in us:
        su = (int(size[0][u]), int(size[1][u]))
        base = (u_a[0] - su[0], u_a[1] - su[1])
        ws = vms.candidates(elig, base, win)
        an = (base[0] + size[0][ws], base[1] + size[1][ws])
        bn = (vms.rem[0][ws] + su[0], vms.rem[1][ws] + su[1])
        w_pos = vpos[ws]
        fit = (an[0] <= c_a[0]) & (an[1] <= c_a[1])
        fit &= (bn[0] <= vms.cap[0][ws]) & (bn[1] <= vms.cap[1][ws])
        fit &= w_pos != home[u]
        fit &= _in_window(an, win)
        k_sw = np.nonzero(fit)[0]
        if k_sw.size == 0:
            continue
        ws = ws[k_sw]
        na = phi(an[0][k_sw], an[1][k_sw], r_a[0], r_a[1], t)
        nb = phi(bn[0][k_sw], bn[1][k_sw], vms.raw[0][ws], vms.raw[1][ws], t)
        d = na - phi_a + nb - vms.cphi[ws]
        for k in _smallest(d, 3, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(ws[k])
            b = hs[int(w_pos[k_sw[k]])]
            if not (ctx.can_spend([u, w]) and p.may_host(u, b) and p.may_host(w, a)):
                continue
            pair = _feasible_pair(s, (u, b), (w, a))
            if pair:
                best = (float(d[k]), pair)
                break
    if best is not None:
        return best
    # chains: one of a's VMs to the host that minds it least, one VM from a third host in
    # (the trial moves below are undone at once, so all rows can be scored up front)
    chain_us = [u for u in us if ctx.can_spend([u])]
    if not chain_us:
        return None
    cu = np.array(chain_us, dtype=np.int64)
    nused = (used[0][None, :] + size[0][cu][:, None], used[1][None, :] + size[1][cu][:, None])
    db_all = phi(nused[0], nused[1], raw[0][None, :], raw[1][None, :], t) - cur_phi[None, :]
    fit_all = (nused[0] <= cap[0][None, :]) & (nused[1] <= cap[1][None, :])
    db_all = np.where(fit_all, db_all, np.inf)
    db_all[:, i] = np.inf
    for row, u in enumerate(chain_us):
        db = db_all[row]
        if home[u] >= 0:
            db[home[u]] = np.inf
        bi = -1
        for j in _smallest(db, 3, below=np.inf):
            if np.isfinite(db[j]) and s.can_move(u, hs[int(j)]):
                bi = int(j)
                break
        if bi < 0:
            continue
        su = (int(size[0][u]), int(size[1][u]))
        base = (u_a[0] - su[0], u_a[1] - su[1])
        bound = float(phi_a) + phi_max + max(0.0, -float(db[bi])) + 1e-9
        win_ch = _band_window(vms.w_n, vms.mean, t, r_a, bound)
        ws = vms.candidates(elig, base, win_ch)
        an = (base[0] + size[0][ws], base[1] + size[1][ws])
        fit = (vpos[ws] != bi) & (ws != u) & (an[0] <= c_a[0]) & (an[1] <= c_a[1])
        fit &= _in_window(an, win_ch)
        k_ch = np.nonzero(fit)[0]
        if k_ch.size == 0:
            continue
        ws = ws[k_ch]
        na = phi(an[0][k_ch], an[1][k_ch], r_a[0], r_a[1], t)
        d = na - phi_a + vms.nc[ws] - vms.cphi[ws] + db[bi]
        for k in _smallest(d, 3, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(ws[k])
            b = hs[bi]
            if not (ctx.can_spend([u, w]) and p.may_host(w, a)):
                continue
            s.move(u, b)
            good = s.can_move(w, a)
            s.move(u, a)
            if good:
                best = (float(d[k]), [(u, b), (w, a)])
                break
    return best


def _feasible_pair(s: State, one: tuple[int, int], two: tuple[int, int]) -> list[tuple[int, int]]:
    """The two moves in an order that is feasible one at a time, or []."""
    for first, second in ((one, two), (two, one)):
        if not s.can_move(*first):
            continue
        src = s.where[first[0]]
        s.move(*first)
        good = s.can_move(*second)
        s.move(first[0], src)
        if good:
            return [first, second]
    return []


class _Swaps:
    """Two-move exchanges for the minimax polish: when no single move pulls an extreme host in
    (CPU and memory disagree: a host high in memory but low in CPU can give nothing away
    without leaving the CPU range), swap one of its VMs with a VM on another host so that the
    score does not get worse and the attacked extreme improves. Vectorised over the partner
    VMs: first those on the hosts furthest on the other side of the attacked resource and the
    most complementary hosts, then, if none fits, every VM of the cluster."""

    def __init__(self, ctx: Ctx, env: _Env) -> None:
        p, s = ctx.p, ctx.s
        self.env = env
        pos = env.pos
        self.size = (np.array(p.cpu, dtype=np.int64), np.array(p.mem, dtype=np.int64))
        self.pos = np.array([pos.get(s.where[v], -1) for v in range(p.n_vms)], dtype=np.int64)
        self.ok = np.array([p.movable[v] and v not in p.aff_of for v in range(p.n_vms)], dtype=bool)
        # A VM moved for a must-do reason (drain, rule, capacity) never goes back home.
        self.home = np.array(
            [pos.get(p.origin[v], -1) if v in ctx.mandatory else -2 for v in range(p.n_vms)],
            dtype=np.int64,
        )
        mean_mem = obj.mean_host_mem(p)
        self.cost = np.array([obj.move_cost(p, v, mean_mem) for v in range(p.n_vms)]) * 0.01

    def best(self, ctx: Ctx, i: int, r: int, side: int) -> list[tuple[int, int]]:
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
            order = _smallest(key, SWAP_HOSTS + 1)
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
        self, ctx: Ctx, i: int, r: int, side: int, us: list[int], ws: Any
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
        self, ctx: Ctx, i: int, r: int, side: int, us: list[int], ws: Any
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


GREEDY_SHARE = 0.9
"""The optional greedy passes stop at this share of the time left to the deadline, so that
CP-SAT gets some of it even on a loaded machine (at 2,000 hosts / 25,000 VMs on a quiet
machine the greedy needs 2-3.5 s of a 5 s limit, the LNS 0.5-0.7 s)."""
REPOLISH_GRACE = 0.5
"""The passes after CP-SAT (repolish) may run until the deadline plus this share of the time
limit: they start only before the deadline, and on a quiet machine need ~2 s at 2,000 hosts."""


def run_greedy(p: Problem, deadline: float = math.inf) -> Ctx:
    """The greedy plan. `deadline` is a time.perf_counter() value (the plan's time limit):
    drains and rule fixes always run; the optional passes (opening, balance, polish, band)
    stop at GREEDY_SHARE of the time left, each leaving a valid placement, and say so in the
    notes. The returned ctx.deadline is the one for repolish (the deadline plus
    REPOLISH_GRACE of the time limit)."""
    start = time.perf_counter()
    limit = deadline - start
    stop = start + GREEDY_SHARE * limit if math.isfinite(limit) else math.inf
    ctx = _run_greedy(p, stop)
    ctx.deadline = deadline + REPOLISH_GRACE * max(0.0, limit) if math.isfinite(limit) else math.inf
    return ctx


def _run_greedy(p: Problem, stop: float) -> Ctx:
    from rebalancerd.policy.schema import Mode

    ctx = Ctx(p, GState(p), deadline=stop)
    pack = p.mode is Mode.CONSOLIDATE
    drain(ctx, pack)
    fix_rules(ctx, pack)
    if p.mode is Mode.DRAIN:
        return ctx
    if pack:
        from rebalancerd.planner.consolidate import consolidate_mode

        consolidate_mode(ctx)  # hotspot relief into a band, then whole-host emptying
    else:
        plain = None
        if not soft_rules_broken(p, ctx.s):
            # The opening only sees the gap; where soft rules are broken (e.g. VMs asked to move
            # back home), the passes and CP-SAT, which weigh them, choose which VMs move.
            opening(ctx)
        if ctx.opening:  # the same without the opening, to compare
            plain = Ctx(p, GState(p), deadline=stop)
            drain(plain, pack)
            fix_rules(plain, pack)
            _balance_passes(plain)
        with locked(p, ctx.opening):
            _balance_passes(ctx)
        if plain is not None:
            # A faster start may cost a little final spread, at most half the hysteresis.
            loss = obj.spread(p, ctx.s) - obj.spread(p, plain.s)
            if loss > OPENING_TOLERANCE * p.hysteresis:
                plain.notes.append(
                    f"opening descent dropped: its final spread is {loss:.3f} worse "
                    f"than without it (> {OPENING_TOLERANCE} x hysteresis)"
                )
                return plain
    return ctx


def has_soft_rules(p: Problem) -> bool:
    return bool(p.soft_pins) or any(not g.hard for g in p.groups)


def soft_rules_broken(p: Problem, s: State) -> bool:
    """True if a soft pin or a soft (anti-)affinity group is broken in state `s`."""
    if any(s.where[v] not in hosts for v, hosts, _w, _n in p.soft_pins):
        return True
    for g in p.groups:
        if g.hard:
            continue
        homes = [s.where[v] for v in g.vms]
        if g.anti and len(set(homes)) < len(homes):
            return True
        if not g.anti and len(set(homes)) > 1:
            return True
    return False


def _balance_passes(ctx: Ctx) -> None:
    balance(ctx)  # hosts above capacity with headroom go first
    polish(ctx)
    band(ctx)


def repolish(ctx: Ctx) -> list[str]:
    """Band tightening and minimax polish again after CP-SAT changed ctx.s in place (its
    rounds minimise the weighted sum of the gaps, and may leave the worse gap a little higher
    than it could be, and a few hosts outside the band). Stops at ctx.deadline; returns the
    notes it added."""
    p, s = ctx.p, ctx.s
    moves = s.moves()
    s.n_moves_cached = len(moves)
    ctx.moved_mib = sum(p.move_mib[v] for v, _, _ in moves)
    n_notes = len(ctx.notes)
    if len(obj.balancing(p)) > REBAND_MIN_HOSTS:
        reband(ctx)
    polish(ctx)
    return ctx.notes[n_notes:]


def reband(ctx: Ctx) -> None:
    """Longer band tightening (REBAND_PASSES, REBAND_VM_MOVES), kept only if it lowers the
    worse gap."""
    p, s = ctx.p, ctx.s
    before = list(s.where)
    worst = obj.worst_gap(p, s)
    band(ctx, REBAND_PASSES, REBAND_VM_MOVES)
    if obj.worst_gap(p, s) >= worst - TOL:
        # Kept only if it lowers the worse gap: a better spread alone does not pay its moves.
        for v in [v for v, h in enumerate(s.where) if h != before[v]]:
            ctx.apply([v], before[v])


@contextmanager
def locked(p: Problem, vms: list[int]) -> Iterator[None]:
    """Treat `vms` as immovable (where they are now) inside the block."""
    was = [(v, p.movable[v]) for v in vms]
    for v in vms:
        p.movable[v] = False
    try:
        yield
    finally:
        for v, m in was:
            p.movable[v] = m


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
    ctx: Ctx, hs: list[int], wc: float, wm: float, k_best: int
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


def opening(ctx: Ctx) -> None:
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
