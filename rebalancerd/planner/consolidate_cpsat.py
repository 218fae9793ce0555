"""Consolidate mode's CP-SAT step: bin-packing by large neighbourhood search (LNS) over the
greedy's placement, switching more hosts off where the greedy's rules cannot.

The greedy (planner/consolidate.py) empties a host only when all its VMs fit best-fit one by
one, and only below the low watermark or when the cluster is fragmented on aggregate. Each LNS
round here reopens a few powered-on hosts, the lightest not tried yet (the *victims*) and the
next-lightest plus a few seeded random ones (room to pack into), frees all their movable VMs
and lets CP-SAT re-place them, warm-started (AddHint) from the greedy's placement:

- hard rules through the shared CP-SAT terms (``terms.HARD_TERMS``: one host per VM, pins and
  CPU compatibility via ``Problem.may_host``, capacity with headroom, anti-affinity, affinity,
  the cycle's move and MiB budget), which implement domain/rules.py's checks;
- the greedy's packing band: on every sample of the policy's window and on current use, a
  host's summed CPU stays at or below the pack limit (``consolidate.pack_limit``), memory too
  (never above what the host already holds if it is over). With the default p95 of 12 samples,
  nearest rank, the prediction is the window's highest summed sample, so this is the greedy's
  per-host prediction exactly;
- host on/off: a host with no VM left draws 0 W, else its curve linearised between idle and
  peak (``terms.Power``); ``energy.min_active_hosts`` and ``spare_capacity`` hold
  (``terms.MinActiveHosts``);
- migration cost: every VM away from its snapshot host costs ``MOVE_W_PER_GIB`` watts per GiB
  of its cost (memory, local disk, dirty rate x DIRTY_SECONDS: ``Problem.cost_mib``).

A round's answer is kept only if it switches at least one more host off and saves at least
``hysteresis`` x the watts of the hosts it switches off (the greedy's per-host rule), so CP-SAT
never makes partial energy moves. Rounds stop at ``MAX_ROUNDS``, after ``MAX_IDLE_ROUNDS``
rounds without a gain, or at the greedy's deadline (checked before each round; the solver's
wall-clock limit is the time left): the greedy's placement is always the fallback. Solves are
single-worker with a deterministic time per round and a fixed seed, so runs repeat unless the
wall clock cuts in (noted).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import objective as obj
from rebalancerd.planner import terms as T
from rebalancerd.planner.consolidate import pack_limit, vm_history
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

ENABLED = False
"""Run the LNS after the greedy in consolidate mode. Off by default: on 20110303 (full day) it
ran 257 rounds and kept none (0.00 kWh gained) for ~35 s more planner time; opt-in until it
pays."""
VICTIMS = 2
"""Lightest powered-on hosts a round tries to switch off."""
PACK_HOSTS = 6
"""Next-lightest hosts a round offers as room."""
RANDOM_HOSTS = 2
"""Seeded random powered-on hosts added per round (room for swaps)."""
MAX_ROUNDS = 3
MAX_IDLE_ROUNDS = 1
ROUND_DET = 0.03
"""Deterministic time per round (about seconds of one core)."""
MOVE_W_PER_GIB = 10.0
"""Watts a move of 1 GiB of migration cost must save (the migration cost term)."""
SEED = 17


@dataclass(slots=True)
class LnsInfo:
    rounds: int = 0
    kept: int = 0
    hosts_off: int = 0
    watts_saved: float = 0.0
    statuses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _on_hosts(p: Problem, s: State) -> list[int]:
    return [h for h in range(p.n_hosts) if p.receive[h] and p.empty_reason[h] is None and s.on[h]]


def _free(p: Problem, s: State, hosts: list[int]) -> tuple[list[int], set[int]]:
    """Movable VMs on `hosts` (not in hard affinity groups), and the hosts that keep a VM the
    model may not move (they stay on)."""
    vms: list[int] = []
    pinned: set[int] = set()
    for h in hosts:
        for v in sorted(s.on[h]):
            if p.movable[v] and v not in p.aff_of and p.may_host(v, h):
                vms.append(v)
            else:
                pinned.add(h)
    return vms, pinned


class _Lns:
    def __init__(self, ctx: GreedyContext) -> None:
        self.ctx = ctx
        p = ctx.p
        self.p = p
        self.limit = pack_limit(p)
        self.vec = [[*vm_history(p, v), p.cpu[v]] for v in range(p.n_vms)]
        """Per VM: its window's samples and its current use (the constrained columns)."""
        self.lim_c = [int(self.limit * c) for c in p.raw_cpu]
        self.lim_m = [int(self.limit * m) for m in p.raw_mem]
        self.rng = random.Random(SEED)
        self.tried: set[int] = set()

    def load(self, h: int) -> list[int]:
        s = self.ctx.s
        cols = len(self.vec[0]) if self.vec else 1
        out = [0] * cols
        for v in s.on[h]:
            for i, x in enumerate(self.vec[v]):
                out[i] += x
        return out

    def neighbourhood(self) -> tuple[list[int], list[int]] | None:
        p, s = self.p, self.ctx.s
        on = _on_hosts(p, s)
        peak = {h: max(self.load(h)) for h in on}
        on.sort(key=lambda h: (peak[h] / p.raw_cpu[h], h))
        victims = [h for h in on if h not in self.tried][:VICTIMS]
        if not victims:
            return None
        self.tried.update(victims)
        rest = [h for h in on if h not in victims]
        pack = rest[:PACK_HOSTS]
        more = [h for h in rest[PACK_HOSTS:]]
        pack += self.rng.sample(more, min(len(more), RANDOM_HOSTS))
        room = sum(max(0, self.lim_c[h] - peak[h]) for h in pack)
        if min(peak[h] for h in victims) > room:
            return victims, []  # not even the lightest victim fits: no round
        return victims, pack

    def round(self, victims: list[int], pack: list[int], wall: float) -> T.SolveResult | None:
        p, s = self.p, self.ctx.s
        hosts = sorted(set(victims) | set(pack))
        vms, _pinned = _free(p, s, hosts)
        if not vms:
            return None
        sub = T.Sub(p, s, vms, hosts)
        for term in T.HARD_TERMS:
            term().add(sub)
        power = T.Power().add(sub)
        T.MinActiveHosts().add(sub)
        m = sub.model
        vset = set(vms)
        for h in hosts:
            on = sub.xs_on(h)
            if not on:
                continue
            base = [0] * len(self.vec[0])
            now = self.load(h)
            for v in s.on[h]:
                if v not in vset:
                    for i, x in enumerate(self.vec[v]):
                        base[i] += x
            for i in range(len(base)):
                cap = max(self.lim_c[h], now[i])
                m.add(sum(self.vec[v][i] * x for v, x in on) <= cap - base[i])
            cap_m = max(self.lim_m[h], s.mem[h])
            base_m = s.mem[h] - sum(p.mem[v] for v in s.on[h] if v in vset)
            m.add(sum(p.mem[v] * x for v, x in on) <= cap_m - base_m)
        cost: list[Any] = [
            round(100 * MOVE_W_PER_GIB * p.cost_mib[v] / 1024.0) * sub.moved[v] for v in vms
        ]
        soft = T.SoftRules().add(sub)
        return T.solve(sub, [power, sum(cost), soft], seed=SEED, det_time=ROUND_DET, wall_time=wall)

    def accept(self, res: T.SolveResult, hosts: list[int]) -> tuple[int, float] | None:
        """(hosts switched off, watts saved) when the answer pays, else None."""
        p, s = self.p, self.ctx.s
        trial = s.copy()
        for v, h in sorted(res.where.items()):
            if trial.where[v] != h:
                trial.move(v, h)
        off = [h for h in hosts if s.on[h] and not trial.on[h]]
        if not off:
            return None
        before = sum(obj.host_power(p, s, h) for h in hosts)
        after = sum(obj.host_power(p, trial, h) for h in hosts)
        saved = before - after
        off_w = sum(obj.host_power(p, s, h) for h in off)
        moved = [v for v, h in res.where.items() if s.where[v] != h]
        cost_w = MOVE_W_PER_GIB * sum(p.cost_mib[v] for v in moved) / 1024.0
        if saved - cost_w <= 0 or saved < p.hysteresis * off_w:
            return None
        return len(off), saved

    def apply(self, res: T.SolveResult, off: int, saved: float) -> None:
        ctx, p, s = self.ctx, self.p, self.ctx.s
        names = ", ".join(
            p.hosts[h].name
            for h in sorted({s.where[v] for v, h in res.where.items() if s.where[v] != h})
        )
        why = Mandatory(
            ReasonKind.ENERGY,
            f"CP-SAT repack of {names} so that {off} host(s) can be switched off "
            f"(saves {saved:.0f} W)",
        )
        for v, h in sorted(res.where.items()):
            if s.where[v] != h:
                ctx.apply([v], h, why)


def improve(ctx: GreedyContext) -> LnsInfo:
    """Run the LNS on ctx.s in place (see the module's docstring); stops at ctx.deadline."""
    info = LnsInfo()
    p = ctx.p
    if not ENABLED or ctx.moves_left() <= 0 or p.n_hosts < 2:
        return info
    lns = _Lns(ctx)
    idle = 0
    while info.rounds < MAX_ROUNDS and idle < MAX_IDLE_ROUNDS:
        left = ctx.deadline - time.perf_counter()
        if left <= 0.01:
            info.notes.append("CP-SAT consolidation stopped by the wall-clock limit")
            break
        nb = lns.neighbourhood()
        if nb is None:
            break
        victims, pack = nb
        if not pack:
            break  # the lightest hosts left do not fit anywhere: nor will heavier ones
        info.rounds += 1
        res = lns.round(victims, pack, left)
        if res is None:
            idle += 1
            continue
        info.statuses.append(res.status)
        if res.status.endswith("_WALL_LIMIT"):
            info.notes.append("CP-SAT consolidation hit the wall-clock limit: plan may vary")
        got = lns.accept(res, sorted(set(victims) | set(pack))) if res.where else None
        if got is None:
            idle += 1
            continue
        lns.apply(res, *got)
        info.kept += 1
        info.hosts_off += got[0]
        info.watts_saved += got[1]
        idle = 0
    if info.kept:
        info.notes.append(
            f"CP-SAT consolidation: {info.rounds} LNS rounds, {info.kept} kept, "
            f"{info.hosts_off} more host(s) switched off, {info.watts_saved:.0f} W saved"
        )
    return info
