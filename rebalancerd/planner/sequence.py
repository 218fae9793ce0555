"""Turn a target placement into ordered steps that are safe after every single migration.

A step holds migrations that may run concurrently, within max_concurrent / max_per_source /
max_per_target. A migration enters a step only if its target has room for it on top of
everything already there *and* everything else arriving in the same step (VMs leaving in the
same step are not counted as gone), and no member of its hard anti-affinity groups is there or
arriving: so any order of completion inside a step keeps capacity and hard rules.
When nothing can move (a cycle: A waits for B's room, B for A's), one VM hops through a third
host with room (a TEMPORARY migration) if the budget allows; moves that still cannot be ordered
are returned as unsequenced, with why.
"""

from __future__ import annotations

from dataclasses import dataclass

from rebalancerd.domain.rules import configured_fits
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.state import State

LOOKAHEAD = 1.0
"""How far (in multiples of max_concurrent) a step may reach down the pending order."""


@dataclass(frozen=True, slots=True)
class Hop:
    vm: int
    source: int
    target: int
    temporary: bool = False
    final_target: int | None = None


@dataclass(frozen=True, slots=True)
class Blocked:
    vm: int
    source: int
    target: int
    why: str


def _fits(
    p: Problem,
    cur: State,
    v: int,
    b: int,
    inc_c: dict[int, int],
    inc_m: dict[int, int],
    inc_g: dict[int, int] | None = None,
) -> bool:
    return (
        cur.cpu[b] + inc_c.get(b, 0) + p.cpu[v] <= p.cap_cpu[b]
        and cur.mem[b] + inc_m.get(b, 0) + p.mem[v] <= p.cap_mem[b]
        and configured_fits(cur.cfg[b] + (inc_g or {}).get(b, 0), p.cfg[v], p.cap_cfg[b])
    )


def _anti_free(p: Problem, cur: State, v: int, b: int, inc_a: dict[tuple[int, int], int]) -> bool:
    for g in p.anti_of.get(v, ()):
        if cur.anti_count.get((g, b), 0) + inc_a.get((g, b), 0) > 0:
            return False
    return True


def _why(p: Problem, cur: State, v: int, b: int) -> str:
    if not p.may_host(v, b):
        return f"target {p.hosts[b].name} may not receive this VM"
    need_c = cur.cpu[b] + p.cpu[v] - p.cap_cpu[b]
    need_m = max(cur.mem[b] + p.mem[v] - p.cap_mem[b], cur.cfg[b] + p.cfg[v] - p.cap_cfg[b])
    if need_m > 0 or need_c > 0:
        parts = []
        if need_m > 0:
            parts.append(f"{need_m} MiB")
        if need_c > 0:
            parts.append(f"{need_c} mc CPU")
        return (
            f"target {p.hosts[b].name} lacks {' and '.join(parts)} until other VMs leave it, "
            "and no temporary host can break the cycle"
        )
    if not _anti_free(p, cur, v, b, {}):
        return f"an anti-affinity peer is still on {p.hosts[b].name}"
    return "blocked by other moves"


def sequence(
    p: Problem,
    dest: dict[int, int],
    order: list[int],
    *,
    budget_moves: int,
    budget_mib: int | None,
    strict: frozenset[int] = frozenset(),
) -> tuple[list[list[Hop]], list[Blocked]]:
    """`dest`: VM -> final host for VMs that move; `order`: priority order of those VMs.
    A VM in `strict` is never overtaken: when it cannot join a non-empty step, the step ends
    there (the opening descent keeps its exact order)."""
    cur = State(p)
    pending = [v for v in order if dest[v] != cur.where[v]]
    used_moves = len(pending)
    used_mib = sum(p.move_mib[v] for v in pending)
    max_c = max(1, p.max_concurrent)
    max_s = max(1, p.max_per_source)
    max_t = max(1, p.max_per_target)
    # A step looks only this far down the priority order, so the plan keeps its order (the
    # most useful moves first) instead of filling steps with moves from far behind.
    window = max(1, int(LOOKAHEAD * max_c))
    steps: list[list[Hop]] = []
    blocked: list[Blocked] = []
    hopped: set[int] = set()
    while pending:
        # Look `window` moves ahead; only when nothing there can go now, look at all of them
        # (a move further down may free the room the first ones wait for): a cycle is declared
        # only when no pending move at all can go.
        step, taken = _build_step(p, cur, pending, dest, strict, window, max_c, max_s, max_t)
        if not step and window < len(pending):
            step, taken = _build_step(
                p, cur, pending, dest, strict, len(pending), max_c, max_s, max_t
            )
        if not step:
            hop = _temporary_hop(p, cur, pending, dest, hopped)
            extra_mib = p.move_mib[hop.vm] if hop is not None else 0
            if (
                hop is None
                or used_moves + 1 > budget_moves
                or (budget_mib is not None and used_mib + extra_mib > budget_mib)
            ):
                for v in pending:
                    why = _why(p, cur, v, dest[v])
                    if hop is not None:
                        why = "a cycle needs a temporary hop but the move/MiB budget is spent"
                    blocked.append(Blocked(v, cur.where[v], dest[v], why))
                break
            used_moves += 1
            used_mib += extra_mib
            hopped.add(hop.vm)
            cur.move(hop.vm, hop.target)
            steps.append([hop])
            continue
        for hp in step:
            cur.move(hp.vm, hp.target)
        for i in reversed(taken):
            pending.pop(i)
        steps.append(step)
    return steps, blocked


def _build_step(
    p: Problem,
    cur: State,
    pending: list[int],
    dest: dict[int, int],
    strict: frozenset[int],
    window: int,
    max_c: int,
    max_s: int,
    max_t: int,
) -> tuple[list[Hop], list[int]]:
    """The moves of the next step, from the first `window` pending moves, and their indexes."""
    step: list[Hop] = []
    src_n: dict[int, int] = {}
    dst_n: dict[int, int] = {}
    inc_c: dict[int, int] = {}
    inc_m: dict[int, int] = {}
    inc_g: dict[int, int] = {}
    inc_a: dict[tuple[int, int], int] = {}
    taken: list[int] = []
    for i, v in enumerate(pending):
        if len(step) >= max_c or i >= window:
            break
        a, b = cur.where[v], dest[v]
        if (
            src_n.get(a, 0) >= max_s
            or dst_n.get(b, 0) >= max_t
            or not (p.may_host(v, b) and _fits(p, cur, v, b, inc_c, inc_m, inc_g))
            or not _anti_free(p, cur, v, b, inc_a)
        ):
            if v in strict and step:
                break
            continue
        step.append(Hop(v, a, b))
        taken.append(i)
        src_n[a] = src_n.get(a, 0) + 1
        dst_n[b] = dst_n.get(b, 0) + 1
        inc_c[b] = inc_c.get(b, 0) + p.cpu[v]
        inc_m[b] = inc_m.get(b, 0) + p.mem[v]
        inc_g[b] = inc_g.get(b, 0) + p.cfg[v]
        for g in p.anti_of.get(v, ()):
            inc_a[(g, b)] = inc_a.get((g, b), 0) + 1
    return step, taken


def _temporary_hop(
    p: Problem, cur: State, pending: list[int], dest: dict[int, int], hopped: set[int]
) -> Hop | None:
    """First pending VM (by priority) that can park on a third host with room."""
    targets = set(dest.values())
    for v in pending:
        if v in hopped:
            continue
        a, b = cur.where[v], dest[v]
        best: int | None = None
        best_free = -1.0
        for t in range(p.n_hosts):
            if t in (a, b) or not p.may_host(v, t) or not cur.fits(v, t) or not cur.anti_ok(v, t):
                continue
            free = min(
                (p.cap_mem[t] - cur.mem[t]) / p.raw_mem[t],
                (p.cap_cpu[t] - cur.cpu[t]) / p.raw_cpu[t],
            )
            if t in targets:
                free -= 1.0  # prefer hosts no other move needs
            if free > best_free:
                best, best_free = t, free
        if best is not None:
            return Hop(v, a, best, temporary=True, final_target=b)
    return None
