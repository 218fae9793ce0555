"""The hysteresis step: optional moves must pay for their migration.

For objectives that apply it to the whole plan (balance, advisory, drain), make_plan calls
`apply_hysteresis` on the final placement:

1. **Moves that do not pay are undone.** An optional move (not a drain, evacuation, rule fix or
   hotspot relief, nor a move of the opening descent) goes back to its origin when neither the
   balance score (spread + migration cost + soft-rule penalty) nor the worse weighted gap (which
   the minimax polish lowers) rises by more than its migration cost without it; then pairs of
   optional moves that are links of one swap or chain (the second leaves the host the first
   went to) are undone together the same way (at most MAX_PASSES rounds of both). A revert is
   tried only where the VMs may stand on their origins again: the host takes them within
   capacity with headroom (or is no fuller than now), no hard anti-affinity peer is there, and
   no VM is in a hard affinity group (those move together).
2. **The rest must beat the hysteresis.** The optional moves left are kept only if together they
   lower the balance score (their spread gain net of their migration cost and soft-rule change)
   by more than zero and by at least the hysteresis; otherwise none of them is made.

So whatever the hysteresis (0 included), a plan never swaps VMs for an equal or worse spread."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import Mandatory
from rebalancerd.planner.problem import Problem
from rebalancerd.planner.scores import balance_score, soft_penalty
from rebalancerd.planner.state import State

EPS = 1e-12
"""A revert is made when it lowers the score or leaves it within this of where it was."""
MAX_PAIR_TRIALS = 20_000
"""Pairs of moves tried for a joint revert (bounds the step on plans of thousands of moves)."""
MAX_PASSES = 3
"""Rounds of single, then pair reverts (a revert can make another one pay)."""


class _Gaps:
    """The spread of a placement, with O(1) "what if these few hosts changed load" queries:
    sorted CPU and memory loads of the balancing hosts, kept up to date on commit."""

    def __init__(self, p: Problem, s: State) -> None:
        self.p = p
        self.s = s
        self.hosts = set(obj.balancing(p))
        wc, wm = obj.weights(p)
        self.wc, self.wm = wc / (wc + wm), wm / (wc + wm)
        self.c = {h: s.cpu[h] / p.raw_cpu[h] for h in self.hosts}
        self.m = {h: s.mem[h] / p.raw_mem[h] for h in self.hosts}
        self.sc = sorted(self.c.values())
        self.sm = sorted(self.m.values())
        self.value = self.spread(())
        """(spread, worst gap) as of the last commit."""

    @staticmethod
    def _range(values: list[float], skip: list[float], new: list[float]) -> float:
        """max - min of `values` without one occurrence of each of `skip`, plus `new`."""
        lo, hi = values[0], values[-1]
        if all(lo < x < hi for x in skip) and all(lo <= x <= hi for x in new):
            return hi - lo  # the ends stay where they are (most reverts)
        left = sorted(skip)

        def extreme(indices: range) -> float | None:
            pending = list(left)
            for i in indices:
                x = values[i]
                if x in pending:
                    pending.remove(x)
                    continue
                return x
            return None

        low = extreme(range(len(values)))
        high = extreme(range(len(values) - 1, -1, -1))
        cands = new + [x for x in (low, high) if x is not None]
        return max(cands) - min(cands) if len(cands) >= 2 else 0.0

    def spread(self, changed: Sequence[int]) -> tuple[float, float]:
        """(spread, worst weighted gap) of the state as it is now, where only `changed` hosts
        moved since the last commit (objective.spread and objective.worst_gap)."""
        hs = [h for h in set(changed) if h in self.hosts]
        if len(self.hosts) < 2:
            return 0.0, 0.0
        p, s = self.p, self.s
        gc = self._range(self.sc, [self.c[h] for h in hs], [s.cpu[h] / p.raw_cpu[h] for h in hs])
        gm = self._range(self.sm, [self.m[h] for h in hs], [s.mem[h] / p.raw_mem[h] for h in hs])
        wc, wm = self.wc, self.wm
        return wc * gc + wm * gm, max(wc * gc, wm * gm) / max(wc, wm)

    def commit(self, changed: Sequence[int]) -> None:
        p, s = self.p, self.s
        for h in set(changed):
            if h not in self.hosts:
                continue
            for table, ordered, new in (
                (self.c, self.sc, s.cpu[h] / p.raw_cpu[h]),
                (self.m, self.sm, s.mem[h] / p.raw_mem[h]),
            ):
                ordered.pop(bisect.bisect_left(ordered, table[h]))
                table[h] = new
                bisect.insort(ordered, new)
        self.value = self.spread(())


class _Pruner:
    """Undoes optional moves (alone or in pairs) that do not pay for their migration."""

    def __init__(self, p: Problem, s: State, optional: list[int], kept: frozenset[int]) -> None:
        self.p = p
        self.s = s
        self.gaps = _Gaps(p, s)
        self.mean_mem = obj.mean_host_mem(p)
        soft: set[int] = {v for v, _, _, _ in p.soft_pins}
        for g in p.groups:
            if not g.hard:
                soft.update(g.vms)
        self.soft = soft
        self.optional = [v for v in optional if v not in p.aff_of and v not in kept]
        self.reverted: list[int] = []

    def _anti_ok(self, vms: Sequence[int]) -> bool:
        """No VM back home shares it with a hard anti-affinity peer."""
        p, s = self.p, self.s
        return not any(
            s.anti_count.get((g, p.origin[v]), 0) > 1 for v in vms for g in p.anti_of.get(v, ())
        )

    def try_revert(self, vms: Sequence[int]) -> bool:
        """Send `vms` home if that is allowed and the score is no worse; True if done."""
        p, s = self.p, self.s
        if any(s.where[v] == p.origin[v] for v in vms):
            return False
        if not all(p.may_host(v, p.origin[v]) for v in vms):
            return False
        soft = any(v in self.soft for v in vms)
        spread0, worst0 = self.gaps.value
        before = spread0 + (soft_penalty(p, s) if soft else 0.0)
        loads: dict[int, tuple[int, int]] = {}
        was = {v: s.where[v] for v in vms}
        changed = [h for v in vms for h in (s.where[v], p.origin[v])]
        for h in changed:
            loads[h] = (s.cpu[h], s.mem[h])
        for v in vms:
            s.move(v, p.origin[v])
        ok = self._anti_ok(vms) and all(
            not s.over_capacity(h) or (s.cpu[h] <= loads[h][0] and s.mem[h] <= loads[h][1])
            for h in changed
        )
        if ok:
            saved = sum(obj.move_cost(p, v, self.mean_mem) for v in vms)
            spread1, worst1 = self.gaps.spread(changed)
            after = spread1 + (soft_penalty(p, s) if soft else 0.0)
            # undone only if the move paid on neither the score nor the worse gap (which the
            # minimax polish lowers)
            ok = after - saved <= before + EPS and worst1 - saved <= worst0 + EPS
        if not ok:
            for v in vms:
                s.move(v, was[v])
            return False
        self.gaps.commit(changed)
        self.reverted.extend(vms)
        return True

    def run(self) -> None:
        p, s = self.p, self.s
        by_cost = sorted(self.optional, key=lambda v: (-p.cost_mib[v], v))
        trials = 0
        for _ in range(MAX_PASSES):
            changed = False
            for v in by_cost:
                if self.try_revert([v]):
                    changed = True
            moved = [v for v in by_cost if s.where[v] != p.origin[v]]
            leaving: dict[int, list[int]] = {}
            for v in moved:
                leaving.setdefault(p.origin[v], []).append(v)
            for v in moved:
                # the next links of a swap or chain through v: the moves off the host v went to
                for w in leaving.get(s.where[v], ()):
                    if w == v:
                        continue
                    trials += 1
                    if trials > MAX_PAIR_TRIALS:
                        return
                    if self.try_revert([v, w]):
                        changed = True
                        break
            if not changed:
                return


def apply_hysteresis(
    p: Problem,
    s: State,
    mandatory: dict[int, Mandatory],
    notes: list[str],
    opening: Sequence[int] = (),
) -> State:
    """`s` without the optional moves that do not pay for their migration, and without any
    optional move if together they gain less than the hysteresis (module docstring). The
    `opening` descent's moves are not undone one by one: each closed the gap when it was made
    and they lead the plan in that order."""
    optional = [v for v, _, _ in s.moves() if v not in mandatory]
    if not optional:
        return s
    base_where = list(p.origin)
    for v in mandatory:
        base_where[v] = s.where[v]
    base = State(p, base_where)
    s = s.copy()
    pruner = _Pruner(p, s, optional, frozenset(opening))
    pruner.run()
    if pruner.reverted:
        notes.append(
            f"{len(pruner.reverted)} optional moves undone: each gained less spread than "
            "its migration costs"
        )
    left = len(optional) - len(pruner.reverted)
    if not left:
        return s
    if any(base.over_capacity(h) and not State(p).over_capacity(h) for h in range(p.n_hosts)):
        return s  # the mandatory moves need room the optional ones make
    gain = balance_score(p, base) - balance_score(p, s)
    if gain <= 0 or gain < p.hysteresis:
        notes.append(
            f"{left} optional moves improve the score (spread net of migration cost) by "
            f"{gain:.3f} < hysteresis {p.hysteresis:.3f}: not moving"
        )
        return base
    return s
