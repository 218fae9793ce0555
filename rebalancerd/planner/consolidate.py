"""Consolidate mode's greedy: relieve hotspots into a band below them, then empty whole hosts.

Three rules keep consolidation from churning (packing a host and relieving it again):

- **Per-host prediction.** A host's predicted CPU load is the policy's prediction percentile
  of the *summed* history of the VMs on it over the policy's window (at least their current
  sum): VMs that share a host do not all peak in the same sample, so summing per-VM
  percentiles would reserve room for a peak that never happens. Capacity with headroom is
  checked on current use (the problem's per-VM CPU in this mode).
- **A band between packing and relief.** A host is a hotspot when its predicted load is above
  the relief line ``min(high watermark, 1 - headroom)``, or its current use is above capacity
  with headroom. Packing, and relief targets, fill hosts only up to ``pack_limit = relief line
  - band`` with ``band = max(hysteresis, MIN_BAND)``, and a hotspot is relieved down to that
  limit, not just under the line; so demand has to rise by the band before a packed host
  needs a move again.
- **Whole hosts only.** An energy move is planned only as part of emptying a host (all its VMs
  find room under the pack limit), because a host that keeps one VM keeps drawing its idle power.
- **Size-independent hysteresis.** Emptying a host is kept only if it saves at least
  ``hysteresis`` x that host's power (its watts minus what its VMs add on their targets),
  whatever the cluster's size.

Relief and packing pick targets best-fit on absolute free CPU under the pack limit, through a
sorted index of the powered-on hosts (no scan of every host per VM). When no powered-on host can
take a VM, the host switched back on is the one with the least full-load watts per unit of CPU
capacity (the most efficient). Hosts are emptied fewest VMs first (fewest moves per host switched
off), the least efficient first among equals.

The time limit: relief is a must-do and always runs; emptying is optional and stops at the
greedy's deadline (``GreedyContext.deadline``, checked before each host, so a host is emptied
completely or not at all), noting "greedy host emptying stopped by the wall-clock limit: plan
may vary between runs", like the balance passes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from rebalancerd.domain.model import percentile_of
from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import forecast
from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.greedy.scoring import unit_fits, unit_of
from rebalancerd.planner.problem import Problem

MIN_BAND = 0.05
"""Smallest band between the pack limit and the high watermark (fraction of a host)."""
FORECAST = False
"""Predict a host by planner/forecast.py's trend of its summed history instead of the window's
percentile."""
EMPTYING = "host emptying"
"""Phase name of the whole-host emptying in the deadline note (`GreedyContext.out_of_time`)."""


def relief_line(p: Problem) -> float:
    """Predicted load (fraction of the raw host) above which a host is a hotspot: the high
    watermark, or capacity with headroom when that is lower."""
    return min(p.high, 1.0 - p.headroom)


def pack_limit(p: Problem) -> float:
    """Predicted load (fraction of the raw host) up to which packing and relief fill a host:
    a band below the relief line."""
    return max(p.low, relief_line(p) - max(p.hysteresis, MIN_BAND))


def efficiency_key(p: Problem, h: int) -> tuple[float, int]:
    """Full-load watts per unit of CPU capacity (lower is more efficient), then index."""
    return (obj.curve(p, h).at(1.0) / max(1, p.raw_cpu[h]), h)


def vm_history(p: Problem, v: int) -> list[int]:
    """The VM's CPU samples over the policy's window, oldest first, padded at the front with
    its oldest known sample (its current use when it has no history)."""
    w = max(1, p.window)
    vm = p.vms[v]
    hist = list(vm.cpu_history_mc[-w:]) or [vm.cpu_used_mc]
    return [hist[0]] * (w - len(hist)) + hist


class Consolidator:
    def __init__(self, ctx: GreedyContext) -> None:
        self.ctx = ctx
        p, s = ctx.p, ctx.s
        self.p, self.s = p, s
        self.limit = pack_limit(p)
        self.band = relief_line(p) - self.limit
        self.w = max(1, p.window)
        self.vec = [vm_history(p, v) for v in range(p.n_vms)]
        self.low = [min(min(x), p.cpu[v]) for v, x in enumerate(self.vec)]
        self.hvec = [[0] * self.w for _ in range(p.n_hosts)]
        for v, h in enumerate(s.where):
            self._add_vec(v, h, 1)
        self.lim_c = [int(self.limit * c) for c in p.raw_cpu]
        self.lim_m = [int(self.limit * m) for m in p.raw_mem]
        self.hot_c = [int(relief_line(p) * c) for c in p.raw_cpu]
        self.usable = [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None]
        self.key: dict[int, tuple[int, int]] = {}
        self.keys: list[tuple[int, int]] = []
        for h in self.usable:
            if s.on[h]:
                self.key[h] = (self.lim_c[h] - self.pred(h), h)
        self.keys = sorted(self.key.values())
        self.sum_pred = sum(self.lim_c[h] - k[0] for h, k in self.key.items())
        """Sum of the indexed (powered-on) hosts' predictions, and of their raw CPU."""
        self.sum_raw = sum(p.raw_cpu[h] for h in self.key)
        self.off = sorted((efficiency_key(p, h) for h in self.usable if not s.on[h]), reverse=True)
        """Switched-off hosts, most efficient last (taken first)."""
        self.emptied: set[int] = set()

    # -- per-host prediction -----------------------------------------------------------------
    def _add_vec(self, v: int, h: int, sign: int) -> None:
        hv, x = self.hvec[h], self.vec[v]
        for i in range(self.w):
            hv[i] += sign * x[i]

    def pred(self, h: int, add: Sequence[int] = (), sub: Sequence[int] = ()) -> int:
        """Predicted CPU (mc) of host h with the VMs `add` arriving and `sub` leaving."""
        p, s = self.p, self.s
        vals = list(self.hvec[h])
        cur = s.cpu[h]
        for sign, vms in ((1, add), (-1, sub)):
            for v in vms:
                x = self.vec[v]
                for i in range(self.w):
                    vals[i] += sign * x[i]
                cur += sign * p.cpu[v]
        if FORECAST:
            return max(cur, forecast.trend_forecast(vals))
        return max(cur, percentile_of(vals, p.percentile))

    # -- index of powered-on hosts by room under the pack limit ------------------------------
    def _index_add(self, h: int) -> None:
        k = (self.lim_c[h] - self.pred(h), h)
        self.key[h] = k
        bisect.insort(self.keys, k)
        self.sum_pred += self.lim_c[h] - k[0]
        self.sum_raw += self.p.raw_cpu[h]

    def _index_remove(self, h: int) -> None:
        k = self.key.pop(h)
        self.keys.pop(bisect.bisect_left(self.keys, k))
        self.sum_pred -= self.lim_c[h] - k[0]
        self.sum_raw -= self.p.raw_cpu[h]

    def _refresh(self, h: int) -> None:
        if h in self.key:
            self._index_remove(h)
            self._index_add(h)

    def fits(self, unit: list[int], h: int) -> bool:
        p, s = self.p, self.s
        mm = sum(p.mem[m] for m in unit)
        if s.mem[h] + mm > self.lim_m[h] or not unit_fits(self.ctx, unit, h):
            return False
        return self.pred(h, add=unit) <= self.lim_c[h]

    def best_fit(self, unit: list[int], exclude: int) -> int | None:
        """The powered-on host with the least room left that takes the unit under the pack
        limit (hosts with less room than the unit's smallest sample cannot)."""
        lb = sum(self.low[m] for m in unit)
        i = bisect.bisect_left(self.keys, (lb, -1))
        for _, h in self.keys[i:]:
            if h != exclude and self.fits(unit, h):
                return h
        return None

    def _wake(self, unit: list[int]) -> int | None:
        """The most efficient switched-off host that takes the unit under the pack limit."""
        for i in range(len(self.off) - 1, -1, -1):
            h = self.off[i][1]
            if self.s.on[h] or h in self.emptied:
                continue
            if self.fits(unit, h):
                self.off.pop(i)
                self._index_add(h)
                return h
        return None

    def _move(self, unit: list[int], h: int, why: Mandatory | None = None) -> None:
        s = self.s
        a = s.where[unit[0]]
        for m in unit:
            self._add_vec(m, a, -1)
            self._add_vec(m, h, 1)
        if why is None:
            for m in unit:
                s.move(m, h)
        else:
            self.ctx.apply(unit, h, why)
        self._refresh(a)
        self._refresh(h)

    # -- relief ------------------------------------------------------------------------------
    def hot(self, h: int) -> bool:
        return self.s.over_capacity(h) or self.pred(h) > self.hot_c[h]

    def relieve(self) -> None:
        """Hotspots give up VMs until they are under the pack limit: each time the cheapest VM
        whose departure gets there, else the one whose departure lowers the prediction most."""
        ctx, p, s = self.ctx, self.p, self.s
        hot = sorted(
            (h for h in self.usable if s.on[h] and self.hot(h)),
            key=lambda h: (-self.pred(h) / p.raw_cpu[h], h),
        )
        for h in hot:
            before = self.pred(h) / p.raw_cpu[h]
            what = (
                "over capacity with headroom"
                if s.over_capacity(h)
                else f"above the relief line {relief_line(p):.2f}"
            )
            detail = (
                f"host {p.hosts[h].name} predicted load {before:.2f} {what}; "
                f"relieved to the pack limit {self.limit:.2f}"
            )
            tried: set[int] = set()
            while self.pred(h) > self.lim_c[h] or s.over_capacity(h):
                unit = self._pick(h, tried)
                if unit is None:
                    break
                tried.update(unit)
                if not ctx.can_spend(unit):
                    continue
                t = self.best_fit(unit, h)
                if t is None:
                    t = self._wake(unit)
                if t is None:
                    continue
                self._move(unit, t, Mandatory(ReasonKind.HOTSPOT, detail))

    def _pick(self, h: int, tried: set[int]) -> list[int] | None:
        p, s, ctx = self.p, self.s, self.ctx
        enough: tuple[float, int, list[int]] | None = None
        lowest: tuple[int, int, list[int]] | None = None
        for v in sorted(s.on[h]):
            if v in tried or v in ctx.touched:
                continue
            unit = unit_of(ctx, v)
            if unit is None or min(unit) != v:
                continue
            after = self.pred(h, sub=unit)
            mm = s.mem[h] - sum(p.mem[m] for m in unit)
            if after <= self.lim_c[h] and mm <= p.cap_mem[h]:
                cost = sum(p.cost_mib[m] for m in unit)
                if enough is None or (cost, v) < enough[:2]:
                    enough = (cost, v, unit)
            if lowest is None or (after, v) < lowest[:2]:
                lowest = (after, v, unit)
        pick = enough or lowest
        return None if pick is None else pick[2]

    # -- emptying ----------------------------------------------------------------------------
    def empty_hosts(self) -> None:
        """Empty whole hosts, fewest VMs first, while the budget, min_active_hosts and
        spare_capacity allow and each emptying saves at least hysteresis x the host's power.
        Optional: stops at the deadline, checked before each host (whole hosts only)."""
        ctx, p, s = self.ctx, self.p, self.s
        keep = 1.0 - p.spare_capacity
        on = [h for h in self.usable if s.on[h]]
        tot_c = sum(s.cpu[h] for h in on)
        tot_m = sum(s.mem[h] for h in on)
        cap_c = sum(p.cap_cpu[h] for h in on)
        cap_m = sum(p.cap_mem[h] for h in on)
        n_on = len(on)
        order = sorted(on, key=lambda h: (len(s.on[h]), -efficiency_key(p, h)[0], s.cpu[h], h))
        for a in order:
            if ctx.moves_left() <= 0:
                break
            if ctx.out_of_time(EMPTYING):
                break  # between hosts: every host is emptied completely or not at all
            if a in ctx.received or not s.on[a] or a not in self.key:
                continue
            if self.pred(a) > p.low * p.raw_cpu[a]:
                # above the low watermark: only when the cluster is fragmented, i.e. the other
                # powered-on hosts would still be, on aggregate, a band below the pack limit
                agg = self.sum_pred  # a's load included
                room = self.sum_raw - p.raw_cpu[a]
                if agg > (self.limit - self.band) * room:
                    continue
            if n_on - 1 < max(1, p.min_active_hosts):
                break
            if tot_c > (cap_c - p.cap_cpu[a]) * keep or tot_m > (cap_m - p.cap_mem[a]) * keep:
                continue
            vms = sorted(s.on[a], key=lambda v: (-self.vec[v][-1], -p.mem[v], v))
            if any(not p.movable[v] for v in vms) or len(vms) > ctx.moves_left():
                continue
            if p.max_mib is not None and (
                ctx.moved_mib + sum(p.move_mib[v] for v in vms) > p.max_mib
            ):
                continue
            power_before = obj.host_power(p, s, a)
            self._index_remove(a)
            log: list[tuple[list[int], int]] = []
            before_w: dict[int, float] = {}
            ok = True
            for v in vms:
                if s.where[v] != a:
                    continue
                unit = unit_of(ctx, v)
                t = None if unit is None else self.best_fit(unit, a)
                if unit is None or t is None:
                    ok = False
                    break
                if t not in before_w:
                    before_w[t] = obj.host_power(p, s, t)
                self._move(unit, t)
                log.append((unit, t))
            saved = 0.0
            if ok:
                saved = power_before - sum(obj.host_power(p, s, t) - w for t, w in before_w.items())
            for unit, _ in reversed(log):
                self._move(unit, a)
            if not ok or saved <= 0 or saved < p.hysteresis * power_before:
                self._index_add(a)
                continue
            detail = (
                f"empty {p.hosts[a].name} so it can be switched off "
                f"(saves {saved:.0f} W of its {power_before:.0f} W)"
            )
            why = Mandatory(ReasonKind.ENERGY, detail)
            for unit, t in log:
                self._move(unit, t, why)
            self.emptied.add(a)
            n_on -= 1
            cap_c -= p.cap_cpu[a]
            cap_m -= p.cap_mem[a]


def interleave_targets(
    order: list[int], dest: dict[int, int], level: Callable[[int], int]
) -> list[int]:
    """Within each priority level (in order), take the moves round-robin over their targets:
    a consolidation sends many VMs to each of a few hosts, and with one migration per target
    at a time, consecutive moves to one target would make a step per move."""
    out: list[int] = []
    i = 0
    while i < len(order):
        j = i
        lv = level(order[i])
        by_target: dict[int, list[int]] = {}
        while j < len(order) and level(order[j]) == lv:
            by_target.setdefault(dest[order[j]], []).append(order[j])
            j += 1
        queues = list(by_target.values())
        k = 0
        while queues:
            k = 0 if k >= len(queues) else k
            out.append(queues[k].pop(0))
            if queues[k]:
                k += 1
            else:
                queues.pop(k)
        i = j
    return out


def consolidate_mode(ctx: GreedyContext) -> None:
    """Phases 3-4 of the greedy in consolidate mode: hotspot relief (always), then whole-host
    emptying (until ctx.deadline)."""
    c = Consolidator(ctx)
    c.relieve()
    c.empty_hosts()
