"""make_plan: greedy, then CP-SAT, then hysteresis, sequencing and explanations."""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Sequence

from rebalancerd.domain.load import Weights, imbalance
from rebalancerd.domain.model import ClusterSnapshot, Placement, Vm
from rebalancerd.domain.plan import (
    Migration,
    MigrationPlan,
    PlanStats,
    PlanStep,
    Reason,
    ReasonKind,
    Unsequenced,
)
from rebalancerd.planner import cpsat
from rebalancerd.planner import objective as obj
from rebalancerd.planner.consolidate import interleave_targets
from rebalancerd.planner.greedy import Mandatory, has_soft_rules, locked, repolish, run_greedy
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.sequence import Hop, sequence
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Mode, Policy

MANDATORY_KINDS = frozenset(
    {ReasonKind.DRAIN, ReasonKind.EVACUATE, ReasonKind.RULE, ReasonKind.HOTSPOT}
)
_PRIORITY = {
    ReasonKind.DRAIN: 0,
    ReasonKind.EVACUATE: 0,
    ReasonKind.RULE: 1,
    ReasonKind.HOTSPOT: 2,
}


def make_plan(
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    now: float,
    time_limit_s: float = 5.0,
    seed: int = 0,
    frozen: frozenset[str] = frozenset(),
    max_moves: int | None = None,
    max_mib: int | None = None,
    applied: bool = False,
) -> MigrationPlan:
    """`applied=True`: `snapshot` already has the policy applied (the control loop did it)."""
    t0 = time.perf_counter()
    deadline = t0 + max(0.0, time_limit_s)
    snap = snapshot if applied else apply_policy(policy, snapshot, now)
    p = build_problem(snap, policy, frozen=frozen, max_moves=max_moves, max_mib=max_mib)
    weights = Weights(*obj.weights(p))
    pct, win = policy.targets.prediction.percentile, policy.targets.prediction.window

    def demand(vm: Vm) -> int:
        return vm.cpu_demand_mc(percentile=pct, window=win)

    imb_before = imbalance(snap, None, weights, demand)
    ctx = run_greedy(p, deadline)
    s: State = ctx.s
    notes = list(p.notes) + ctx.notes
    planner = "greedy"
    status = "GREEDY"
    bound: float | None = None
    # consolidate: whole-host greedy only (planner/consolidate.py); CP-SAT's partial moves
    # would save little and fill hosts past the packing band
    skip_cp = p.mode in (Mode.DRAIN, Mode.CONSOLIDATE)
    # The opening descent leads the plan as it was made; drained VMs keep the host the greedy
    # phase gave them (a smaller CP-SAT model: on the maintenance benchmark snapshots the final
    # gaps came out lower, 8 hosts 0.031 -> 0.004, 32 hosts 0.047 -> 0.039, 128 hosts 0.039 ->
    # 0.031).
    kept = ctx.opening + [
        v
        for v, m in ctx.mandatory.items()
        if m.kind in (ReasonKind.DRAIN, ReasonKind.EVACUATE) and v not in ctx.opening
    ]
    if not skip_cp and p.max_moves > 0 and time.perf_counter() < deadline - 0.05:
        with locked(p, kept):
            info = cpsat.improve(p, s, time_limit_s=time_limit_s, seed=seed, deadline=deadline)
        if info.status != "SKIPPED":
            planner = "greedy+cp-sat"
            status = info.status
            if info.status in ("OPTIMAL", "FEASIBLE") and p.mode is not Mode.CONSOLIDATE:
                bound = info.bound
        notes.extend(info.notes)
        # The polish only evens the gap and is blind to soft rules: where there are some,
        # CP-SAT's answer (which weighs them) stands.
        if (
            info.improved
            and p.mode in (Mode.BALANCE, Mode.ADVISORY)
            and not has_soft_rules(p)
            and time.perf_counter() < deadline
        ):
            with locked(p, kept):
                notes.extend(repolish(ctx))

    mandatory = {v: m for v, m in ctx.mandatory.items() if m.kind in MANDATORY_KINDS}
    s = _hysteresis(p, s, mandatory, notes)

    moves = s.moves()
    if not moves:
        status = "NOTHING_TO_DO" if status in ("GREEDY", "LNS", "SKIPPED") else status
    start = State(p)
    # Within a priority, the moves that touch the most extreme hosts go first, so a plan cut
    # short (budget, next cycle) has already done the most useful part.
    ext = _extremeness(p, start)
    order = sorted(
        (v for v, _, _ in moves),
        key=lambda v: (
            _PRIORITY.get(mandatory[v].kind, 3) if v in mandatory else 3,
            -max(ext[p.origin[v]], ext[s.where[v]]),
            min(p.groups[p.aff_of[v]].vms) if v in p.aff_of else v,  # affinity mates adjacent
            v,
        ),
    )
    dest = {v: h for v, _, h in moves}
    strict: frozenset[int] = frozenset()
    if p.mode in (Mode.BALANCE, Mode.ADVISORY):
        opening = [v for v in ctx.opening if v in dest]
        order = _descent_order(p, order, dest, mandatory, opening)
        strict = frozenset(opening)
    elif p.mode is Mode.CONSOLIDATE:
        order = interleave_targets(
            order, dest, lambda v: _PRIORITY.get(mandatory[v].kind, 3) if v in mandatory else 3
        )
    steps, blocked = sequence(
        p, dest, order, budget_moves=p.max_moves, budget_mib=p.max_mib, strict=strict
    )
    plan_steps, final = _explain(p, start, steps, mandatory, ctx.mandatory)
    unsequenced = tuple(
        Unsequenced(p.vms[b.vm].name, p.hosts[b.source].name, p.hosts[b.target].name, b.why)
        for b in blocked
    )
    # One mapping built once (Placement.moved copies the whole map: O(moves x VMs)).
    placement = Placement({p.vms[v].name: p.hosts[h].name for v, h in enumerate(final.where)})
    imb_after = imbalance(snap, placement, weights, demand)
    objective = obj.power(p, final) if p.mode is Mode.CONSOLIDATE else cpsat.balance_score(p, final)
    if bound is None and p.mode is not Mode.CONSOLIDATE:
        bound = obj.spread_lower_bound(p)
    stats = PlanStats(
        planner=planner,
        status=status,
        objective=round(objective, 6),
        bound=None if bound is None else round(bound, 6),
        wall_s=round(time.perf_counter() - t0, 4),
        imbalance_before=round(imb_before, 6),
        imbalance_after=round(imb_after, 6),
        mode=p.mode.value,
        policy=p.policy_name,
        notes=tuple(notes),
    )
    return MigrationPlan(steps=tuple(plan_steps), stats=stats, unsequenced=unsequenced)


def _descent_order(
    p: Problem,
    order: list[int],
    dest: dict[int, int],
    mandatory: dict[int, Mandatory],
    opening: Sequence[int] = (),
) -> list[int]:
    """Order the balance and capacity-relief moves as a steepest descent on the spread:
    replaying from the current placement (after drains and rule fixes), always serve the host
    furthest from the mean (weighted CPU or memory, either side) with the one of its planned
    moves that pulls it in the most (the biggest effective VM first), among moves whose target
    has room right now.
    So every prefix of the plan has already cut the gap as far as it can: a plan cut short
    (budget, next cycle, operator) keeps its most useful part.
    The opening descent's moves (greedy.opening) come right after drains and rule fixes, in
    the order they were made."""
    lead = set(opening)

    def first(v: int) -> bool:  # drains and rule fixes keep their place at the head
        return v in mandatory and mandatory[v].kind is not ReasonKind.HOTSPOT

    head = [v for v in order if first(v) and v not in lead]
    head += [v for v in opening if v not in head]
    order = [v for v in order if v not in lead]
    optional = [v for v in order if not first(v) and v not in p.aff_of]
    if len(optional) < 2:
        return head + [v for v in order if not first(v)]
    hs = obj.balancing(p)
    hset = set(hs)
    if len(hs) < 2:
        return head + [v for v in order if not first(v)]
    cur = State(p)
    for v in head:
        cur.move(v, dest[v])
    wc, wm = obj.weights(p)
    wc, wm = wc / max(wc, wm), wm / max(wc, wm)
    final = cur.copy()
    for v in optional:
        final.move(v, dest[v])
    mc = sum(final.cpu[h] for h in hs) / sum(p.raw_cpu[h] for h in hs)
    mm = sum(final.mem[h] for h in hs) / sum(p.raw_mem[h] for h in hs)

    def dev(h: int, dc: int = 0, dm: int = 0) -> tuple[float, float]:
        return (
            wc * ((cur.cpu[h] + dc) / p.raw_cpu[h] - mc),
            wm * ((cur.mem[h] + dm) / p.raw_mem[h] - mm),
        )

    def key(h: int, dc: int = 0, dm: int = 0) -> float:
        c, m = dev(h, dc, dm)
        return max(abs(c), abs(m))

    out_of: dict[int, list[int]] = {}
    into: dict[int, list[int]] = {}
    for v in optional:
        out_of.setdefault(p.origin[v], []).append(v)
        into.setdefault(dest[v], []).append(v)
    ver = dict.fromkeys(hs, 0)
    heap = [(-key(h), h, 0) for h in hs]
    heapq.heapify(heap)
    placed: set[int] = set()
    out: list[int] = []
    while heap:
        k, h, ver_h = heapq.heappop(heap)
        if ver_h != ver[h]:
            continue
        c, m = dev(h)
        hot = (c if abs(c) >= abs(m) else m) > 0
        best: tuple[float, int, int] | None = None  # (key after, -size, vm)
        for v in out_of.get(h, []) if hot else into.get(h, []):
            if v in placed or not cur.fits(v, dest[v]):
                continue
            sign = -1 if hot else 1
            after = key(h, sign * p.cpu[v], sign * p.mem[v])
            cand = (after, -(p.cpu[v] + p.mem[v]), v)
            if best is None or cand < best:
                best = cand
        if best is None or best[0] >= -k:
            continue  # nothing here pulls the host in now
        v = best[2]
        a, b = cur.where[v], dest[v]
        cur.move(v, b)
        placed.add(v)
        out.append(v)
        for x in (a, b):
            if x in hset:
                ver[x] += 1
                heapq.heappush(heap, (-key(x), x, ver[x]))
    rest = [v for v in order if not first(v) and v not in placed]
    mates = [v for v in rest if v in p.aff_of]  # affinity units stay together, at the end
    rest = _least_damage([v for v in rest if v not in p.aff_of], p, cur, dest, hs, wc, wm)
    return head + out + rest + mates


LEAST_DAMAGE_MAX = 400
"""Most moves _least_damage orders (it is quadratic: ~0.3 s at this size)."""


def _least_damage(
    rest: list[int],
    p: Problem,
    cur: State,
    dest: dict[int, int],
    hs: list[int],
    wc: float,
    wm: float,
) -> list[int]:
    """Order the moves the descent left (none of them pulls a host in on its own: swap halves,
    chains where a host sends a big VM and takes another) so the gap stays low between them:
    always the move after which the worse weighted gap (then the sum of both) is smallest,
    among those whose target has room now. A host that sends a big VM gets its replacement
    next, instead of standing half empty until the end of the plan. Quadratic in len(rest),
    which stays small (175 of 5,523 moves at 2,000 hosts); above LEAST_DAMAGE_MAX moves the order
    is kept (the sequencer still makes every step safe)."""
    if len(rest) < 2 or len(rest) > LEAST_DAMAGE_MAX:
        return rest
    hset = set(hs)
    res = ((cur.cpu, p.raw_cpu, wc, p.cpu), (cur.mem, p.raw_mem, wm, p.mem))
    val = [{h: w * load[h] / raw[h] for h in hs} for load, raw, w, _ in res]
    srt = [sorted((x, h) for h, x in val[i].items()) for i in range(2)]

    def after(v: int) -> tuple[float, float]:
        a, b = cur.where[v], dest[v]
        gs = []
        for i, (_load, raw, w, size) in enumerate(res):
            d = w * size[v]
            new = [val[i][h] + (d if h == b else -d) / raw[h] for h in (a, b) if h in hset]
            hi = next((x for x, h in reversed(srt[i]) if h != a and h != b), None)
            lo = next((x for x, h in srt[i] if h != a and h != b), None)
            both = new + [x for x in (hi, lo) if x is not None]
            gs.append(max(both) - min(both) if both else 0.0)
        return max(gs), gs[0] + gs[1]

    left = list(rest)
    out: list[int] = []
    while left:
        fits = [v for v in left if cur.fits(v, dest[v])]
        if not fits:
            return out + left  # the sequencer finds the order that makes room
        v = min(fits, key=lambda v: (*after(v), v))
        a, b = cur.where[v], dest[v]
        cur.move(v, b)
        for i, (load, raw, w, _) in enumerate(res):
            for h in (a, b):
                if h in hset:
                    srt[i].pop(bisect.bisect_left(srt[i], (val[i][h], h)))
                    val[i][h] = w * load[h] / raw[h]
                    bisect.insort(srt[i], (val[i][h], h))
        left.remove(v)
        out.append(v)
    return out


def _extremeness(p: Problem, s: State) -> list[float]:
    """Per host: how far its CPU or memory load is from the cluster mean (either side)."""
    hs = obj.balancing(p) or list(range(p.n_hosts))
    mc = sum(s.cpu[h] for h in hs) / max(1, sum(p.raw_cpu[h] for h in hs))
    mm = sum(s.mem[h] for h in hs) / max(1, sum(p.raw_mem[h] for h in hs))
    return [
        max(abs(s.cpu[h] / p.raw_cpu[h] - mc), abs(s.mem[h] / p.raw_mem[h] - mm))
        for h in range(p.n_hosts)
    ]


def _hysteresis(p: Problem, s: State, mandatory: dict[int, Mandatory], notes: list[str]) -> State:
    """Drop the optional moves when they improve the objective by less than the hysteresis."""
    optional = [v for v, _, _ in s.moves() if v not in mandatory]
    if not optional or p.mode is Mode.CONSOLIDATE:
        return s  # consolidate applies it per emptied host (planner/consolidate.py)
    base_where = list(p.origin)
    for v, m in mandatory.items():
        _ = m
        base_where[v] = s.where[v]
    base = State(p, base_where)
    if any(base.over_capacity(h) and not State(p).over_capacity(h) for h in range(p.n_hosts)):
        return s  # the mandatory moves need room the optional ones make
    gain = obj.spread(p, base) - obj.spread(p, s)
    what = "spread"
    if gain < p.hysteresis:
        notes.append(
            f"{len(optional)} optional moves improve {what} by {gain:.3f} < hysteresis "
            f"{p.hysteresis:.3f}: not moving"
        )
        return base
    return s


class _Score:
    """Objective after each migration: imbalance (weighted load max - min over active hosts) or
    cluster power (consolidate)."""

    def __init__(self, p: Problem, s: State) -> None:
        self.p = p
        self.s = s
        self.power_mode = p.mode is Mode.CONSOLIDATE
        wc, wm = obj.weights(p)
        self.wc, self.wm = wc / (wc + wm), wm / (wc + wm)
        self.hosts = set(h for h in range(p.n_hosts) if p.receive[h])
        self.val = {h: self._w(h) for h in self.hosts}
        self.sorted = sorted(self.val.values())
        self.watts = obj.power(p, s)

    def _w(self, h: int) -> float:
        p, s = self.p, self.s
        return self.wc * s.cpu[h] / p.raw_cpu[h] + self.wm * s.mem[h] / p.raw_mem[h]

    def value(self) -> float:
        if self.power_mode:
            return self.watts
        if len(self.sorted) < 2:
            return 0.0
        return self.sorted[-1] - self.sorted[0]

    def move(self, v: int, h: int) -> None:
        a = self.s.where[v]
        pa = obj.host_power(self.p, self.s, a) + obj.host_power(self.p, self.s, h)
        self.s.move(v, h)
        self.watts += obj.host_power(self.p, self.s, a) + obj.host_power(self.p, self.s, h) - pa
        for x in (a, h):
            if x in self.hosts:
                old = self.val[x]
                i = bisect.bisect_left(self.sorted, old)
                self.sorted.pop(i)
                new = self._w(x)
                self.val[x] = new
                bisect.insort(self.sorted, new)


def _explain(
    p: Problem,
    start: State,
    steps: list[list[Hop]],
    mandatory: dict[int, Mandatory],
    recorded: dict[int, Mandatory],
) -> tuple[list[PlanStep], State]:
    cur = start.copy()
    score = _Score(p, cur)
    wc, wm = score.wc, score.wm
    load0 = {
        h: (start.cpu[h] / p.raw_cpu[h], start.mem[h] / p.raw_mem[h]) for h in range(p.n_hosts)
    }
    final_empty: set[int] = set()
    # Hosts that end empty (for energy reasons): compute on the final placement.
    end = start.copy()
    for step in steps:
        for hp in step:
            end.move(hp.vm, hp.target)
    for h in range(p.n_hosts):
        if start.on[h] and not end.on[h]:
            final_empty.add(h)
    out: list[PlanStep] = []
    for step in steps:
        migs: list[Migration] = []
        for hp in step:
            v, a, b = hp.vm, hp.source, hp.target
            reason = _reason(p, v, a, b, hp, mandatory, recorded, load0, wc, wm, final_empty)
            before = score.value()
            score.move(v, b)
            after = score.value()
            migs.append(
                Migration(
                    vm=p.vms[v].name,
                    source=p.hosts[a].name,
                    target=p.hosts[b].name,
                    reason=reason,
                    memory_mib=p.move_mib[v],
                    score_before=round(before, 6),
                    score_after=round(after, 6),
                )
            )
        out.append(PlanStep(tuple(migs)))
    return out, cur


def _reason(
    p: Problem,
    v: int,
    a: int,
    b: int,
    hp: Hop,
    mandatory: dict[int, Mandatory],
    recorded: dict[int, Mandatory],
    load0: dict[int, tuple[float, float]],
    wc: float,
    wm: float,
    final_empty: set[int],
) -> Reason:
    if hp.temporary and hp.final_target is not None:
        return Reason(
            ReasonKind.TEMPORARY,
            f"park on {p.hosts[b].name} to break a cycle; "
            f"final target {p.hosts[hp.final_target].name}",
        )
    src = p.origin[v]
    kind = p.empty_reason[src]
    if kind is not None:
        what = "in maintenance" if kind is ReasonKind.DRAIN else "degraded"
        return Reason(kind, f"host {p.hosts[src].name} {what}")
    m = mandatory.get(v)
    if m is not None:
        return Reason(m.kind, m.detail, m.rule)
    c, mem = load0[src]
    w = wc * c + wm * mem
    if p.mode is Mode.CONSOLIDATE and src in final_empty:
        rec = recorded.get(v)
        detail = (
            rec.detail
            if rec is not None and rec.kind is ReasonKind.ENERGY
            else (f"empty {p.hosts[src].name} so it can be switched off")
        )
        return Reason(ReasonKind.ENERGY, detail)
    if w > p.high:
        res, val = ("cpu", c) if c >= mem else ("mem", mem)
        return Reason(
            ReasonKind.HOTSPOT,
            f"host {p.hosts[src].name} load {w:.2f} ({res} {val:.2f}) "
            f"> high watermark {p.high:.2f}",
        )
    cb, mb = load0.get(b, (0.0, 0.0))
    return Reason(
        ReasonKind.BALANCE,
        f"host {p.hosts[src].name} cpu {c:.2f} mem {mem:.2f} -> "
        f"{p.hosts[b].name} cpu {cb:.2f} mem {mb:.2f}",
    )
