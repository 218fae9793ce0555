"""make_plan: greedy, then CP-SAT, then hysteresis (planner/hysteresis.py), sequencing and
explanations.

What differs by mode (greedy passes, CP-SAT, bound, move order, reported value) comes from the
mode's objective (planner/objectives/); the moves' order is planner/ordering.py's."""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from rebalancerd.domain.load import imbalance
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
from rebalancerd.planner.greedy.context import Mandatory
from rebalancerd.planner.greedy.run import repolish, run_greedy
from rebalancerd.planner.greedy.target import has_targets, lower_bounds
from rebalancerd.planner.hysteresis import apply_hysteresis
from rebalancerd.planner.objectives.base import Objective
from rebalancerd.planner.objectives.registry import objective_for
from rebalancerd.planner.ordering import by_priority
from rebalancerd.planner.problem import Problem, build_problem
from rebalancerd.planner.sequence import Blocked, Hop, sequence
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy, policy_weights
from rebalancerd.policy.schema import Policy

RESEQUENCE_ROUNDS = 3
"""Times the hysteresis step runs again on what the sequencer could order, if it left moves out."""
MANDATORY_KINDS = frozenset(
    {ReasonKind.DRAIN, ReasonKind.EVACUATE, ReasonKind.RULE, ReasonKind.HOTSPOT}
)


def make_plan(
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    now: float,
    time_limit_s: float = 5.0,
    seed: int = 0,
    frozen: frozenset[str] = frozenset(),
    departed: Mapping[str, AbstractSet[str]] | None = None,
    max_moves: int | None = None,
    max_mib: int | None = None,
    applied: bool = False,
) -> MigrationPlan:
    """The plan for `snapshot` under `policy`. With applied=True the snapshot already has the
    policy applied (policy.resolve.apply_policy, e.g. once per daemon cycle) and is used as is;
    otherwise the policy is applied here, at time `now`. `departed`: VM -> hosts it may not
    go back to yet (the return guard; see `build_problem`)."""
    t0 = time.perf_counter()
    deadline = t0 + max(0.0, time_limit_s)
    snap = snapshot if applied else apply_policy(policy, snapshot, now)
    p = build_problem(
        snap, policy, frozen=frozen, departed=departed, max_moves=max_moves, max_mib=max_mib
    )
    objective = objective_for(p.mode)
    weights = policy_weights(policy)
    pct, win = policy.targets.prediction.percentile, policy.targets.prediction.window

    def demand(vm: Vm) -> int:
        return vm.cpu_demand_mc(percentile=pct, window=win)

    imb_before = imbalance(snap, None, weights, demand)
    ctx = run_greedy(p, deadline)
    s: State = ctx.s
    notes = list(p.notes) + ctx.notes
    planner = "greedy"
    status = "GREEDY"
    cp_bound: float | None = None
    # The opening descent leads the plan as it was made; drained VMs keep the host the greedy
    # phase gave them (a smaller CP-SAT model: on the maintenance benchmark snapshots the final
    # gaps came out lower, 8 hosts 0.031 -> 0.004, 32 hosts 0.047 -> 0.039, 128 hosts 0.039 ->
    # 0.031).
    kept = frozenset(ctx.opening) | {
        v for v, m in ctx.mandatory.items() if m.kind in (ReasonKind.DRAIN, ReasonKind.EVACUATE)
    }
    banded = has_targets(p)
    if (
        objective.uses_cpsat
        and not banded
        and p.max_moves > 0
        and time.perf_counter() < deadline - 0.05
    ):
        info = cpsat.improve(
            p, s, time_limit_s=time_limit_s, seed=seed, deadline=deadline, fixed=kept
        )
        if info.status != "SKIPPED":
            planner = "greedy+cp-sat"
            status = info.status
            if info.status in ("OPTIMAL", "FEASIBLE"):
                cp_bound = info.bound
        notes.extend(info.notes)
        if info.improved and objective.repolish_after_cpsat(p) and time.perf_counter() < deadline:
            notes.extend(repolish(ctx, kept))

    mandatory = {v: m for v, m in ctx.mandatory.items() if m.kind in MANDATORY_KINDS}
    # (consolidate applies it per emptied host; the target band its own, planner/greedy/target)
    if objective.whole_plan_hysteresis and not banded:
        s = apply_hysteresis(p, s, mandatory, notes, ctx.opening)

    moves = s.moves()
    if not moves:
        status = "NOTHING_TO_DO" if status in ("GREEDY", "LNS", "SKIPPED") else status
    steps, blocked = _sequence(p, s, objective, mandatory, ctx.opening)
    for _ in range(RESEQUENCE_ROUNDS if objective.whole_plan_hysteresis and not banded else 0):
        if not blocked:
            break
        # Moves the sequencer could not order are not made: what is left must pay for itself
        # too (else e.g. half of a swap is made, for a worse spread).
        reached = _reached(p, steps)
        paying = apply_hysteresis(p, reached, mandatory, notes, ctx.opening)
        if paying.where == reached.where:
            break
        steps, later = _sequence(p, paying, objective, mandatory, ctx.opening)
        seen = {b.vm for b in blocked}
        blocked = blocked + [b for b in later if b.vm not in seen]
    start = State(p)
    plan_steps, final = _explain(p, start, steps, mandatory, ctx.mandatory, objective)
    unsequenced = tuple(
        Unsequenced(p.vms[b.vm].name, p.hosts[b.source].name, p.hosts[b.target].name, b.why)
        for b in blocked
    )
    # One mapping built once (Placement.moved copies the whole map: O(moves x VMs)).
    placement = Placement({p.vms[v].name: p.hosts[h].name for v, h in enumerate(final.where)})
    imb_after = imbalance(snap, placement, weights, demand)
    value = objective.plan_value(p, final)
    target_stats: dict[str, int | float | bool | None] = {}
    if banded:
        lb_moves, lb_mib, met = lower_bounds(p, start, final)
        optional = sum(1 for v, _, _ in final.moves() if v not in mandatory)
        target_stats = {
            "moves_lower_bound": lb_moves,
            "moves_ratio": round(optional / lb_moves, 4) if lb_moves else None,
            "mib_lower_bound": lb_mib,
            "band_met": met,
        }
    over = sum(1 for h in range(p.n_hosts) if start.cfg[h] > p.cap_cfg[h])
    bound = objective.bound(p, cp_bound)
    stats = PlanStats(
        planner=planner,
        status=status,
        objective=round(value, 6),
        bound=None if bound is None else round(bound, 6),
        wall_s=round(time.perf_counter() - t0, 4),
        imbalance_before=round(imb_before, 6),
        imbalance_after=round(imb_after, 6),
        mode=p.mode.value,
        policy=p.policy_name,
        notes=tuple(notes),
        overcommit_hosts=over,
        **target_stats,  # type: ignore[arg-type]
    )
    return MigrationPlan(steps=tuple(plan_steps), stats=stats, unsequenced=unsequenced)


def _sequence(
    p: Problem,
    s: State,
    objective: Objective,
    mandatory: dict[int, Mandatory],
    opening: list[int],
) -> tuple[list[list[Hop]], list[Blocked]]:
    """The moves from the origin to `s` in safe steps, and the moves that could not be ordered."""
    dest = {v: h for v, _, h in s.moves()}
    order, strict = objective.order_moves(p, by_priority(p, s, mandatory), dest, mandatory, opening)
    return sequence(p, dest, order, budget_moves=p.max_moves, budget_mib=p.max_mib, strict=strict)


def _reached(p: Problem, steps: list[list[Hop]]) -> State:
    """The placement once every sequenced hop is made."""
    s = State(p)
    for step in steps:
        for hop in step:
            s.move(hop.vm, hop.target)
    return s


class _StepScore:
    """The score before and after each migration of the plan: imbalance (weighted load max - min
    over active hosts) or, for objectives scored by power, the cluster's power draw."""

    def __init__(self, p: Problem, s: State, power_mode: bool) -> None:
        self.p = p
        self.s = s
        self.power_mode = power_mode
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
    objective: Objective,
) -> tuple[list[PlanStep], State]:
    cur = start.copy()
    score = _StepScore(p, cur, objective.steps_scored_by_power)
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
            reason = _reason(
                p, v, a, b, hp, mandatory, recorded, load0, wc, wm, final_empty, objective
            )
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
    objective: Objective,
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
    if objective.energy_reasons and src in final_empty:
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
