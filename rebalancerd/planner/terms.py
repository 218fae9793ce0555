"""CP-SAT model of a neighbourhood, one small class per constraint or objective term.

A `Sub` holds the model: the VMs it may move, the hosts they may go to, one boolean x[v, h] per
allowed pair (pins, CPU compatibility and receiving hosts are applied when the variables are
created), and the load of everything outside the neighbourhood as constants. Loads are integers
(millicores, MiB); normalised loads are scaled by SCALE. Each term's `add(sub)` adds its
constraints and returns its objective expression (or None), so every term can be tested alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

from ortools.sat.python import cp_model

from rebalancerd.planner import objective as obj
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.seed import solver_seed
from rebalancerd.planner.state import State

SCALE = 10_000
"""Normalised load 1.0 == SCALE."""


@dataclass(slots=True)
class Sub:
    p: Problem
    state: State
    """Current placement: VMs outside `vms` stay where this says."""
    vms: list[int]
    hosts: list[int]
    model: cp_model.CpModel = field(default_factory=cp_model.CpModel)
    x: dict[tuple[int, int], Any] = field(default_factory=dict)
    base_cpu: dict[int, int] = field(default_factory=dict)
    base_mem: dict[int, int] = field(default_factory=dict)
    moved: dict[int, Any] = field(default_factory=dict)
    """VM -> expression that is 1 when the VM is away from its origin host."""
    on: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p, s = self.p, self.state
        vset = set(self.vms)
        for h in self.hosts:
            self.base_cpu[h] = s.cpu[h] - sum(p.cpu[v] for v in s.on[h] if v in vset)
            self.base_mem[h] = s.mem[h] - sum(p.mem[v] for v in s.on[h] if v in vset)
        for v in self.vms:
            for h in self.hosts:
                # Pins, CPU compatibility, receiving hosts; a host being emptied is not offered.
                if p.may_host(v, h):
                    self.x[(v, h)] = self.model.new_bool_var(f"x{v}_{h}")
            o = p.origin[v]
            if (v, o) in self.x:
                self.moved[v] = 1 - self.x[(v, o)]
            else:
                self.moved[v] = 1

    def xs_of(self, v: int) -> list[Any]:
        return [self.x[(v, h)] for h in self.hosts if (v, h) in self.x]

    def xs_on(self, h: int) -> list[tuple[int, Any]]:
        return [(v, self.x[(v, h)]) for v in self.vms if (v, h) in self.x]

    def hint_current(self) -> None:
        for (v, h), var in self.x.items():
            self.model.add_hint(var, 1 if self.state.where[v] == h else 0)


class Term(Protocol):
    def add(self, sub: Sub) -> Any | None: ...


class AssignOnce:
    """Every VM of the neighbourhood runs on exactly one host."""

    def add(self, sub: Sub) -> None:
        for v in sub.vms:
            xs = sub.xs_of(v)
            if not xs:
                sub.model.add_bool_or([])  # no allowed host: infeasible
            else:
                sub.model.add_exactly_one(xs)


class Capacity:
    """CPU and memory demand within capacity with headroom (never worse than now on a host that
    already exceeds it, so the current placement stays feasible)."""

    def add(self, sub: Sub) -> None:
        p, s = sub.p, sub.state
        for h in sub.hosts:
            on = sub.xs_on(h)
            if not on:
                continue
            cap_c = max(p.cap_cpu[h], s.cpu[h])
            cap_m = max(p.cap_mem[h], s.mem[h])
            sub.model.add(sum(p.cpu[v] * x for v, x in on) <= cap_c - sub.base_cpu[h])
            sub.model.add(sum(p.mem[v] * x for v, x in on) <= cap_m - sub.base_mem[h])


class AntiAffinity:
    """Hard anti-affinity: at most one member of a group per host."""

    def add(self, sub: Sub) -> None:
        p, s = sub.p, sub.state
        vset = set(sub.vms)
        for g in p.groups:
            if not (g.anti and g.hard):
                continue
            inside = [v for v in g.vms if v in vset]
            if not inside:
                continue
            for h in sub.hosts:
                xs = [sub.x[(v, h)] for v in inside if (v, h) in sub.x]
                if not xs:
                    continue
                fixed = sum(1 for v in g.vms if v not in vset and s.where[v] == h)
                now = sum(1 for v in g.vms if s.where[v] == h)
                sub.model.add(sum(xs) <= max(1, now) - fixed)


class Affinity:
    """Hard affinity: members of a group share one host (a member outside the neighbourhood
    anchors the others to its host)."""

    def add(self, sub: Sub) -> None:
        p, s = sub.p, sub.state
        vset = set(sub.vms)
        for g in p.groups:
            if g.anti or not g.hard:
                continue
            inside = [v for v in g.vms if v in vset]
            if not inside:
                continue
            anchors = {s.where[v] for v in g.vms if v not in vset}
            if len(anchors) > 1:
                continue  # already split outside this neighbourhood: nothing to enforce here
            for h in sub.hosts:
                xs = [sub.x.get((v, h)) for v in inside]
                if anchors:
                    val = 1 if h in anchors else 0
                    for x in xs:
                        if x is not None:
                            sub.model.add(x == val)
                        elif val:
                            sub.model.add_bool_or([])
                else:
                    present = [x for x in xs if x is not None]
                    if len(present) < len(xs):
                        for x in present:
                            sub.model.add(x == 0)
                    else:
                        for a, b in itertools.pairwise(present):
                            sub.model.add(a == b)
            if anchors and not (anchors & set(sub.hosts)):
                sub.model.add_bool_or([])


class MoveBudget:
    """Moves (relative to the snapshot) and MiB moved within the cycle's budget."""

    def add(self, sub: Sub) -> None:
        p, s = sub.p, sub.state
        vset = set(sub.vms)
        outside = [v for v, o, _ in s.moves() if v not in vset]
        left = p.max_moves - len(outside)
        sub.model.add(sum(sub.moved[v] for v in sub.vms) <= left)
        if p.max_mib is not None:
            left_mib = p.max_mib - sum(p.move_mib[v] for v in outside)
            sub.model.add(sum(p.move_mib[v] * sub.moved[v] for v in sub.vms) <= left_mib)


class Spread:
    """Balance objective: weighted (max - min) normalised CPU and memory load. Hosts outside the
    neighbourhood enter as constants so the model only pays for the global extremes."""

    def add(self, sub: Sub) -> Any:
        p, s, m = sub.p, sub.state, sub.model
        wc, wm = obj.weights(p)
        scale_w = 100.0 / (wc + wm)
        hs = [h for h in sub.hosts if p.receive[h] and p.empty_reason[h] is None]
        hset = set(hs)
        outside = [h for h in obj.balancing(p) if h not in hset]
        terms = []
        for res, w in (("cpu", wc), ("mem", wm)):
            if w <= 0 or not hs:
                continue
            raw = p.raw_cpu if res == "cpu" else p.raw_mem
            size = p.cpu if res == "cpu" else p.mem
            base = sub.base_cpu if res == "cpu" else sub.base_mem
            load_now = s.cpu if res == "cpu" else s.mem
            top = int(max(load_now[h] * SCALE // raw[h] for h in obj.balancing(p))) + SCALE
            hi = m.new_int_var(0, 4 * SCALE + top, f"max_{res}")
            lo = m.new_int_var(0, 4 * SCALE + top, f"min_{res}")
            for h in hs:
                load = base[h] + sum(size[v] * x for v, x in sub.xs_on(h))
                m.add(hi * raw[h] >= SCALE * load)
                m.add(lo * raw[h] <= SCALE * load)
            if outside:
                m.add(hi >= max(-(-load_now[h] * SCALE // raw[h]) for h in outside))
                m.add(lo <= min(load_now[h] * SCALE // raw[h] for h in outside))
            every = hs + outside
            m.add_hint(hi, max(-(-load_now[h] * SCALE // raw[h]) for h in every))
            m.add_hint(lo, min(load_now[h] * SCALE // raw[h] for h in every))
            terms.append(round(w * scale_w) * (hi - lo))
        return sum(terms) if terms else None


class MigrationCost:
    """Cost of each move (memory, local disk, dirty rate), in the same units as Spread."""

    def add(self, sub: Sub) -> Any:
        p = sub.p
        mm = obj.mean_host_mem(p)
        return sum(round(100 * SCALE * obj.move_cost(p, v, mm)) * sub.moved[v] for v in sub.vms)


class SoftRules:
    """Soft anti-affinity / affinity / pins: a weighted penalty per broken pair or pin."""

    PENALTY = 100 * SCALE // 20
    """One broken soft rule of weight 1 is worth 0.05 of spread."""

    def add(self, sub: Sub) -> Any | None:
        p, s, m = sub.p, sub.state, sub.model
        vset = set(sub.vms)
        terms: list[Any] = []
        for g in p.groups:
            if g.hard:
                continue
            inside = [v for v in g.vms if v in vset]
            if not inside:
                continue
            w = round(self.PENALTY * g.weight)
            for h in sub.hosts:
                xs = [sub.x[(v, h)] for v in inside if (v, h) in sub.x]
                if not xs:
                    continue
                fixed = sum(1 for v in g.vms if v not in vset and s.where[v] == h)
                if g.anti:
                    extra = m.new_int_var(0, len(g.vms), f"soft_aa_{g.name}_{h}")
                    m.add(extra >= sum(xs) + fixed - 1)
                    terms.append(w * extra)
                else:
                    # affinity: penalise every member not on the group's most popular host
                    # (approximation: penalise hosts holding some but not all members).
                    some = m.new_bool_var(f"soft_af_{g.name}_{h}")
                    m.add_max_equality(some, xs)
                    terms.append(w * some)
            if not g.anti:
                terms.append(-w)  # one host always holds members
        for v, hosts, weight, _name in p.soft_pins:
            if v not in vset:
                continue
            ok = [sub.x[(v, h)] for h in hosts if (v, h) in sub.x]
            terms.append(round(self.PENALTY * weight) * (1 - sum(ok)))
        return sum(terms) if terms else None


class Power:
    """Consolidate objective: watts of powered-on hosts (idle when any VM runs + a linear share of
    the curve's dynamic range by CPU load), hosts without VMs draw 0 W."""

    def add(self, sub: Sub) -> Any:
        p, m = sub.p, sub.model
        vset = set(sub.vms)
        terms: list[Any] = []
        for h in sub.hosts:
            on = sub.xs_on(h)
            c = obj.curve(p, h)
            idle = round(c.idle * 100)
            slope = (c.peak - c.idle) * 100 / p.raw_cpu[h]
            fixed = any(v not in vset for v in sub.state.on[h])
            if fixed:
                sub.on[h] = 1
                terms.append(idle)
            elif on:
                y = m.new_bool_var(f"on_{h}")
                for _, x in on:
                    m.add_implication(x, y)
                m.add_bool_or([x for _, x in on]).only_enforce_if(y)
                sub.on[h] = y
                terms.append(idle * y)
            else:
                sub.on[h] = 0
            if on:
                terms.append(sum(round(slope * p.cpu[v]) * x for v, x in on))
        return sum(terms)


class MinActiveHosts:
    """Consolidate: keep at least energy.min_active_hosts hosts powered on and spare capacity."""

    def add(self, sub: Sub) -> None:
        p, s, m = sub.p, sub.state, sub.model
        if not sub.on:
            Power().add(sub)
        hset = set(sub.hosts)
        outside_on = sum(1 for h in range(p.n_hosts) if h not in hset and s.on[h])
        m.add(sum(sub.on[h] for h in sub.hosts) + outside_on >= p.min_active_hosts)
        if p.spare_capacity > 0:
            keep = 1.0 - p.spare_capacity
            tot_c = sum(s.cpu)
            tot_m = sum(s.mem)
            out_c = sum(p.cap_cpu[h] for h in range(p.n_hosts) if h not in hset and s.on[h])
            out_m = sum(p.cap_mem[h] for h in range(p.n_hosts) if h not in hset and s.on[h])
            m.add(
                sum(int(p.cap_cpu[h] * keep) * sub.on[h] for h in sub.hosts) + int(out_c * keep)
                >= tot_c
            )
            m.add(
                sum(int(p.cap_mem[h] * keep) * sub.on[h] for h in sub.hosts) + int(out_m * keep)
                >= tot_m
            )


HARD_TERMS: tuple[type, ...] = (AssignOnce, Capacity, AntiAffinity, Affinity, MoveBudget)


@dataclass(slots=True)
class SolveResult:
    status: str
    objective: float | None
    bound: float | None
    where: dict[int, int]
    """New host per neighbourhood VM (empty when no solution)."""


def solve(
    sub: Sub,
    objective_terms: list[Any],
    *,
    seed: int,
    det_time: float,
    wall_time: float,
    hint: bool = True,
) -> SolveResult:
    objs = [t for t in objective_terms if t is not None]
    if objs:
        sub.model.minimize(sum(objs))
    if hint:
        sub.hint_current()
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.num_workers = 1
    prm.random_seed = solver_seed(seed)
    prm.max_deterministic_time = max(0.01, det_time)
    prm.max_time_in_seconds = max(0.01, wall_time)
    prm.log_search_progress = False
    prm.cp_model_probing_level = 0
    code = solver.solve(sub.model)
    name = solver.status_name(code)
    if solver.wall_time >= 0.98 * prm.max_time_in_seconds:
        name += "_WALL_LIMIT"  # the safety net fired: the answer may differ between runs
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolveResult(name, None, None, {})
    where: dict[int, int] = {}
    for (v, h), x in sub.x.items():
        if solver.boolean_value(x):
            where[v] = h
    ov = solver.objective_value if objs else None
    bd = solver.best_objective_bound if objs else None
    return SolveResult(name, ov, bd, where)
